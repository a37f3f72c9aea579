"""What every front-end shares: error → message + exit code, durations, JSON, daemon signals."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sonm_p2p import __version__
from sonm_p2p.errors import ConfigError, SonmError

__all__ = [
    "Duration",
    "chain_options",
    "SonmGroup",
    "default_home",
    "emit_json",
    "fail",
    "parse_size",
    "serve_until_signalled",
    "setup_logging",
    "run_and_exit",
    "version_option",
]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}


def version_option() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--version``: the executable's name and the project's version, e.g. ``sonmcli 0.1.0``."""
    return click.version_option(__version__, "--version", message="%(prog)s %(version)s")


def run_and_exit(command: click.Command) -> None:
    """Run ``command`` as a console script, then leave the process at once with its exit code.

    By the time a command returns, click has closed its context (channels, overlay nodes, the
    files it wrote); what is left is the interpreter's own teardown, where gRPC's threads and
    module finalisation took 70-250 ms of every ``sonmcli`` call, longer than most commands.
    """
    try:
        command.main()  # standalone: always ends in SystemExit
        code: Any = 0
    except SystemExit as done:
        code = done.code
    if code is not None and not isinstance(code, int):
        click.echo(code, err=True)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # a reader that left early: nothing more to say
        pass
    logging.shutdown()
    os._exit(code or 0)


class Duration(click.ParamType):
    """``3000s``, ``5m``, ``1h``, ``7d``, ``250ms`` or a plain number of seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, int | float):
            return float(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|)\s*", str(value))
        if not m:
            self.fail(f"{value!r} is not a duration (examples: 30s, 5m, 1h, 7d, 250ms)", param, ctx)
        return float(m.group(1)) * _UNITS[m.group(2)]


#: Longest ``--announce-interval`` (discovery/cadence.py's MAX_INTERVAL, not imported here:
#: the CLI's start-up imports stay light).
_MAX_ANNOUNCE_INTERVAL = 90.0


class AnnounceInterval(Duration):
    """``auto`` (None) or a duration of 1 s to 90 s (a longer one's TTL would pass MAX_TTL)."""

    name = "auto|duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float | None:  # type: ignore[override]
        if value is None or value == "auto":
            return None
        seconds = super().convert(value, param, ctx)
        if not 1.0 <= seconds <= _MAX_ANNOUNCE_INTERVAL:
            self.fail(f"{value!r}: from 1s to {_MAX_ANNOUNCE_INTERVAL:g}s, or auto", param, ctx)
        return seconds


def chain_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--chain``, ``--registry`` and ``--require-registered`` (read with
    ``sonm_p2p.chain.ChainSettings.resolve``: flag > env > config.toml)."""
    opts = [
        click.option(
            "--chain",
            default=None,
            metavar="URL",
            help="Ethereum JSON-RPC URL of the chain holding the hub registry. "
            "Env: SONM_CHAIN; file: chain in <home>/config.toml.",
        ),
        click.option(
            "--registry",
            default=None,
            metavar="0xADDRESS",
            help="Address of the hub registry contract (sonmcli chain deploy). "
            "Env: SONM_REGISTRY; file: registry in <home>/config.toml.",
        ),
        click.option(
            "--require-registered/--no-require-registered",
            default=None,
            help="With a registry: use only hubs registered in it (their announcements are "
            "dropped otherwise) [default: on whenever a registry is given; file: "
            "require_registered].",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def default_home(role: str) -> Path:
    """``$SONM_HOME/<role>`` or ``~/.sonm/<role>``."""
    base = os.environ.get("SONM_HOME")
    return (Path(base) if base else Path.home() / ".sonm") / role


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def fail(err: SonmError, *, as_json: bool, prog: str) -> None:
    """Print ``err`` as one line (or a JSON object) and exit with its exit code."""
    if as_json:
        emit_json({"error": {"type": type(err).__name__, "message": str(err)}})
    click.echo(f"{prog}: error: {err}", err=True)
    sys.exit(err.exit_code)


def no_birthday_punch_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--no-birthday-punch``, the same on every executable that runs a node."""
    return click.option(
        "--no-birthday-punch",
        "no_birthday_punch",
        is_flag=True,
        help="Never try a birthday-paradox hole punch towards or from a symmetric NAT (a SYN "
        "sweep of ~1,000 ports, which an IDS may take for a port scan): the relayed path is "
        "kept.",
    )(fn)


def hoist_options(args: list[str], commands: set[str], options: dict[str, bool]) -> list[str]:
    """``args`` with the group ``options`` found after the command moved in front of it, as
    Docker, kubectl and git users type them (``sonmcli list --json``). ``options`` maps each
    name to whether it takes a value; anything after ``--`` is the command's own."""
    out: list[str] = []
    i = 0
    while i < len(args) and args[i] not in commands:  # the group's own part, left as it is
        takes = options.get(args[i], False)
        out.append(args[i])
        if takes and i + 1 < len(args):
            out.append(args[i + 1])
            i += 1
        i += 1
    if i == len(args):
        return out
    command, rest, moved = args[i], [], []
    j = i + 1
    while j < len(args):
        arg = args[j]
        if arg == "--":
            rest += args[j:]
            break
        name = arg.split("=", 1)[0]
        if name in options:
            moved.append(arg)
            if options[name] and "=" not in arg and j + 1 < len(args):
                moved.append(args[j + 1])
                j += 1
        else:
            rest.append(arg)
        j += 1
    return [*out, *moved, command, *rest]


class SonmGroup(click.Group):
    """A click group whose commands turn domain errors into a message and an exit code.

    ``hoisted`` names group options also accepted after the command (name -> takes a value).
    """

    hoisted: dict[str, bool] = {}

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.hoisted:
            args = hoist_options(list(args), set(self.commands), self.hoisted)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SonmError as err:
            as_json = bool(ctx.params.get("as_json"))
            fail(err, as_json=as_json, prog=ctx.info_name or "sonm")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose or os.environ.get("SONM_DEBUG") else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not verbose:
        for noisy in ("docker", "urllib3", "multiaddr", "libp2p"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def serve_until_signalled(start: Callable[[], None], close: Callable[[], None], prog: str) -> None:
    """Start a daemon, block until SIGINT/SIGTERM, close it, exit 0 (or the error's code)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _raise_open_files()
    try:
        start()
    except SonmError as err:
        close()
        fail(err, as_json=False, prog=prog)
    try:
        stop.wait()
    finally:
        logging.getLogger(prog).info("shutting down")
        close()


def _raise_open_files() -> None:
    """A daemon holds a socket per peer and per client: take the hard limit on open files,
    not the soft default (often 1,024), which a crowd of clients would exhaust."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError) as exc:
        logging.getLogger(__name__).info("open files stay at the soft limit: %s", exc)


_SIZE = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str | None, flag: str) -> int:
    """``512m``, ``2g``, ``1.5GiB``, ``1024`` (bytes) → bytes; None or "" → 0."""
    if not text:
        return 0
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size like 512m or 2g")
    return int(float(m.group(1)) * _SIZE[m.group(2)])
