"""``sonmcli agent status|stop``: the resident process that runs sonmcli's commands (see
``cli/_launch.py``)."""

from __future__ import annotations

import os
import sys
import time

import click

from cli._common import emit_json
from cli._context import CliContext
from cli._launch import agent_socket, ask_agent

__all__ = ["agent"]

_NOT_RUNNING = 3  # the "not found" exit code


@click.group()
def agent() -> None:
    """The background process that runs sonmcli's commands (~25 ms each instead of ~0.2 s).

    The first sonmcli call starts it; it leaves after 10 idle minutes (SONM_CLI_AGENT_IDLE,
    in seconds) or when sonmcli is upgraded. SONM_CLI_AGENT=off runs every command on its own.
    """


def _describe(answer: dict | None, path: str, *, stopping: bool = False) -> dict:
    if answer is None:
        return {"running": False, "socket": path}
    # The command asking is itself one of the agent's commands when it was run through it.
    running = [pid for pid in answer["running"] if pid != os.getpid()]
    return {
        "running": True,
        "socket": path,
        "pid": answer["pid"],
        "uptime_s": round(time.time() - answer["started"], 1),
        "served": answer["served"],
        "commands_running": len(running),
        "taking_commands": bool(answer["listening"]) and not stopping,
    }


@agent.command()
@click.pass_obj
def status(c: CliContext) -> None:
    """Whether the agent runs, its PID, uptime and how many commands it served.

    Exits 3 when none runs."""
    path = agent_socket()
    info = _describe(ask_agent("status", path), path)
    if c.as_json:
        emit_json(info)
    elif info["running"]:
        click.echo(
            f"running: pid {info['pid']}, up {info['uptime_s']:.0f}s, "
            f"commands served {info['served']}, running {info['commands_running']}"
        )
        click.echo(f"socket {path}")
    else:
        click.echo(f"not running (socket {path})")
    if not info["running"]:
        sys.exit(_NOT_RUNNING)


@agent.command()
@click.pass_obj
def stop(c: CliContext) -> None:
    """Stop the agent: it takes no more commands and leaves once those it runs have ended
    (a `forward` or `logs -f` goes on until you stop it). The next sonmcli call starts a new
    one; set SONM_CLI_AGENT=off to keep it from starting."""
    path = agent_socket()
    info = _describe(ask_agent("stop", path), path, stopping=True)
    if c.as_json:
        emit_json(info)
    elif not info["running"]:
        click.echo(f"no agent running (socket {path})")
    elif info["commands_running"]:
        click.echo(
            f"agent {info['pid']} takes no more commands; it leaves when its "
            f"{info['commands_running']} running command(s) end"
        )
    else:
        click.echo(f"agent {info['pid']} stopped")
