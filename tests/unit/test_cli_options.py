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
