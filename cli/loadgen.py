"""``sonm-loadgen``: many light miners in one process, to load a hub."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

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
    every: float,
    as_json: bool,
    no_birthday_punch: bool,
    verbose: bool,
) -> None:
    """Run N light miners against one hub until Ctrl-C.

    Each is a real miner (own key, libp2p connection with a Noise handshake, session, ping
    answers, task runs on an in-memory engine), so the hub cannot tell them from `sonmminer`
    processes; they share one trio loop and one gRPC thread pool. Prints how many are
    connected as they come up, and a summary at the end.

    \b
    Example:
      sonm-loadgen --hub 127.0.0.1:10002 --miners 1000
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
