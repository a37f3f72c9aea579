"""Decoding the Docker engine's answers, for :class:`~sonm_p2p.miner.docker_runtime.DockerRuntime`.

Pure functions of what the engine answered (container inspection, pull messages, stats, event
times, errors): the runtime makes the calls, these read the answers, so they are tested without
an engine (``tests/unit/test_docker_payloads.py``).
"""

from __future__ import annotations

import builtins
import logging
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import docker.errors
import requests.exceptions

from sonm_p2p.errors import (
    ImageNotFound,
    InvalidRequest,
    RuntimeFailure,
    SonmError,
    TaskNotFound,
    Timeout,
)
from sonm_p2p.miner.runtime import TASK_LABEL, ContainerState, _parse_port_key
from sonm_p2p.model import PublishedPort, PullProgress

log = logging.getLogger(__name__)

#: Pull progress is reported at most this often (seconds), plus a final report.
_PROGRESS_INTERVAL = 0.1

# Pull-error fragments that mean the registry could not be reached at all.
_UNREACHABLE = re.compile(
    "connection refused|no such host|i/o timeout|handshake timeout|network is unreachable"
    "|no route to host|connection reset|server gave http response to https client|x509"
    "|request canceled|context deadline exceeded"
)


def _parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) -> unix seconds; None for its zero time."""
    if not value or value.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # 3.11+ takes nanoseconds and "Z"
    except ValueError:
        return None


def _pull_failure(image: str, message: str) -> SonmError:
    """Classify a failed pull by the daemon's message.

    The message itself (which can carry what a registry answered: a page of whatever server the
    reference named) stays in the miner's log: what the error says is read by every client.
    """
    log.info("pulling %s failed: %s", image, message)
    low = message.lower()
    if "invalid reference format" in low:
        return InvalidRequest(f"invalid image reference {image!r}")
    if re.search("pull access denied|access to the resource is denied|unauthorized", low):
        why = "pull access denied (the repository does not exist or needs a login)"
    elif "manifest unknown" in low or "not found" in low:
        why = "no such repository or tag in the registry (manifest unknown)"
    elif _UNREACHABLE.search(low):
        why = "the registry is unreachable"
    else:
        return RuntimeFailure(f"pulling {image} failed (the engine's answer is in the miner's log)")
    return ImageNotFound(f"image {image} is not present locally and cannot be pulled: {why}")


def _docker_state(attrs: Mapping[str, Any]) -> ContainerState:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    labels = dict(config.get("Labels") or {})
    status = str(state.get("Status") or "unknown")
    ports: builtins.list[PublishedPort] = []
    for key, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, proto = _parse_port_key(key)
        for binding in bindings or ():
            if binding.get("HostPort"):
                ports.append(
                    PublishedPort(port, proto, binding.get("HostIp", ""), int(binding["HostPort"]))
                )
    task_id = labels.get(TASK_LABEL) or str(attrs.get("Name", "")).lstrip("/").removeprefix("sonm-")
    cpus, memory_bytes = _host_limits(attrs)
    return ContainerState(
        task_id=task_id,
        container_id=str(attrs.get("Id", "")),
        image=str(config.get("Image", "")),
        status=status,
        exit_code=int(state.get("ExitCode", 0)) if status in ("exited", "dead") else None,
        ports=tuple(sorted(ports, key=lambda p: (p.container_port, p.protocol, p.host_ip))),
        labels=labels,
        error=str(state.get("Error") or ""),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        cpus=cpus,
        memory_bytes=memory_bytes,
    )


def _host_limits(attrs: Mapping[str, Any]) -> tuple[float, int]:
    """(CPU cores, memory bytes) a container is limited to, from its HostConfig; 0: none."""
    host = attrs.get("HostConfig") or {}
    cpus = (host.get("NanoCpus") or 0) / 1e9
    quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
    if not cpus and quota > 0 and period > 0:
        cpus = quota / period
    return float(cpus), int(host.get("Memory") or 0)


def _cpu_percent(stats: Mapping[str, Any]) -> float:
    """CPU use between the two samples of a ``stats(stream=False)`` answer, in % of one core
    (as ``docker stats`` computes it)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    if not pre.get("system_cpu_usage"):
        return 0.0  # no first sample
    total = (cpu.get("cpu_usage") or {}).get("total_usage", 0)
    cpu_delta = total - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre["system_cpu_usage"]
    cores = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ())
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * (cores or 1) * 100.0


def _memory_used(stats: Mapping[str, Any]) -> int:
    """Memory in use without the page cache, as ``docker stats`` counts it (cgroup v1 and v2)."""
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return usage - cache if 0 < cache < usage else usage


@dataclass
class _Layer:
    current: int = 0  # bytes downloaded
    total: int = 0  # compressed size, once the engine said
    downloaded: bool = False
    done: bool = False


class _PullTally:
    """Sums the engine's per-layer pull messages into :class:`PullProgress`, throttled.

    Docker reports each layer by ID: "Pulling fs layer", "Waiting", "Downloading" (with
    ``progressDetail`` current/total), "Verifying Checksum", "Download complete", "Extracting"
    (current/total again), then "Pull complete"; or "Already exists". Other messages ("Pulling
    from ...", "Digest: ...", "Status: ...") only update the status line.
    """

    def __init__(self, image: str, *, interval: float = _PROGRESS_INTERVAL) -> None:
        self.image = image
        self.interval = interval
        self.status = ""
        self._layers: dict[str, _Layer] = {}
        self._last_report = -math.inf

    def __repr__(self) -> str:
        return f"<_PullTally {self.snapshot()}>"

    def feed(self, message: Mapping[str, Any], now: float) -> PullProgress | None:
        """Take one message; return the progress to report if one is due at ``now``."""
        status = str(message.get("status") or "")
        if not status:
            return None
        self.status = status
        layer_id = message.get("id")
        if layer_id and not status.startswith("Pulling from"):
            layer = self._layers.setdefault(str(layer_id), _Layer())
            detail = message.get("progressDetail") or {}
            if status in ("Downloading", "Extracting") and detail.get("total"):
                layer.total = max(layer.total, int(detail["total"]))
                if status == "Downloading":
                    layer.current = int(detail.get("current") or 0)
            if status in ("Download complete", "Extracting", "Pull complete", "Already exists"):
                layer.downloaded = True
            if status in ("Pull complete", "Already exists"):
                layer.done = True
        if now - self._last_report < self.interval:
            return None
        self._last_report = now
        return self.snapshot()

    def snapshot(self) -> PullProgress:
        layers = self._layers.values()
        return PullProgress(
            image=self.image,
            current_bytes=sum(x.total if x.downloaded else min(x.current, x.total) for x in layers),
            total_bytes=sum(x.total for x in layers),
            layers_done=sum(x.done for x in layers),
            layers_total=len(self._layers),
            status=self.status,
        )

    def final(self) -> PullProgress:
        """The progress once the pull succeeded: every layer is present."""
        for layer in self._layers.values():
            layer.downloaded = layer.done = True
        return self.snapshot()


def _since_param(nanos: int) -> str:
    """Unix nanoseconds as the engine's ``since`` parameter: ``"<seconds>.<nanoseconds>"``."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def _explain(exc: BaseException) -> str:
    """The engine's own words for a failed call (``APIError.explanation``), else the error."""
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


@contextmanager
def _engine_errors(what: str, *, task_id: str | None = None) -> Iterator[None]:
    """Turn whatever the docker SDK raises into a :class:`SonmError` saying ``what`` failed;
    a missing container is ``TaskNotFound`` if ``task_id`` is given."""
    try:
        yield
    except docker.errors.NotFound as exc:
        if task_id is None:
            raise RuntimeFailure(f"{what}: {_explain(exc)}") from exc
        raise TaskNotFound(f"{what}: task {task_id} is gone") from exc
    except docker.errors.APIError as exc:
        raise RuntimeFailure(f"{what}: docker engine error: {_explain(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise RuntimeFailure(f"{what}: {_explain(exc)}") from exc
    except requests.exceptions.Timeout as exc:
        raise Timeout(f"{what}: the docker engine did not answer in time") from exc
    except requests.exceptions.RequestException as exc:
        raise RuntimeFailure(f"{what}: docker engine unreachable: {exc}") from exc
