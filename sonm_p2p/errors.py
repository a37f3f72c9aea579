"""The one exception tree of sonm-p2p.

::

    SonmError                       exit 1, gRPC UNKNOWN
    ├── ConfigError                 exit 2, bad flag / env / config file (message names the file)
    ├── ForwardError                exit 1, UNKNOWN: a forward exchange broke (a refusal raises the
    │                               class its status maps to: TaskNotFound, PermissionDenied...)
    ├── NotFound                    exit 3, NOT_FOUND
    │   ├── MinerNotFound           no miner with that node ID (or prefix)
    │   ├── TaskNotFound            no task with that ID
    │   └── ImageNotFound           image neither local nor pullable
    ├── InvalidRequest              exit 6, INVALID_ARGUMENT
    │   ├── AmbiguousMiner          a prefix that names more than one miner
    │   └── InvalidAnnouncement     a hub announcement failed a check (``reason``)
    ├── Refused                     exit 6, FAILED_PRECONDITION
    │   └── ImageNotRunnable        image with neither ENTRYPOINT nor CMD
    ├── Unavailable                 exit 4, UNAVAILABLE
    │   ├── HubUnavailable          the hub does not answer (client side)
    │   ├── MinerUnavailable        the miner is offline or went away mid-call
    │   ├── DialError               no transport path to a peer
    │   │   └── RelayRefused        a relay answered RESERVE/CONNECT with an error (``status``)
    │   ├── StunError               no usable STUN answer: malformed, or an error response
    │   └── Busy                    RESOURCE_EXHAUSTED: too many streams or calls; try later
    ├── Timeout                     exit 5, DEADLINE_EXCEEDED
    ├── Unauthenticated             exit 8, UNAUTHENTICATED: unsigned, forged, stale or replayed
    ├── PermissionDenied            exit 8, PERMISSION_DENIED: not the task's owner
    └── RuntimeFailure              exit 7, INTERNAL: the container engine failed

Errors are translated once at each boundary (see ``sonm_p2p/_status.py``): domain error → gRPC
status in the servicers, ``grpc.RpcError`` → domain error in the typed clients, domain error →
one-line message + exit code in the CLI.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousMiner",
    "Busy",
    "ConfigError",
    "DialError",
    "ForwardError",
    "HubUnavailable",
    "ImageNotFound",
    "ImageNotRunnable",
    "InvalidAnnouncement",
    "InvalidRequest",
    "MinerNotFound",
    "MinerUnavailable",
    "NotFound",
    "Refused",
    "RelayRefused",
    "RuntimeFailure",
    "SonmError",
    "StunError",
    "TaskNotFound",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "PermissionDenied",
]


class SonmError(Exception):
    """Base of every error sonm-p2p raises on purpose."""

    #: Name of the ``grpc.StatusCode`` member this error travels as.
    grpc_code: str = "UNKNOWN"
    #: Process exit code of a CLI command that fails with this error.
    exit_code: int = 1

    @classmethod
    def from_message(cls, message: str) -> SonmError:
        """The error as rebuilt from its message on the far side of a gRPC call."""
        return cls(message)


class ConfigError(SonmError):
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 2


class NotFound(SonmError):
    grpc_code = "NOT_FOUND"
    exit_code = 3


class MinerNotFound(NotFound):
    pass


class TaskNotFound(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class InvalidRequest(SonmError):
    grpc_code = "INVALID_ARGUMENT"
    exit_code = 6


class AmbiguousMiner(InvalidRequest):
    pass


class InvalidAnnouncement(InvalidRequest):
    """An announcement failed a check; :attr:`reason` says which (a
    ``discovery.announcement.DropReason``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason


class Refused(SonmError):
    grpc_code = "FAILED_PRECONDITION"
    exit_code = 6


class ImageNotRunnable(Refused):
    pass


class Unavailable(SonmError):
    grpc_code = "UNAVAILABLE"
    exit_code = 4


class HubUnavailable(Unavailable):
    pass


class MinerUnavailable(Unavailable):
    pass


class DialError(Unavailable):
    pass


class RelayRefused(DialError):
    """The relay answered a RESERVE or CONNECT with an error status (see ``status``; 0 when
    rebuilt from a gRPC status, which does not carry it)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StunError(Unavailable):
    """A STUN message that cannot be used: malformed, not a Binding response, or an error answer."""


class ForwardError(SonmError):
    """A forward request refused by the serving node (``status``, a
    ``transport.forward.ForwardStatus``), or a malformed exchange."""

    #: ``ForwardStatus.INTERNAL``: what a rebuilt error says (gRPC does not carry the status).
    _INTERNAL = 6

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def from_message(cls, message: str) -> ForwardError:
        return cls(cls._INTERNAL, message)


class Busy(Unavailable):
    """A server bound was reached (open streams, calls per second): the same call later works."""

    grpc_code = "RESOURCE_EXHAUSTED"


class Timeout(SonmError):
    grpc_code = "DEADLINE_EXCEEDED"
    exit_code = 5


class RuntimeFailure(SonmError):
    grpc_code = "INTERNAL"
    exit_code = 7


class Unauthenticated(SonmError):
    grpc_code = "UNAUTHENTICATED"
    exit_code = 8


class PermissionDenied(SonmError):
    grpc_code = "PERMISSION_DENIED"
    exit_code = 8
