"""Group options where people type them: before or after the command, with the same result."""

from __future__ import annotations

import pytest

from cli._common import hoist_options

COMMANDS = {"list", "status", "start", "logs"}
OPTIONS = {"--json": False, "--hub": True, "--timeout": True}


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["list", "--json"], ["--json", "list"]),
        (["--json", "list"], ["--json", "list"]),
        (["status", "JOB", "--json", "--hub", "h:1"], ["--json", "--hub", "h:1", "status", "JOB"]),
        (["status", "--hub=h:1", "JOB"], ["--hub=h:1", "status", "JOB"]),
        (
            ["--hub", "list", "status", "--json"],
            ["--hub", "list", "--json", "status"],
        ),  # a hub named list  # noqa: E501
        (
            ["start", "--image", "x", "--timeout", "5m", "--", "sh", "-c", "echo --json"],
            ["--timeout", "5m", "start", "--image", "x", "--", "sh", "-c", "echo --json"],
        ),
        (["--help"], ["--help"]),
        ([], []),
    ],
)
def test_hoist(args: list[str], want: list[str]) -> None:
    assert hoist_options(args, COMMANDS, OPTIONS) == want


def _main(module: str):  # noqa: ANN202 - a click command
    import importlib

    return importlib.import_module(module).main


@pytest.mark.parametrize(
    "module", ["cli.sonmhub", "cli.sonmminer", "cli.sonmcli", "cli.loadgen", "cli.devnet"]
)
def test_every_executable_that_runs_a_node_has_no_birthday_punch(module: str) -> None:
    import click

    cmd = _main(module)
    if module == "cli.devnet":
        cmd = cmd.commands["up"]
    names = {opt for p in cmd.params if isinstance(p, click.Option) for opt in p.opts}
    assert "--no-birthday-punch" in names


@pytest.mark.parametrize(
    "args",
    [
        ["--no-birthday-punch", "forward", "JOB", "80/tcp"],
        ["forward", "JOB", "80/tcp", "--no-birthday-punch"],
    ],
)
def test_sonmcli_no_birthday_punch_before_or_after_the_command(args: list[str]) -> None:
    import click

    main = _main("cli.sonmcli")
    ctx = main.make_context("sonmcli", list(args), resilient_parsing=True)
    assert ctx.params["no_birthday_punch"] is True
    plain = main.make_context("sonmcli", ["forward", "JOB", "80/tcp"], resilient_parsing=True)
    assert plain.params["no_birthday_punch"] is False
    assert isinstance(main, click.Group)
