"""Which addresses a DCUtR hole punch goes to: what the peer sent now, not what it used to be."""

from __future__ import annotations

from sonm_p2p.transport._dcutr import _SentAddrs, choose_punch_targets

SOURCES = {4: ("10.0.0.5", 4001), 6: ("2001:db8::5", 4001)}
RELAY = ("198.51.100.1", 4001)
PEER = "16Uiu2HAmPeer"


def targets(sent, known=(), *, superseded=(), sources=SOURCES):
    chosen = choose_punch_targets(sent, known, sources, avoid={RELAY}, superseded=superseded)
    return [addr for addr, _ in chosen]


def test_what_the_peer_sent_now_wins_over_its_old_mapping_in_the_peerstore():
    sent = ["/ip4/203.0.113.7/tcp/4002"]
    known = ["/ip4/203.0.113.7/tcp/4002", "/ip4/192.0.2.9/tcp/4002", "/ip4/203.0.113.7/tcp/9999"]
    assert targets(sent, known) == ["/ip4/203.0.113.7/tcp/4002"]


def test_each_target_has_the_listen_source_of_its_ip_version():
    sent = ["/ip6/2001:db8::7/tcp/4002", "/ip4/203.0.113.7/tcp/4002/p2p/" + PEER]
    chosen = choose_punch_targets(sent, [], SOURCES)
    assert chosen == [
        ("/ip6/2001:db8::7/tcp/4002", ("2001:db8::5", 4001)),
        ("/ip4/203.0.113.7/tcp/4002", ("10.0.0.5", 4001)),
    ]
    assert targets(sent, sources={4: SOURCES[4]}) == ["/ip4/203.0.113.7/tcp/4002"]


def test_unusable_and_relay_addresses_are_left_out_and_duplicates_once():
    sent = [
        "/ip4/0.0.0.0/tcp/4002",  # a wildcard listener, as identify reports it
        "/ip4/169.254.1.1/tcp/4002",  # link-local
        "/ip4/127.0.0.1/tcp/4002",  # loopback, and our source is not
        "/ip4/203.0.113.7/udp/4002/quic",  # not TCP
        f"/ip4/{RELAY[0]}/tcp/{RELAY[1]}",  # the relay observed itself
        f"/ip4/{RELAY[0]}/tcp/{RELAY[1]}/p2p/16Uiu2HAmRelay/p2p-circuit/p2p/{PEER}",
        "/ip4/203.0.113.7/tcp/4002",
        "/ip4/203.0.113.7/tcp/4002/p2p/" + PEER,
        "/ip4/10.1.2.3/tcp/4002",  # a site address: worth a try (one LAN)
    ]
    assert targets(sent) == ["/ip4/203.0.113.7/tcp/4002", "/ip4/10.1.2.3/tcp/4002"]


def test_loopback_only_from_a_loopback_listener():
    sent = ["/ip4/127.0.0.1/tcp/4002"]
    assert targets(sent, sources={4: ("127.0.0.1", 4001)}) == ["/ip4/127.0.0.1/tcp/4002"]


def test_the_peerstore_is_used_only_when_nothing_sent_is_usable():
    known = ["/ip4/203.0.113.7/tcp/4002", f"/ip4/{RELAY[0]}/tcp/{RELAY[1]}"]
    assert targets([], known) == ["/ip4/203.0.113.7/tcp/4002"]
    assert targets(["/ip4/0.0.0.0/tcp/4002"], known) == ["/ip4/203.0.113.7/tcp/4002"]
    assert targets([], []) == []


def test_addresses_the_peer_stopped_sending_are_never_punched():
    sent_before = ["/ip4/192.0.2.9/tcp/4002"]  # the client's NAT mapping last time
    sent_now = ["/ip4/0.0.0.0/tcp/4002"]  # nothing usable this time
    history = _SentAddrs()
    assert history.exchange(PEER, sent_before) == set()
    stale = history.exchange(PEER, sent_now)
    assert stale == {("192.0.2.9", 4002)}
    known = ["/ip4/192.0.2.9/tcp/4002", "/ip4/10.1.2.3/tcp/4002"]
    assert targets(sent_now, known, superseded=stale) == ["/ip4/10.1.2.3/tcp/4002"]


def test_a_peer_that_comes_back_to_an_old_address_is_current_again():
    history = _SentAddrs()
    history.exchange(PEER, ["/ip4/192.0.2.9/tcp/4002"])
    assert history.exchange(PEER, ["/ip4/203.0.113.7/tcp/4002"]) == {("192.0.2.9", 4002)}
    assert history.exchange(PEER, ["/ip4/192.0.2.9/tcp/4002"]) == {("203.0.113.7", 4002)}
    assert history.exchange("16Uiu2HAmOther", ["/ip4/192.0.2.9/tcp/4002"]) == set()


def test_the_history_forgets_the_oldest_peers_beyond_its_bound():
    history = _SentAddrs(max_peers=2)
    for peer in ("a", "b", "c"):
        history.exchange(peer, ["/ip4/192.0.2.9/tcp/4002"])
    assert history.exchange("a", []) == set()  # forgotten: nothing known to be stale
    assert history.exchange("c", []) == {("192.0.2.9", 4002)}
