"""sonmcli start, stop, status, tasks, logs."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from datetime import datetime

import click

from cli._common import Duration, emit_json, parse_size
from cli._context import CliContext, endpoints_json, task_json
from cli._progress import StartProgress
from cli.cmd_shell import complete_job, complete_miner
from sonm_p2p.errors import ConfigError
from sonm_p2p.model import LogQuery, RunSpec
from sonm_p2p.tasks import format_endpoints


def _parse_env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise ConfigError(f"--env {v!r}: expected KEY=VALUE")
        env[k] = val
    return env


@click.command()
@click.option("--image", required=True, help="Docker image to run (must have ENTRYPOINT or CMD).")
@click.option(
    "--miner",
    required=True,
    shell_complete=complete_miner,
    help="Miner node ID, or a unique prefix of it.",
)
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment (repeatable).")
@click.option("--cpu", type=float, default=0.0, help="CPU cores the task may use (0: no limit).")
@click.option("--memory", default=None, help="Memory limit, e.g. 512m, 2g (default: no limit).")
@click.option(
    "--restart",
    default="",
    metavar="POLICY",
    help="Restart policy: no, always, unless-stopped, on-failure[:N].",
)
@click.option("-d", "--detach", is_flag=True, help="Return at once with the job ID.")
@click.argument("command", nargs=-1)
@click.pass_obj
def start(
    c: CliContext,
    image: str,
    miner: str,
    env: tuple[str, ...],
    cpu: float,
    memory: str | None,
    restart: str,
    detach: bool,
    command: tuple[str, ...],
) -> None:
    """Start IMAGE on a miner; prints the job ID and where its ports are.

    Shows the image pull's progress while it waits (a bar on a terminal, lines otherwise,
    JSON lines with --json). Anything after `--` replaces the image's CMD.
    """
    spec = RunSpec(
        image=image,
        command=command,
        env=_parse_env(env),
        cpus=cpu,
        memory_bytes=parse_size(memory, "--memory"),
        restart=restart,
    )
    task_id = str(uuid.uuid4())
    with c.client() as client:
        if detach:
            t = client.start_task(miner, spec, task_id=task_id, detach=True)
            if c.as_json:
                emit_json({"id": t.task_id, "miner": t.miner_id, "state": "PULLING"})
            else:
                click.echo(f"ID {t.task_id}")
            return
        progress = StartProgress(image, as_json=c.as_json, tty=sys.stderr.isatty())
        watch = client.watch_task(task_id, timeout=c.timeout)
        watcher = threading.Thread(target=progress.follow, args=(watch,), daemon=True)
        watcher.start()
        try:
            t = client.start_task(miner, spec, task_id=task_id)
        finally:
            watch.cancel()
            watcher.join(timeout=2)
            progress.done()
    if c.as_json:
        click.echo(
            _compact(
                {"id": t.task_id, "miner": t.miner_id, "endpoints": endpoints_json(t.endpoints)}
            )
        )
    else:
        click.echo(f"ID {t.task_id}, Endpoint {format_endpoints(t.endpoints)}")
        _forward_hint(t.task_id, t.endpoints)


def _forward_hint(task_id: str, endpoints: tuple) -> None:
    behind = [f"{e.container_port}/{e.protocol}" for e in endpoints if e.reach == "forward"]
    if behind:
        click.echo(
            f"the miner is behind NAT: reach {', '.join(behind)} with "
            f"`sonmcli forward {task_id} {' '.join(behind)}`",
            err=True,
        )


def _compact(obj: object) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.pass_obj
def stop(c: CliContext, job: str) -> None:
    """Stop a task (gracefully, then killed) and remove its container."""
    with c.client() as client:
        t = client.stop_task(job)
    if c.as_json:
        emit_json(task_json(t))
    else:
        code = f" (exit code {t.exit_code})" if t.exit_code is not None else ""
        click.echo(f"{t.task_id} {t.state.value}{code}")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.pass_obj
def status(c: CliContext, job: str) -> None:
    """Show one task: state, miner, endpoints, exit code or error."""
    with c.client() as client:
        t = client.task_status(job)
    if c.as_json:
        emit_json(task_json(t))
        return
    click.echo(f"ID         {t.task_id}")
    click.echo(f"State      {t.state.value}")
    click.echo(f"Miner      {t.miner_id}")
    click.echo(f"Image      {t.image}")
    click.echo(f"Endpoint   {format_endpoints(t.endpoints)}")
    for e in t.endpoints:
        how = {
            "direct": "directly",
            "forward": f"via `sonmcli forward {t.task_id} "
            f"{e.container_port}/{e.protocol}` (miner behind NAT)",
        }.get(e.reach)
        if how:
            click.echo(f"           {e.container_port}/{e.protocol} reachable {how}")
    if t.exit_code is not None:
        click.echo(f"Exit code  {t.exit_code}")
    if t.error:
        click.echo(f"Error      {t.error}")
    click.echo(f"Owner      {t.owner or '-'}")
    click.echo(f"Created    {_when(t.created_at)}")
    click.echo(f"Updated    {_when(t.updated_at)}")


@click.command()
@click.option("--miner", default="", help="Only this miner's tasks (node ID or prefix).")
@click.pass_obj
def tasks(c: CliContext, miner: str) -> None:
    """Every task the hub knows, oldest first."""
    with c.client() as client:
        ts = client.list_tasks(miner)
    if c.as_json:
        emit_json({"tasks": [task_json(t) for t in ts]})
        return
    if not ts:
        click.echo("no tasks")
        return
    click.echo(f"{'ID':36}  {'STATE':8}  {'MINER':12}  {'IMAGE':24}  ENDPOINTS")
    for t in ts:
        click.echo(
            f"{t.task_id:36}  {t.state.value:8}  {t.miner_id[:12]:12}  "
            f"{t.image[:24]:24}  {format_endpoints(t.endpoints)}"
        )


class _Since(click.ParamType):
    """``10m`` (that long ago), an ISO date/time, or unix seconds."""

    name = "since"

    def convert(self, value: object, param: object, ctx: object) -> float:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:  # a bare number: unix time, or seconds ago when small
            return number if number > 1e8 else time.time() - number
        try:
            return time.time() - Duration().convert(text, param, ctx)  # type: ignore[arg-type]
        except click.BadParameter:
            pass
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            self.fail(
                f"{text!r}: expected a duration (10m), an ISO time or unix seconds", param, ctx
            )  # type: ignore[arg-type]


@click.command()
@click.argument("job", shell_complete=complete_job)
@click.option(
    "-f", "--follow", is_flag=True, help="Keep streaming until the task ends (Ctrl-C stops)."
)
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
@click.option(
    "--since", type=_Since(), default=None, help="Only output after this (10m, ISO time)."
)
@click.option("--stdout", "only_stdout", is_flag=True, help="Only the task's standard output.")
@click.option("--stderr", "only_stderr", is_flag=True, help="Only the task's standard error.")
@click.pass_obj
def logs(
    c: CliContext,
    job: str,
    follow: bool,
    tail: int | None,
    since: float | None,
    only_stdout: bool,
    only_stderr: bool,
) -> None:
    """Print a task's output (also after its container exited or was stopped)."""
    if tail is not None and tail < 0:
        raise ConfigError("--tail must be 0 or more")
    both = only_stdout == only_stderr
    query = LogQuery(
        job,
        follow=follow,
        tail=tail,
        since=since,
        stdout=both or only_stdout,
        stderr=both or only_stderr,
    )
    out = sys.stdout.buffer
    with c.client() as client:
        stream = client.task_logs(query, timeout=None if follow else c.timeout)
        try:
            for chunk in stream:
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            stream.cancel()  # Ctrl-C is how a follow ends: not an error
