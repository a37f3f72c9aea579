"""sonmcli forward: reach a task's port through the overlay (works behind NAT)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from cli._common import emit_json
from cli._context import CliContext
from sonm_p2p.errors import InvalidRequest, MinerUnavailable
from sonm_p2p.transport.addrs import parse_hostport


def _port(text: str) -> tuple[int, str]:
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not port.isdigit() or proto not in ("tcp", "udp"):
        raise InvalidRequest(f"{text!r}: expected PORT/tcp or PORT/udp, e.g. 8080/tcp")
    return int(port), proto


def _nat_line(info: dict[str, Any]) -> str:
    """The text output's second line: the NAT types seen and whether a hole punch was skipped."""
    text = f"NAT here: {info['nat_type']}"
    if info.get("nat_error"):
        text += f" ({info['nat_error']})"
    text += f", at the miner: {info['miner_nat_type']}"
    if info["punch_skipped"]:
        text += "; hole punch skipped (it cannot get through a symmetric NAT), relayed at once"
    return text


@click.command()
@click.argument("job")
@click.argument("port")
@click.option(
    "--local",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen here (port 0: any free port).",
)
@click.pass_obj
def forward(c: CliContext, job: str, port: str, local: str) -> None:
    """Reach PORT (e.g. 8080/tcp, 9090/udp) of task JOB from this machine, through the overlay.

    Opens a local listener (TCP) or socket (UDP); each connection to it is carried to the
    task's published port on its miner: directly, hole-punched, or through the hub's relay when
    the miner is behind NAT. Only the task's owner may. Runs until Ctrl-C.

    It also asks the hub's STUN responder which NAT this machine is behind (as `sonmcli nat`
    does; at most ~2 s, in parallel with the rest). Behind a symmetric NAT, where a hole punch
    cannot work, it takes the relayed path at once instead of trying a punch for 3 s. The
    output shows the NAT type ("unknown" if STUN failed) and whether the punch was skipped.
    """
    from sonm_p2p.config import client_listen
    from sonm_p2p.transport.forward import TaskForwarder

    container_port, proto = _port(port)
    local_host, local_port = parse_hostport(local, allow_zero=True)
    with c.client() as client:
        # STUN runs while the task is looked up and the node starts
        forwarder = TaskForwarder(lambda: client.info().stun_endpoints, listen=client_listen())
        try:
            task = client.task_status(job)
            miner = next((m for m in client.list_miners() if m.node_id == task.miner_id), None)
        finally:
            forwarder.release()
    if miner is None or not miner.online or not miner.peer_id:
        raise MinerUnavailable(f"task {task.task_id}'s miner {task.miner_id} is offline")
    c.stack.callback(forwarder.close)
    opened = forwarder.open(
        c.identity(),
        peer_id=miner.peer_id,
        multiaddrs=list(miner.multiaddrs),
        miner_id=miner.node_id,
        miner_nat_type=miner.nat_type,
        task_id=task.task_id,
        port=container_port,
        proto=proto,
        local=(local_host, local_port),
    )
    info = opened.as_dict()
    host, lport = opened.forward.local_addr
    path = opened.path
    if c.as_json:
        emit_json(info)
    else:
        click.echo(
            f"forwarding {host}:{lport} -> task {task.task_id} {container_port}/{proto} "
            f"on miner {miner.node_id} ({path.kind} path); Ctrl-C stops"
        )
        click.echo(_nat_line(info))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
