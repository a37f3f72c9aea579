"""sonmcli forward: reach a task's port through the overlay (works behind NAT)."""

from __future__ import annotations

import signal
import threading

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
    """
    from sonm_p2p.config import client_listen
    from sonm_p2p.transport.forward import open_forward
    from sonm_p2p.transport.node import NodeOptions, P2PNode

    container_port, proto = _port(port)
    local_host, local_port = parse_hostport(local, allow_zero=True)
    with c.client() as client:
        task = client.task_status(job)
        miner = next((m for m in client.list_miners() if m.node_id == task.miner_id), None)
    if miner is None or not miner.online or not miner.peer_id:
        raise MinerUnavailable(f"task {task.task_id}'s miner {task.miner_id} is offline")
    node = P2PNode(c.identity(), NodeOptions(listen=client_listen()))
    node.start()
    c.stack.callback(node.close)
    node.connect_peer(miner.peer_id, list(miner.multiaddrs))
    path = node.path(miner.peer_id)  # the path new streams take, its RTT measured by a ping
    if path is None:
        raise MinerUnavailable(f"lost the connection to miner {miner.node_id}")
    fwd = open_forward(
        node, miner.peer_id, task.task_id, container_port, proto, (local_host, local_port)
    )
    c.stack.callback(fwd.close)
    host, lport = fwd.local_addr
    info = {
        "local": f"{host}:{lport}", "task": task.task_id, "port": f"{container_port}/{proto}",
        "miner": miner.node_id, "path": str(path.kind), "remote": path.remote,
        "rtt_ms": None if path.rtt is None else round(path.rtt * 1000, 3),
    }  # fmt: skip
    if c.as_json:
        emit_json(info)
    else:
        click.echo(
            f"forwarding {host}:{lport} -> task {task.task_id} {container_port}/{proto} "
            f"on miner {miner.node_id} ({path.kind} path); Ctrl-C stops"
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
