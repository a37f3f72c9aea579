# pragma version ==0.4.3
# pragma evm-version cancun
"""
@title sonm-p2p hub registry
@notice Hubs register from their node key (msg.sender is the hub's node ID) with a stake of at
        least `min_stake`, announce where they are (overlay multiaddrs and the client API's
        host:port), and get the stake back `unlock_delay` seconds after they deregister.
@dev    The EVM version is pinned to cancun: py-evm (the unit tests) and anvil (the
        integration tests, the devnet) both run it, and so does any current Ethereum node.
        The compiled artifact is sonm_p2p/chain/HubRegistry.json (make contract; make
        check-contract fails when it drifts from this file).
"""

MAX_ADDRS: constant(uint256) = 8
MAX_ADDR_LEN: constant(uint256) = 256
MAX_ENDPOINT_LEN: constant(uint256) = 256
MAX_PAGE: constant(uint256) = 100
MAX_HUBS: constant(uint256) = 1000000

# What a client checks to tell a hub registry from any other contract.
REGISTRY_MAGIC: public(constant(bytes32)) = keccak256("sonm.p2p.HubRegistry.v1")


struct Hub:
    node: address
    stake: uint256
    multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS]
    grpc_endpoint: String[MAX_ENDPOINT_LEN]
    registered_at: uint256


event Registered:
    node: indexed(address)
    stake: uint256
    multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS]
    grpc_endpoint: String[MAX_ENDPOINT_LEN]


event Updated:
    node: indexed(address)
    stake: uint256
    multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS]
    grpc_endpoint: String[MAX_ENDPOINT_LEN]


event Deregistered:
    node: indexed(address)
    unlock_at: uint256


event Withdrawn:
    node: indexed(address)
    amount: uint256


min_stake: public(uint256)
unlock_delay: public(uint256)

# Every hub that ever staked and has not withdrawn; `_listed` tells which are registered now.
_hubs: HashMap[address, Hub]
# Registered hubs in registration order (the last one fills a gap left by one deregistering).
_listed: DynArray[address, MAX_HUBS]
_index: HashMap[address, uint256]  # position in _listed + 1; 0: not registered
unlock_at: public(HashMap[address, uint256])  # when a deregistered hub may withdraw


@deploy
def __init__(min_stake: uint256, unlock_delay: uint256):
    self.min_stake = min_stake
    self.unlock_delay = unlock_delay


@internal
def _check_entry(multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS]):
    assert len(multiaddrs) > 0, "no multiaddrs"


@external
@payable
def register(
    multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS], grpc_endpoint: String[MAX_ENDPOINT_LEN]
):
    """
    @notice Register the sender as a hub; the value sent (with any stake left from before)
            must be at least `min_stake`.
    """
    assert self._index[msg.sender] == 0, "already registered"
    self._check_entry(multiaddrs)
    stake: uint256 = self._hubs[msg.sender].stake + msg.value
    assert stake >= self.min_stake, "stake below the minimum"
    self._hubs[msg.sender] = Hub(
        node=msg.sender,
        stake=stake,
        multiaddrs=multiaddrs,
        grpc_endpoint=grpc_endpoint,
        registered_at=block.timestamp,
    )
    self.unlock_at[msg.sender] = 0
    self._listed.append(msg.sender)
    self._index[msg.sender] = len(self._listed)
    log Registered(node=msg.sender, stake=stake, multiaddrs=multiaddrs, grpc_endpoint=grpc_endpoint)


@external
@payable
def update(
    multiaddrs: DynArray[String[MAX_ADDR_LEN], MAX_ADDRS], grpc_endpoint: String[MAX_ENDPOINT_LEN]
):
    """
    @notice Change a registered hub's endpoints; any value sent adds to its stake.
    """
    assert self._index[msg.sender] != 0, "not registered"
    self._check_entry(multiaddrs)
    stake: uint256 = self._hubs[msg.sender].stake + msg.value
    self._hubs[msg.sender].stake = stake
    self._hubs[msg.sender].multiaddrs = multiaddrs
    self._hubs[msg.sender].grpc_endpoint = grpc_endpoint
    log Updated(node=msg.sender, stake=stake, multiaddrs=multiaddrs, grpc_endpoint=grpc_endpoint)


@external
def deregister():
    """
    @notice Leave the registry; the stake can be withdrawn `unlock_delay` seconds from now.
    """
    i: uint256 = self._index[msg.sender]
    assert i != 0, "not registered"
    last: address = self._listed.pop()
    if last != msg.sender:
        self._listed[i - 1] = last
        self._index[last] = i
    self._index[msg.sender] = 0
    when: uint256 = block.timestamp + self.unlock_delay
    self.unlock_at[msg.sender] = when
    log Deregistered(node=msg.sender, unlock_at=when)


@external
@nonreentrant
def withdraw():
    """
    @notice Take the stake back, once deregistered and the unlock delay is over.
    """
    assert self._index[msg.sender] == 0, "registered: deregister first"
    amount: uint256 = self._hubs[msg.sender].stake
    assert amount > 0, "no stake"
    assert block.timestamp >= self.unlock_at[msg.sender], "stake still locked"
    self._hubs[msg.sender] = empty(Hub)
    self.unlock_at[msg.sender] = 0
    send(msg.sender, amount)
    log Withdrawn(node=msg.sender, amount=amount)


@view
@external
def count() -> uint256:
    """
    @notice How many hubs are registered.
    """
    return len(self._listed)


@view
@external
def hubs(start: uint256, limit: uint256) -> DynArray[Hub, MAX_PAGE]:
    """
    @notice Registered hubs from position `start`, at most `limit` (capped at 100) of them.
    """
    out: DynArray[Hub, MAX_PAGE] = []
    n: uint256 = len(self._listed)
    for k: uint256 in range(MAX_PAGE):
        if k >= limit or start + k >= n:
            break
        out.append(self._hubs[self._listed[start + k]])
    return out


@view
@external
def is_registered(node: address) -> bool:
    return self._index[node] != 0


@view
@external
def stake_of(node: address) -> uint256:
    """
    @notice The stake a node holds here (registered, or deregistered and not yet withdrawn).
    """
    return self._hubs[node].stake


@view
@external
def hub(node: address) -> Hub:
    """
    @notice A node's entry (all zero when it never registered or has withdrawn).
    """
    return self._hubs[node]
