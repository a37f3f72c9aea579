"""``sonmcli``: the user's tool. Thin over :class:`sonm_p2p.client.HubClient`.

One module per command group: ``cmd_hub`` (ping, info), ``cmd_miners`` (list, miner-status),
``cmd_tasks`` (start, stop, status, tasks, logs).
"""

from __future__ import annotations

from pathlib import Path

import click

from cli._common import (
    Duration,
    SonmGroup,
    chain_options,
    default_home,
    no_birthday_punch_option,
    run_and_exit,
    version_option,
)
from cli._context import CliContext
from cli.cmd_agent import agent
from cli.cmd_chain import chain, whoami
from cli.cmd_forward import forward
from cli.cmd_hub import hubs, info, nat, ping
from cli.cmd_miners import list_, miner_status
from cli.cmd_shell import completion
from cli.cmd_tasks import logs, start, status, stop, tasks


@click.group(cls=SonmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@version_option()
@click.option(
    "--hub",
    envvar="SONM_HUB",
    default="",
    metavar="HUB",
    help="The hub: HOST:PORT of its client API (port 10001), a multiaddr of its overlay port, "
    "its node ID (or a unique prefix), or nothing: a hub is found on the LAN or through "
    "bootstrap peers. Env: SONM_HUB.",
)
@click.option(
    "--bootstrap",
    multiple=True,
    metavar="MULTIADDR|HOST:PORT",
    help="Overlay peer to find hubs through (repeatable). Env: SONM_BOOTSTRAP.",
)
@click.option(
    "--timeout",
    type=Duration(),
    default="60s",
    show_default=True,
    help="Deadline of the whole command (e.g. 30s, 5m, 3000s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path),
    envvar="SONM_TLS_CA",
    default=None,
    metavar="PEM",
    help="The hub's client API serves TLS (sonmhub --tls-cert): check its certificate against "
    "these CA certificates. Env: SONM_TLS_CA.",
)
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Where this client's key lives [default: $SONM_HOME/client or ~/.sonm/client].",
)
@no_birthday_punch_option
@chain_options
@click.pass_context
def main(
    ctx: click.Context,
    hub: str,
    bootstrap: tuple[str, ...],
    timeout: float,
    as_json: bool,
    tls_ca: Path | None,
    home: Path | None,
    no_birthday_punch: bool,
    chain: str | None,
    registry: str | None,
    require_registered: bool | None,
) -> None:
    """Talk to a sonm hub: see its miners, start, inspect and stop tasks.

    \b
    Examples:
      sonmcli hubs                                 # hubs on the LAN / via bootstrap
      sonmcli --hub 192.0.2.10:10001 ping
      sonmcli --hub 192.0.2.10:10001 list
      sonmcli --hub 192.0.2.10:10001 --timeout=3000s start --image IMG --miner=0xMINER
      sonmcli --hub 192.0.2.10:10001 logs -f JOBID
      sonmcli --hub 192.0.2.10:10001 stop JOBID
      sonmcli list --json --hub 192.0.2.10:10001   # options after the command work too
      eval "$(sonmcli completion bash)"             # tab completion (zsh, fish too)
      sonmcli --chain URL --registry 0xREG list    # a hub staked in the registry

    Exit codes: 0 ok, 2 bad usage or config, 3 not found, 4 unreachable,
    5 timed out, 6 refused, 7 the miner's container engine failed,
    8 not allowed (only a task's owner may stop it or read its output).
    """
    ctx.obj = CliContext(
        hub,
        timeout,
        as_json,
        home or default_home("client"),
        bootstrap,
        tls_ca=tls_ca,
        chain_flags=(chain, registry, require_registered),
        birthday_punch=not no_birthday_punch,
    )
    ctx.call_on_close(ctx.obj.stack.close)


# Also accepted after the command: `sonmcli list --json`, `sonmcli status JOB --hub H`.
main.hoisted = {
    "--json": False,
    "--hub": True,
    "--timeout": True,
    "--bootstrap": True,
    "--tls-ca": True,
    "--home": True,
    "--no-birthday-punch": False,
    "--chain": True,
    "--registry": True,
    "--require-registered": False,
    "--no-require-registered": False,
}

for command in (
    ping,
    info,
    hubs,
    nat,
    list_,
    miner_status,
    start,
    stop,
    status,
    tasks,
    logs,
    forward,
    completion,
    whoami,
    chain,
    agent,
):
    main.add_command(command)


def run() -> None:
    """The console script: ``main``, then out at once (see :func:`run_and_exit`)."""
    run_and_exit(main)


if __name__ == "__main__":
    run()
