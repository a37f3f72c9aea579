"""`--version` on every executable, and tab completion as a bash user gets it: the script
`sonmcli completion bash` prints, loaded into a real bash, completes commands and the IDs of the
user's own running jobs from the hub."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from sonm_p2p import __version__
from sonm_p2p.identity import load_or_create
from tests.harness import BIN, wait_for

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.mark.parametrize("prog", ["sonmcli", "sonmhub", "sonmminer", "sonm-devnet", "sonm-loadgen"])
def test_version(prog):
    res = subprocess.run([str(BIN / prog), "--version"], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, f"{prog} {__version__}\n"), res.stderr


def _complete(words: str) -> list[str]:
    """What bash offers for ``words`` (the cursor after the last word), through the script
    ``sonmcli completion bash`` prints, as a user's shell would run it."""
    script = (
        f'eval "$({BIN / "sonmcli"} completion bash)"\n'
        f"COMP_WORDS=({words})\n"
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        '[[ "$WORDS_END" == " " ]] && COMP_WORDS+=("") && COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
        "_sonmcli_completion sonmcli\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "WORDS_END": words[-1:]}
    res = subprocess.run(
        ["bash", "--norc", "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line]


def test_bash_completes_commands_and_options():
    assert _complete("sonmcli st") == ["start", "status", "stop"]
    assert "--image" in _complete("sonmcli start --")
    assert "--version" in _complete("sonmcli --")


def test_completion_scripts_for_each_shell():
    for shell, marker in (
        ("bash", "complete -o"),
        ("zsh", "#compdef sonmcli"),
        ("fish", "complete"),
    ):
        res = subprocess.run(
            [str(BIN / "sonmcli"), "completion", shell], capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0 and marker in res.stdout, (shell, res.stderr)
    bad = subprocess.run(
        [str(BIN / "sonmcli"), "completion", "tcsh"], capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "tcsh" in bad.stderr


def test_bash_completes_my_running_jobs_and_the_hubs_miners(net):
    hub = net.hub()
    miner = net.miner(hub, "m1", runtime="memory")
    wait_for(lambda: miner.node_id in hub.online(), "miner listed")
    started = [
        hub.cli("start", "--image", "sonm-test/web", f"--miner={miner.node_id}") for _ in range(2)
    ]
    running, stopped = (r.stdout.split()[1].rstrip(",") for r in started)
    assert hub.cli("stop", stopped).returncode == 0
    home = net.root / "client"
    flags = f"--hub {hub.grpc_target} --home {home}"

    assert _complete(f"sonmcli {flags} stop ") == [running]
    assert sorted(_complete(f"sonmcli {flags} status ")) == sorted([running, stopped])
    assert _complete(f"sonmcli {flags} logs {running[:4]}") == [running]
    assert _complete(f"sonmcli {flags} miner-status 0") == [miner.node_id]
    # Another client's key sees none of these jobs as its own.
    load_or_create(net.root / "other")
    assert _complete(f"sonmcli --hub {hub.grpc_target} --home {net.root / 'other'} stop ") == []


def test_completion_without_a_reachable_hub_offers_nothing_quickly(tmp_path):
    from tests.harness import free_port

    dead = f"127.0.0.1:{free_port()}"
    assert _complete(f"sonmcli --hub {dead} --home {tmp_path} stop ") == []
    assert _complete(f"sonmcli --home {tmp_path} stop ") == []  # no --hub: never joins the overlay
