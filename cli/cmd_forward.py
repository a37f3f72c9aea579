"""sonmcli forward: reach a task's ports through the overlay (works behind NAT)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from cli._common import emit_json
from cli._context import CliContext
from cli.cmd_shell import complete_job
from sonm_p2p.errors import InvalidRequest, MinerUnavailable
from sonm_p2p.transport.addrs import parse_hostport


def _port(text: str) -> tuple[int, str]:
    port, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("tcp", "udp"):
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
@click.argument("job", shell_complete=complete_job)
@click.argument("ports", nargs=-1, required=True, metavar="PORT...")
@click.option(
    "--local",
    multiple=True,
    metavar="HOST:PORT",
    help="Where to listen here, one per PORT in order (port 0: any free port); "
    "[default: 127.0.0.1:0 for each].",
)
@click.pass_obj
def forward(c: CliContext, job: str, ports: tuple[str, ...], local: tuple[str, ...]) -> None:
    """Reach PORTs (e.g. 8080/tcp 27960/udp) of task JOB from this machine, through the overlay.

    Opens a local listener (TCP) or socket (UDP) per port, printed one line each (--json: an
    object for one port, a list for several); each connection to it is carried to the task's
    published port on its miner: directly, hole-punched, or through the hub's relay when the
    miner is behind NAT. Only the task's owner may. Runs until Ctrl-C. Several forwards of one
    client may run at once (each process has a peer ID of its own on the overlay).

    It also asks the hub's STUN responders which NAT this machine is behind (as `sonmcli nat`
    does; at most ~3 s, in parallel with the rest). Behind a symmetric NAT, where a DCUtR hole
    punch cannot work, it skips that punch; when the other side is endpoint-independent it tries
    a birthday-paradox punch instead (~1,000 SYNs, ~2 s; --no-birthday-punch keeps the relayed
    path). The output shows the NAT type ("unknown" if STUN failed) and whether the punch was
    skipped.

    \b
    Examples:
      sonmcli forward JOB 8080/tcp
      sonmcli forward JOB 27960/tcp 27960/udp --local 127.0.0.1:27960 --local 127.0.0.1:27960
    """
    from sonm_p2p.config import client_listen
    from sonm_p2p.transport.forward import PortSpec, TaskForwarder

    specs = _specs(ports, local)
    with c.client() as client:
        # STUN runs while the task is looked up and the node starts
        forwarder = TaskForwarder(
            lambda: client.info().stun_endpoints,
            listen=client_listen(),
            birthday_punch=c.birthday_punch,
        )
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
        ports=[PortSpec(port, proto, where) for port, proto, where in specs],
    )
    infos = [o.as_dict() for o in opened]
    if c.as_json:
        emit_json(infos[0] if len(infos) == 1 else infos)
    else:
        for i, o in enumerate(opened):
            host, lport = o.forward.local_addr
            click.echo(
                f"forwarding {host}:{lport} -> task {task.task_id} {o.port}/{o.proto} "
                f"on miner {miner.node_id} ({o.path.kind} path)"
                + ("; Ctrl-C stops" if i == len(opened) - 1 else "")
            )
        click.echo(_nat_line(infos[0]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _specs(ports: tuple[str, ...], local: tuple[str, ...]) -> list[tuple[int, str, tuple]]:
    """(port, proto, (host, port) here) per PORT; --local given in order, the rest any port."""
    if len(local) > len(ports):
        raise InvalidRequest(f"{len(local)} --local for {len(ports)} port(s): one per PORT at most")
    specs = []
    for i, text in enumerate(ports):
        port, proto = _port(text)
        where = parse_hostport(local[i] if i < len(local) else "127.0.0.1:0", allow_zero=True)
        specs.append((port, proto, where))
    taken = [(proto, where) for _, proto, where in specs if where[1]]
    if len(set(taken)) != len(taken):
        raise InvalidRequest("two ports of one protocol cannot share one --local HOST:PORT")
    return specs
