"""``sonm-loadgen``: many light miners in one process, to load a hub."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import click

from cli._common import (
    _raise_open_files,
    default_home,
    fail,
    no_birthday_punch_option,
    setup_logging,
    version_option,
)
from sonm_p2p.errors import SonmError
from sonm_p2p.loadgen import LightMiners, LoadOptions


def _report(as_json: bool, **fields: object) -> None:
    if as_json:
        click.echo(json.dumps(fields, sort_keys=True))
    elif fields["event"] == "progress":
        click.echo(
            f"{fields['connected']}/{fields['miners']} connected "
            f"({fields['started']} started, {fields['elapsed']:.1f}s)"
        )
    else:
        click.echo(
            f"{fields['miners']} light miners on {fields['hub']}: all {fields['miners']} "
            f"connected after {fields['all_connected_after']}s"
            if fields["all_connected_after"] is not None
            else f"{fields['miners']} light miners on {fields['hub']}: "
            f"{fields['connected']} connected at the end"
        )


@click.command(context_settings={"help_option_names": ["--help"], "show_default": True})
@version_option()
@click.option(
    "--hub",
    envvar="SONM_HUB_P2P",
    required=True,
    metavar="HOST:PORT|MULTIADDR",
    help="The hub's overlay address (its port 10002), as `sonmminer --hub`.",
)
@click.option(
    "--miners",
    "-n",
    type=click.IntRange(min=1),
    default=100,
    help="How many light miners to run.",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the miners' keys live (one directory each; the same home gives the same "
    "miners again) [default: $SONM_HOME/loadgen or ~/.sonm/loadgen].",
)
@click.option(
    "--listen",
    default="/ip4/0.0.0.0/tcp/0",
    envvar="SONM_P2P_LISTEN",
    help="Each miner's libp2p listen multiaddr (an ephemeral port each).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra label on every task the miners run (repeatable).",
)
@click.option(
    "--pending",
    type=click.IntRange(min=1),
    default=32,
    help="At most this many miners started and not yet connected at a time (the ramp).",
)
@click.option(
    "--procs",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes to run the miners in (each runs its share on a trio loop of its "
    "own): past a few hundred miners one process's loop is what limits, and a machine's other "
    "cores go unused.",
)
@click.option("--first", type=click.IntRange(min=0), default=0, hidden=True)
@click.option(
    "--every",
    type=float,
    default=1.0,
    help="Seconds between progress lines (printed only when the count changed).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line (progress, then summary)."
)
@no_birthday_punch_option
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    hub: str,
    miners: int,
    home: Path | None,
    listen: str,
    labels: tuple[str, ...],
    pending: int,
    procs: int,
    first: int,
    every: float,
    as_json: bool,
    no_birthday_punch: bool,
    verbose: bool,
) -> None:
    """Run N light miners against one hub until Ctrl-C.

    Each is a real miner (own key, libp2p connection with a Noise handshake, session, ping
    answers, task runs on an in-memory engine), so the hub cannot tell them from `sonmminer`
    processes; those of one process share one trio loop and one gRPC thread pool. With
    --procs N the miners are split over N worker processes (keys m0000… as with one). Prints
    how many are connected as they come up, and a summary at the end.

    \b
    Example:
      sonm-loadgen --hub 127.0.0.1:10002 --miners 1000 --procs 4
    """
    setup_logging(verbose)
    if not verbose:  # a line per miner started, connected, classified: too many to read
        logging.getLogger("sonm_p2p").setLevel(logging.WARNING)
    bad = [v for v in labels if "=" not in v]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: expected KEY=VALUE", param_hint="--label")
    options = LoadOptions(
        hub=hub,
        miners=miners,
        home=home or default_home("loadgen"),
        listen=tuple(listen.split()),
        labels=dict(v.split("=", 1) for v in labels),
        pending=pending,
        birthday_punch=not no_birthday_punch,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _raise_open_files()
    if procs > 1:
        _run_workers(options, procs, every, as_json, verbose, stop)
        return
    options = dataclasses.replace(options, first=first)
    fleet = LightMiners(options)
    failure: list[SonmError] = []

    def start() -> None:
        try:
            fleet.start()
        except SonmError as err:
            failure.append(err)
            stop.set()

    t0 = time.monotonic()
    starter = threading.Thread(target=start, name="loadgen-main", daemon=True)
    starter.start()
    last, all_after = -1, None
    try:
        while not stop.wait(every):
            connected = fleet.connected
            if connected == miners and all_after is None:
                all_after = round(time.monotonic() - t0, 2)
            if connected != last:
                last = connected
                started = len(fleet.daemons)
                _report(
                    as_json,
                    event="progress",
                    connected=connected,
                    started=started,
                    miners=miners,
                    elapsed=round(time.monotonic() - t0, 2),
                )
    finally:
        connected = fleet.connected
        starter.join(timeout=0)  # still starting: close() below stops what has started
        fleet.close()
        starter.join(timeout=30)
    if failure:
        fail(failure[0], as_json=as_json, prog="sonm-loadgen")
    _report(
        as_json,
        event="summary",
        hub=hub,
        miners=miners,
        connected=connected,
        all_connected_after=all_after,
        ran_for=round(time.monotonic() - t0, 2),
    )


def _shares(miners: int, procs: int) -> list[int]:
    """``miners`` split over ``procs`` as evenly as can be (none empty)."""
    procs = min(procs, miners)
    return [miners // procs + (1 if i < miners % procs else 0) for i in range(procs)]


def _run_workers(
    options: LoadOptions,
    procs: int,
    every: float,
    as_json: bool,
    verbose: bool,
    stop: threading.Event,
) -> None:
    """Run the miners in ``procs`` worker processes (this same command, each with its share
    and the number of its first miner), report their sum, and stop them all at the end (by
    PID, SIGTERM, then SIGKILL after 10 s; a worker gets SIGTERM too when this process dies
    without stopping them, e.g. by SIGKILL)."""
    t0 = time.monotonic()
    workers: list[subprocess.Popen[str]] = []
    state: list[dict[str, int]] = []
    first = 0
    for share in _shares(options.miners, procs):
        argv = [sys.executable, "-m", "cli.loadgen", "--hub", options.hub, "--json"]
        argv += ["--miners", str(share), "--first", str(first), "--home", str(options.home)]
        argv += ["--listen", " ".join(options.listen), "--every", str(min(every, 1.0))]
        argv += ["--pending", str(max(1, options.pending // procs))]
        argv += [f"--label={k}={v}" for k, v in options.labels.items()]
        argv += ["--verbose"] if verbose else []
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=os.environ,
            preexec_fn=_die_with_parent,
        )
        workers.append(proc)
        state.append({"connected": 0, "started": 0, "ended": 0})
        assert proc.stdout is not None
        threading.Thread(target=_follow_worker, args=(proc.stdout, state[-1]), daemon=True).start()
        first += share
    last, all_after, failed = -1, None, 0
    try:
        while not stop.wait(every):
            connected = sum(s["connected"] for s in state)
            if connected == options.miners and all_after is None:
                all_after = round(time.monotonic() - t0, 2)
            if connected != last:
                last = connected
                _report(
                    as_json,
                    event="progress",
                    connected=connected,
                    started=sum(s["started"] for s in state),
                    miners=options.miners,
                    elapsed=round(time.monotonic() - t0, 2),
                )
            failed = sum(w.poll() is not None for w in workers)
            if failed:
                break
    finally:
        connected = sum(s["connected"] for s in state)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for w in workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    if failed:
        fail(
            SonmError(f"{failed} of {len(workers)} worker processes ended early"),
            as_json=as_json,
            prog="sonm-loadgen",
        )
    _report(
        as_json,
        event="summary",
        hub=options.hub,
        miners=options.miners,
        connected=connected,
        all_connected_after=all_after,
        ran_for=round(time.monotonic() - t0, 2),
    )


def _die_with_parent() -> None:
    """(in a worker, before exec) SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _follow_worker(out: IO[str], state: dict[str, int]) -> None:
    """Keep a worker's latest progress in ``state`` (its JSON lines)."""
    for line in out:
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if fields.get("event") == "progress":
            state["connected"], state["started"] = fields["connected"], fields["started"]
        elif fields.get("event") == "summary":
            state["ended"] = 1


if __name__ == "__main__":
    main()
