"""``sonmcli completion``: click's own shell completion, plus completers of job and miner IDs.

The completers ask the hub named by ``--hub`` (or ``SONM_HUB``) as ``HOST:PORT``, with a short
deadline, and offer nothing when there is none or it does not answer: a tab press must never
join the overlay or hang the shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem, get_completion_class

if TYPE_CHECKING:
    from sonm_p2p.client import HubClient

__all__ = ["complete_job", "complete_miner", "completion"]

_COMPLETION_TIMEOUT = 2.0
_SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(_SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    It completes commands and options, and the IDs of your jobs and of the hub's miners when
    --hub or SONM_HUB names the hub as HOST:PORT.

    \b
    Load it in this shell:
      eval "$(sonmcli completion bash)"          # zsh: eval "$(sonmcli completion zsh)"
    or for every new shell:
      sonmcli completion bash > ~/.local/share/bash-completion/completions/sonmcli
      sonmcli completion zsh > "${fpath[1]}/_sonmcli"
    """
    root = ctx.find_root()
    prog = root.info_name or "sonmcli"
    var = "_{}_COMPLETE".format(prog.replace("-", "_").upper())
    cls = get_completion_class(shell)
    assert cls is not None  # the choice above names only shells click knows
    click.echo(cls(root.command, {}, prog, var).source())


def _client(ctx: click.Context) -> HubClient | None:
    """A client of the hub the command line names directly, or None."""
    from cli._common import default_home
    from cli._discover import classify
    from sonm_p2p.client import HubClient
    from sonm_p2p.identity import load_or_create
    from sonm_p2p.transport.addrs import format_hostport, parse_hostport

    params = ctx.find_root().params
    hub = params.get("hub") or ""
    if not hub or classify(hub) != "direct":
        return None
    home = params.get("home") or default_home("client")
    tls_ca = params.get("tls_ca")
    try:
        host, port = parse_hostport(hub, default_port=10001)
        identity = load_or_create(Path(home)) if Path(home, "key").exists() else None
        ca = Path(tls_ca).read_bytes() if tls_ca else None
        return HubClient(
            format_hostport(host, port), timeout=_COMPLETION_TIMEOUT, identity=identity, tls_ca=ca
        )
    except Exception:  # noqa: BLE001 - completion offers nothing rather than a traceback
        return None


def complete_job(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Your tasks on the hub whose ID starts with what was typed, with state and image; for
    ``stop``, only those still running."""
    client = _client(ctx)
    if client is None or client.identity is None:
        return []
    try:
        with client:
            tasks = client.list_tasks()
    except Exception:  # noqa: BLE001
        return []
    mine = client.identity.node_id.lower()
    live_only = ctx.command.name == "stop"
    return [
        CompletionItem(t.task_id, help=f"{t.state.value} {t.image}")
        for t in tasks
        if t.owner.lower() == mine
        and t.task_id.startswith(incomplete.lower())
        and not (live_only and t.terminal)
    ]


def complete_miner(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """The hub's online miners whose node ID starts with what was typed."""
    client = _client(ctx)
    if client is None:
        return []
    try:
        with client:
            miners = client.list_miners()
    except Exception:  # noqa: BLE001
        return []
    typed = incomplete.lower()
    return [
        CompletionItem(m.node_id, help=f"{len(m.task_ids)} tasks")
        for m in miners
        if m.online and m.node_id.lower().startswith(typed)
    ]
