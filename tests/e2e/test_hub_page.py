"""The hub's page, drawn by a real headless browser (Debian's chromium) against a running
devnet, and its /metrics as Prometheus parses them. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.devnet_cli import DEVNET, devnet, fresh_shell, ok, status

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium: `make browser` (ensure-debs.sh --browser)"
)


def chromium(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on ``url``: no network of its own, scripts run for 6 s of page time."""
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-proxy-server",
        f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=6000",
        "--window-size=1000,700", *args, url,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture
def base(tmp_path):
    root = tmp_path / "devnet"
    yield root
    devnet("down", "--dir", str(root), "--name", "page")


def test_the_page_draws_a_running_network(base, tmp_path):
    out = ok(
        "up", "--dir", str(base), "--name", "page", "--hubs", "2", "--miners", "2",
        "--runtime", "memory",
    )  # fmt: skip
    urls = re.findall(r"^page of hub-\d: (http://\S+)$", out, re.M)
    assert len(urls) == 2, out
    rows = {r["name"]: r for r in status(base, "page")}
    hub1, miner1 = rows["hub-1"], rows["miner-1"]
    assert miner1["hub"] == hub1["node_id"]  # the miners take the hubs in turn
    env = f'eval "$({DEVNET} env --dir {base} --name page)"'
    start = f"sonmcli start --image sonm-test/web --miner={miner1['node_id']}"
    started = fresh_shell(f"{env} && {start}")
    assert started.returncode == 0, started.stderr
    task = started.stdout.split()[1].rstrip(",")

    res = chromium(urls[0], tmp_path, "--dump-dom")
    dom = res.stdout
    assert 'data-rendered="' in dom, res.stderr[-2000:]
    for name in ("hub-1", "hub-2", "miner-1"):
        assert f'data-node-id="{rows[name]["node_id"]}"' in dom, (name, dom[-3000:])
    assert rows["miner-2"]["node_id"] not in dom  # hub-2's miner: not this hub's to draw
    assert 'data-path="direct"' in dom and f'data-task-id="{task}"' in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "hub-page.png"
    shot.unlink(missing_ok=True)
    res = chromium(urls[0], tmp_path, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 5000, res.stderr[-2000:]

    with urllib.request.urlopen(urls[0] + "metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("sonm_hub_miners_online", ())] == 1
    assert samples[("sonm_hub_tasks", (("state", "RUNNING"),))] == 1
    assert samples[("sonm_hub_rpcs_total", (("code", "OK"), ("method", "StartTask")))] == 1
    assert samples[("sonm_hub_gossip_messages_total", (("reason", ""), ("result", "accepted")))] > 0
    assert ("sonm_hub_relay_reservations", ()) in samples
    assert ("sonm_hub_relay_circuits", ()) in samples
    bad = fresh_shell(f"{env} && sonmcli status no-such-task")
    assert bad.returncode == 3
    with urllib.request.urlopen(urls[0] + "metrics", timeout=10) as r:
        assert 'sonm_hub_rpcs_total{code="NOT_FOUND",method="TaskStatus"} 1.0' in r.read().decode()
