"""The hub registry's client: deploy it, register a hub, read the registered hubs (web3).

Importing this module imports web3 (over a second): only chain paths do.

Errors are the project's (see ``errors.py``): a chain that does not answer is
:class:`~sonm_p2p.errors.Unavailable` (exit 4), an address with no contract or another contract
than a registry is :class:`~sonm_p2p.errors.ConfigError` (exit 2), a reverted transaction is
:class:`~sonm_p2p.errors.Refused` (exit 6) naming the contract's reason ("stake below the
minimum", "stake still locked" ...), too little balance to pay is :class:`InsufficientFunds`.

Transactions are signed with the node's own key (:class:`~sonm_p2p.identity.Identity`), so the
contract's ``msg.sender`` is the node ID.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
)

from sonm_p2p.chain import format_eth
from sonm_p2p.errors import ConfigError, Refused, SonmError, Timeout, Unavailable
from sonm_p2p.identity import Identity

__all__ = [
    "InsufficientFunds",
    "Registry",
    "RegistryEntry",
    "connect",
    "deploy",
    "fit_endpoints",
    "load_artifact",
]

log = logging.getLogger(__name__)

PAGE = 100  # the contract's largest page
MAX_ADDRS = 8  # the contract's bounds (contracts/HubRegistry.vy)
MAX_ADDR_LEN = 256
MAX_ENDPOINT_LEN = 256
MAGIC = Web3.keccak(text="sonm.p2p.HubRegistry.v1")


class InsufficientFunds(Refused):
    """The account cannot pay for the transaction (stake + gas); ``needed`` and ``balance`` in
    wei."""

    def __init__(self, message: str, needed: int = 0, balance: int = 0) -> None:
        super().__init__(message)
        self.needed, self.balance = needed, balance


@functools.cache
def load_artifact() -> dict[str, Any]:
    """The compiled registry (ABI, bytecode), as checked in next to this module."""
    text = resources.files("sonm_p2p.chain").joinpath("HubRegistry.json").read_text()
    return json.loads(text)


def connect(url_or_provider: Any, *, timeout: float = 10.0) -> Web3:
    """A Web3 on an Ethereum JSON-RPC URL (http/https), or on a provider object (tests pass
    web3's EthereumTesterProvider). Nothing is sent yet."""
    if not isinstance(url_or_provider, str):
        return Web3(url_or_provider)
    url = url_or_provider
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--chain {url!r}: expected an http:// or https:// JSON-RPC URL")
    provider = Web3.HTTPProvider(
        url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
    )
    return Web3(provider)


def _where(w3: Web3) -> str:
    return getattr(w3.provider, "endpoint_uri", None) or type(w3.provider).__name__


def _reason(exc: BaseException) -> str:
    """The revert reason of a contract error, without web3's prefix."""
    msg = getattr(exc, "message", None) or (exc.args[0] if exc.args else str(exc))
    msg = str(msg)
    for prefix in ("execution reverted: ", "execution reverted:", "execution reverted"):
        if msg.startswith(prefix):
            return msg[len(prefix) :].strip() or "reverted with no reason"
    return msg


def _translated(w3: Web3, what: str, exc: BaseException) -> SonmError:
    """A web3 / transport error as the project's error."""
    if isinstance(exc, SonmError):
        return exc
    if isinstance(exc, ContractLogicError) or str(exc).startswith("execution reverted"):
        # (eth-tester, the in-process chain of the unit tests, raises its own TransactionFailed)
        return Refused(f"{what}: refused by the registry: {_reason(exc)}")
    if isinstance(exc, requests.exceptions.ConnectionError | OSError):  # ConnectTimeout too
        return Unavailable(f"chain {_where(w3)} unreachable ({what}): {_short(exc)}")
    if isinstance(exc, requests.exceptions.Timeout):
        return Timeout(f"chain {_where(w3)} did not answer in time ({what})")
    if isinstance(exc, requests.exceptions.RequestException):
        return Unavailable(f"chain {_where(w3)} unreachable ({what}): {_short(exc)}")
    if isinstance(exc, TimeExhausted):
        return Timeout(f"{what}: the transaction was not mined in time")
    if isinstance(exc, Web3RPCError):
        text = _reason(exc)
        if "insufficient funds" in text.lower():
            return InsufficientFunds(f"{what}: {text}")
        if "revert" in text.lower():
            return Refused(f"{what}: refused by the registry: {text}")
        return SonmError(f"{what}: chain {_where(w3)} answered: {text}")
    if isinstance(exc, Web3Exception | ValueError):
        return SonmError(f"{what}: {_short(exc)}")
    raise exc


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Failed to resolve" in text:
        return "unknown host"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _call(w3: Web3, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise _translated(w3, what, exc) from None


@dataclass(frozen=True)
class RegistryEntry:
    """A registered hub as the contract holds it (as read; :func:`check_entry` in
    ``discovery.registered`` decides whether it is usable)."""

    node_id: str
    stake: int  # wei
    multiaddrs: tuple[str, ...]
    grpc_endpoint: str
    registered_at: int = 0  # block time, unix seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "stake_wei": str(self.stake),
            "stake": format_eth(self.stake),
            "multiaddrs": list(self.multiaddrs),
            "grpc_endpoint": self.grpc_endpoint,
            "registered_at": self.registered_at,
        }


def deploy(
    w3: Web3, identity: Identity, *, min_stake: int, unlock_delay: int, timeout: float = 60.0
) -> str:
    """Deploy a registry from ``identity``'s account; return its (checksummed) address."""
    art = load_artifact()
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = _transact(
        w3, identity, "deploy", factory.constructor(min_stake, unlock_delay), 0, timeout
    )
    return str(receipt["contractAddress"])


def _transact(
    w3: Web3, identity: Identity, what: str, call: Any, value: int, timeout: float
) -> Any:
    """Sign ``call`` with the node key, send it, wait for its receipt; Refused on a revert."""
    sender = identity.node_id

    def send() -> Any:
        balance = w3.eth.get_balance(sender)
        if balance < value:  # before estimating gas, which would fail with a murkier message
            _short_of(what, sender, balance, value + _GAS_RESERVE * w3.eth.gas_price, value)
        tx = call.build_transaction(
            {"from": sender, "value": value, "nonce": w3.eth.get_transaction_count(sender)}
        )
        cost = value + tx["gas"] * tx.get("maxFeePerGas", tx.get("gasPrice", 0))
        if balance < cost:
            _short_of(what, sender, balance, cost, value)
        signed = w3.eth.account.sign_transaction(tx, identity.private_key)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.1)

    receipt = _call(w3, what, send)
    if receipt["status"] != 1:
        raise Refused(f"{what}: the transaction {receipt['transactionHash'].hex()} reverted")
    return receipt


_GAS_RESERVE = 400_000  # gas a registration may take, to say how much to send before estimating


def _short_of(what: str, sender: str, balance: int, cost: int, value: int) -> None:
    raise InsufficientFunds(
        f"{what}: account {sender} holds {format_eth(balance)} ETH and needs about "
        f"{format_eth(cost)} (stake {format_eth(value)} plus gas): send it "
        f"{format_eth(cost - balance)} ETH",
        needed=cost,
        balance=balance,
    )


@dataclass
class Registry:
    """A deployed hub registry on ``w3``. :meth:`check` (called by :meth:`open`) tells a
    registry from an empty address or another contract.

    ``skipped`` counts entries whose fields are out of the contract's own bounds (they cannot
    come from this contract; a node on a wrong chain or a lying RPC could send them).
    """

    w3: Web3
    address: str
    timeout: float = 60.0
    skipped: int = 0
    _contract: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self.address = Web3.to_checksum_address(self.address)
        except ValueError:
            raise ConfigError(f"--registry {self.address!r}: not an Ethereum address") from None
        self._contract = self.w3.eth.contract(address=self.address, abi=load_artifact()["abi"])

    @classmethod
    def open(cls, url_or_provider: Any, address: str, *, timeout: float = 10.0) -> Registry:
        """Connect and check that ``address`` holds a hub registry."""
        reg = cls(connect(url_or_provider, timeout=timeout), address)
        reg.check()
        return reg

    @property
    def chain(self) -> str:
        return _where(self.w3)

    def check(self) -> None:
        """Unavailable when the chain does not answer; ConfigError when no registry is there."""
        code = _call(self.w3, "read the registry", self.w3.eth.get_code, self.address)
        if not code:
            raise ConfigError(
                f"registry {self.address}: no contract at this address on {self.chain}"
            )
        try:
            magic = self._contract.functions.REGISTRY_MAGIC().call()
        except Exception as exc:
            err = _translated(self.w3, "read the registry", exc)
            if isinstance(err, Unavailable | Timeout):
                raise err from None
            magic = b""
        if bytes(magic) != bytes(MAGIC):
            raise ConfigError(
                f"registry {self.address}: the contract there is not a sonm hub registry"
            )

    # -- reads ---------------------------------------------------------------------------------

    def _view(self, what: str, name: str, *args: Any) -> Any:
        return _call(self.w3, what, getattr(self._contract.functions, name)(*args).call)

    def count(self) -> int:
        return int(self._view("count the registered hubs", "count"))

    def min_stake(self) -> int:
        return int(self._view("read the minimum stake", "min_stake"))

    def unlock_delay(self) -> int:
        return int(self._view("read the unlock delay", "unlock_delay"))

    def is_registered(self, node_id: str) -> bool:
        return bool(self._view("read a registration", "is_registered", node_id))

    def stake_of(self, node_id: str) -> int:
        return int(self._view("read a stake", "stake_of", node_id))

    def unlock_at(self, node_id: str) -> int:
        return int(self._view("read an unlock time", "unlock_at", node_id))

    def entry(self, node_id: str) -> RegistryEntry | None:
        """``node_id``'s entry while it is registered, else None."""
        if not self.is_registered(node_id):
            return None
        return _entry(self._view("read a registration", "hub", node_id))

    def pages(self, page: int = PAGE) -> Iterator[list[RegistryEntry]]:
        """Every registered hub, ``page`` at a time (entries out of bounds skipped, counted)."""
        total = self.count()
        for start in range(0, total, page):
            rows = self._view("list the registered hubs", "hubs", start, page)
            out = []
            for row in rows:
                entry = _entry(row)
                if entry is None:
                    self.skipped += 1
                else:
                    out.append(entry)
            yield out

    def entries(self) -> list[RegistryEntry]:
        """Every registered hub (one call per 100)."""
        return [e for page in self.pages() for e in page]

    # -- transactions (signed by the hub's node key) -------------------------------------------

    def register(
        self, identity: Identity, multiaddrs: list[str], grpc_endpoint: str, *, stake: int
    ) -> Any:
        """Register ``identity`` with ``stake`` wei; Refused naming the reason on a revert."""
        args = fit_endpoints(multiaddrs, grpc_endpoint)
        call = self._contract.functions.register(*args)
        return _transact(self.w3, identity, "register", call, stake, self.timeout)

    def update(
        self, identity: Identity, multiaddrs: list[str], grpc_endpoint: str, *, add: int = 0
    ) -> Any:
        """Change a registered hub's endpoints (and add ``add`` wei to its stake)."""
        call = self._contract.functions.update(*fit_endpoints(multiaddrs, grpc_endpoint))
        return _transact(self.w3, identity, "update", call, add, self.timeout)

    def deregister(self, identity: Identity) -> int:
        """Leave the registry; returns when the stake can be withdrawn (unix seconds)."""
        call = self._contract.functions.deregister()
        _transact(self.w3, identity, "deregister", call, 0, self.timeout)
        return self.unlock_at(identity.node_id)

    def withdraw(self, identity: Identity) -> int:
        """Take the stake back (after the unlock delay); returns the amount in wei."""
        amount = self.stake_of(identity.node_id)
        call = self._contract.functions.withdraw()
        _transact(self.w3, identity, "withdraw", call, 0, self.timeout)
        return amount

    def balance(self, node_id: str) -> int:
        return int(_call(self.w3, "read a balance", self.w3.eth.get_balance, node_id))


def fit_endpoints(multiaddrs: list[str], grpc_endpoint: str) -> tuple[list[str], str]:
    """The contract's bounds: at most 8 addresses of at most 256 bytes (longer ones left out,
    relayed ones kept first, since they are what others can dial behind NAT)."""
    ordered = sorted(multiaddrs, key=lambda a: "/p2p-circuit/" not in a)
    fit = [a for a in ordered if len(a.encode()) <= MAX_ADDR_LEN][:MAX_ADDRS]
    if multiaddrs and not fit:
        raise ConfigError("no overlay address short enough to register (256 bytes at most)")
    if len(grpc_endpoint.encode()) > MAX_ENDPOINT_LEN:
        raise ConfigError(f"client API endpoint too long to register: {grpc_endpoint[:60]}…")
    return fit, grpc_endpoint


def _entry(row: Any) -> RegistryEntry | None:
    try:
        node, stake, addrs, endpoint, at = row
        addrs = tuple(str(a) for a in addrs)
        if len(addrs) > MAX_ADDRS or any(len(a.encode()) > MAX_ADDR_LEN for a in addrs):
            return None
        return RegistryEntry(Web3.to_checksum_address(node), int(stake), addrs, str(endpoint),
                             int(at))  # fmt: skip
    except (TypeError, ValueError):
        return None
