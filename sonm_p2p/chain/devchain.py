"""A local chain for tests and the devnet: anvil (npm ``@foundry-rs/anvil``, ``make anvil``),
a registry deployed on it, keys funded from its dev accounts.

    with LocalChain.start() as chain:                      # anvil on 127.0.0.1, a free port
        registry = chain.deploy_registry(min_stake=WEI)    # from a funded deployer key
        chain.fund(hub_identity.node_id, 10 * WEI)
        ... sonmhub --chain chain.url --registry registry --stake 1

:func:`local_registry` does all of it in one call (what ``sonm-devnet up --chain`` needs).
Funding uses anvil's ``anvil_setBalance``: no transaction, no nonce to race on.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sonm_p2p.chain import WEI
from sonm_p2p.errors import ConfigError, Timeout
from sonm_p2p.identity import Identity

__all__ = [
    "LocalChain",
    "anvil_argv",
    "anvil_path",
    "deploy_registry",
    "listening_url",
    "local_registry",
    "set_balance",
]

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")


def anvil_path() -> str | None:
    """The anvil binary: ``$SONM_ANVIL``, the npm package's own binary under the repository's
    node_modules (``make anvil``), or ``anvil`` on PATH; None when there is none."""
    env = os.environ.get("SONM_ANVIL")
    if env:
        return env
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "")
    native = ROOT / "node_modules" / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"
    if native.is_file():
        return str(native)
    return shutil.which("anvil")


def anvil_argv(port: int = 0, block_time: float | None = None) -> list[str]:
    """anvil on 127.0.0.1:``port`` (0: a free one), cancun (the registry's EVM version).

    Raises:
        ConfigError: there is no anvil (``make anvil``).
    """
    exe = anvil_path()
    if exe is None:
        raise ConfigError("anvil not found: run 'make anvil' (npm @foundry-rs/anvil)")
    argv = [exe, "--host", "127.0.0.1", "--port", str(port), "--hardfork", "cancun"]
    if block_time:
        argv += ["--block-time", f"{block_time:g}"]
    return argv


def listening_url(output: bytes) -> str | None:
    """The JSON-RPC URL anvil says it listens on in ``output`` (its log), or None yet."""
    m = _LISTENING.search(output)
    return f"http://{m.group(1).decode()}:{int(m.group(2))}" if m else None


def _rpc(url: str, method: str, *params: object) -> object:
    from sonm_p2p.chain.registry import connect

    return connect(url).provider.make_request(method, list(params))  # type: ignore[arg-type]


def set_balance(url: str, address: str, wei: int = 100 * WEI) -> None:
    """Give ``address`` a balance of ``wei`` on the dev chain at ``url`` (anvil_setBalance)."""
    _rpc(url, "anvil_setBalance", address, hex(wei))


def deploy_registry(
    url: str, *, min_stake: int = WEI, unlock_delay: int = 3600, deployer: Identity | None = None
) -> str:
    """Deploy a registry on the dev chain at ``url`` (from ``deployer``, funded here, or a new
    key); its address."""
    from sonm_p2p.chain.registry import connect, deploy

    deployer = deployer or Identity.generate()
    set_balance(url, deployer.node_id)
    return deploy(connect(url), deployer, min_stake=min_stake, unlock_delay=unlock_delay)


@dataclass
class LocalChain:
    """A running anvil on 127.0.0.1 (``url``); ``close()`` stops it (by PID)."""

    proc: subprocess.Popen
    url: str
    log: Path
    funded: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *, port: int = 0, block_time: float | None = None) -> LocalChain:
        """Start anvil (cancun, the registry's EVM version); blocks until it listens."""
        argv = anvil_argv(port, block_time)
        log = Path(tempfile.mkstemp(prefix="anvil-", suffix=".log")[1])
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            url = listening_url(log.read_bytes())
            if url:
                return cls(proc, url, log)
            if proc.poll() is not None:
                raise ConfigError(f"anvil exited ({proc.returncode}): {log.read_text()[-400:]}")
            time.sleep(0.05)
        proc.kill()
        raise Timeout("anvil did not listen within 30s")

    def rpc(self, method: str, *params: object) -> object:
        return _rpc(self.url, method, *params)

    def fund(self, address: str, wei: int = 100 * WEI) -> None:
        """Give ``address`` a balance of ``wei`` (anvil_setBalance)."""
        set_balance(self.url, address, wei)
        self.funded.append(address)

    def increase_time(self, seconds: int) -> None:
        """Move the chain's clock (and mine a block at the new time)."""
        self.rpc("evm_increaseTime", seconds)
        self.rpc("evm_mine")

    def deploy_registry(
        self,
        *,
        min_stake: int = WEI,
        unlock_delay: int = 3600,
        deployer: Identity | None = None,
    ) -> str:
        """Deploy a registry (from ``deployer``, funded here, or a new key); its address."""
        return deploy_registry(
            self.url, min_stake=min_stake, unlock_delay=unlock_delay, deployer=deployer
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> LocalChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_registry(
    fund: Iterable[str] = (),
    *,
    min_stake: int = WEI,
    unlock_delay: int = 3600,
    balance: int = 100 * WEI,
) -> tuple[LocalChain, str]:
    """Start anvil, deploy a registry, fund each address in ``fund`` (hubs' node IDs) with
    ``balance``; return (the chain, the registry's address). The caller closes the chain.

    A hub started with ``--chain chain.url --registry ADDRESS --stake 1`` then registers
    itself from its own key.
    """
    chain = LocalChain.start()
    try:
        address = chain.deploy_registry(min_stake=min_stake, unlock_delay=unlock_delay)
        for node_id in fund:
            chain.fund(node_id, balance)
    except BaseException:
        chain.close()
        raise
    return chain, address
