"""What a hub lets in: every field of a request is bounded and checked at its edge, before it is
stored, logged or passed to a miner. Pure functions; errors are InvalidRequest (exit 6,
INVALID_ARGUMENT) with the offending value shown escaped and cut short (:func:`shown`).
"""

from __future__ import annotations

import math
import re

from sonm_p2p.errors import InvalidRequest
from sonm_p2p.model import MIN_TASK_CPUS, MIN_TASK_MEMORY, RunSpec, parse_restart

__all__ = [
    "MAX_ARG_BYTES",
    "MAX_ARGS",
    "MAX_ENV",
    "MAX_IMAGE",
    "MAX_SPEC_BYTES",
    "check_id",
    "check_spec",
    "shown",
]

MAX_IMAGE = 512  # characters of an image reference (Docker's own names stay far below)
MAX_ENV = 128  # variables
MAX_ARGS = 256  # command arguments
MAX_ARG_BYTES = 32 << 10  # one env value or argument
MAX_SPEC_BYTES = 256 << 10  # env and command together
MAX_MEMORY = 1 << 44  # 16 TiB
MAX_CPUS = 1024.0
MAX_ID = 128  # characters of a miner or task ID (or prefix) a request may name

# registry[:port]/name[:tag][@digest], in the characters Docker allows there.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,255}")


def shown(text: str, limit: int = 80) -> str:
    """``text`` as safe to put in a message or a log line: quoted, control characters escaped
    (a newline cannot forge a log line), and cut to ``limit`` characters."""
    cut = text if len(text) <= limit else text[:limit]
    out = repr(cut)
    return out if cut is text else f"{out}… ({len(text)} characters)"


def check_id(value: str, what: str) -> str:
    """A miner or task ID (or prefix) from a request, stripped; refused when absurdly long or
    holding control characters."""
    value = value.strip()
    if len(value) > MAX_ID or not value.isprintable():
        raise InvalidRequest(f"bad {what} ID {shown(value, 40)}")
    return value


def check_spec(spec: RunSpec) -> None:
    """Raise InvalidRequest unless ``spec`` is within the hub's bounds."""
    image = spec.image.strip()
    if not image:
        raise InvalidRequest("an image is required")
    if len(image) > MAX_IMAGE or not _IMAGE.fullmatch(image):
        raise InvalidRequest(f"bad image reference {shown(image)}")
    if len(spec.env) > MAX_ENV:
        raise InvalidRequest(f"{len(spec.env)} environment variables; at most {MAX_ENV}")
    if len(spec.command) > MAX_ARGS:
        raise InvalidRequest(f"{len(spec.command)} command arguments; at most {MAX_ARGS}")
    total = 0
    for key, value in spec.env.items():
        if not _ENV_KEY.fullmatch(key):
            raise InvalidRequest(f"bad environment variable name {shown(key, 40)}")
        total += len(key) + _checked_text(value, f"environment variable {key}")
    for arg in spec.command:
        total += _checked_text(arg, "command argument")
    if total > MAX_SPEC_BYTES:
        raise InvalidRequest(
            f"environment and command take {total} bytes; at most {MAX_SPEC_BYTES}"
        )
    if (
        not math.isfinite(spec.cpus)
        or spec.cpus < 0
        or (spec.cpus and not MIN_TASK_CPUS <= spec.cpus <= MAX_CPUS)
    ):
        raise InvalidRequest(f"--cpu {spec.cpus!r}: between {MIN_TASK_CPUS} and {MAX_CPUS:g} CPUs")
    if spec.memory_bytes < 0 or (
        spec.memory_bytes and not MIN_TASK_MEMORY <= spec.memory_bytes <= MAX_MEMORY
    ):
        raise InvalidRequest(f"--memory {spec.memory_bytes} bytes: between 6 MiB and 16 TiB")
    parse_restart(spec.restart)


def _checked_text(value: str, what: str) -> int:
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ARG_BYTES:
        raise InvalidRequest(f"{what}: {size} bytes; at most {MAX_ARG_BYTES}")
    if "\x00" in value:
        raise InvalidRequest(f"{what}: holds a NUL character")
    return size
