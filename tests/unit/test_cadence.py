"""How often a hub announces itself and how long each announcement lives (discovery/cadence.py),
and ``sonmhub --announce-interval``."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cli._common import _MAX_ANNOUNCE_INTERVAL, AnnounceInterval
from sonm_p2p.discovery.announcement import DEFAULT_TTL, MAX_TTL
from sonm_p2p.discovery.cadence import (
    AUTO_FLOOR,
    MAX_INTERVAL,
    HubCountPeak,
    announce_ttl,
    auto_interval,
    interval_for,
)


@pytest.mark.parametrize(
    ("hubs", "want"),
    [(0, 3.0), (1, 3.0), (10, 3.0), (11, 3.3), (20, 6.0), (100, 30.0), (300, 90.0), (10**6, 90.0)],
)
def test_auto_interval_is_3s_for_a_small_overlay_then_grows_with_it(hubs: int, want: float):
    assert auto_interval(hubs) == pytest.approx(want)


def test_auto_keeps_the_overlay_wide_announcement_rate_flat_as_hubs_join():
    # Each hub takes in hubs / interval announcements a second: bounded however many hubs.
    rates = [hubs / auto_interval(hubs) for hubs in range(1, 301)]
    assert max(rates) == pytest.approx(1 / 0.3)
    assert rates[10 - 1] == pytest.approx(10 / AUTO_FLOOR)  # up to 10 hubs: 3 s, as before


def test_a_fixed_interval_wins_over_auto_but_not_past_what_a_ttl_allows():
    assert interval_for(15.0, hubs=200) == 15.0
    assert interval_for(None, hubs=200) == auto_interval(200)
    assert interval_for(3600.0, hubs=2) == MAX_INTERVAL


@pytest.mark.parametrize(
    ("interval", "ttl"), [(1.0, DEFAULT_TTL), (3.0, DEFAULT_TTL), (15.0, 50.0), (30.0, 100.0)]
)
def test_an_announcement_outlives_two_lost_ones(interval: float, ttl: float):
    assert announce_ttl(interval) == pytest.approx(ttl)
    assert announce_ttl(interval) > 3 * interval


def test_the_longest_interval_has_a_ttl_receivers_accept():
    assert announce_ttl(MAX_INTERVAL) == pytest.approx(MAX_TTL)
    assert announce_ttl(10 * MAX_INTERVAL) == MAX_TTL
    assert _MAX_ANNOUNCE_INTERVAL == MAX_INTERVAL  # the CLI's copy of it


@pytest.mark.parametrize(
    ("text", "want"), [("auto", None), ("30s", 30.0), ("1m", 60.0), ("90", 90.0), ("1s", 1.0)]
)
def test_announce_interval_flag_reads_auto_or_a_duration(text: str, want: float | None):
    assert AnnounceInterval().convert(text, None, None) == want


@pytest.mark.parametrize("text", ["0.5s", "2m", "0", "soon"])
def test_announce_interval_flag_refuses_what_a_ttl_cannot_cover(text: str):
    with pytest.raises(click.BadParameter):
        AnnounceInterval().convert(text, None, None)


def test_sonmhub_help_documents_announce_interval():
    from cli.sonmhub import main

    out = CliRunner().invoke(main, ["--help"]).output
    assert "--announce-interval" in out and "auto" in out


def test_hub_count_peak_does_not_fall_while_hubs_fall_behind_only_after_the_window():
    peak = HubCountPeak(window=600.0)
    assert peak.note(5, 0.0) == 5
    assert peak.note(100, 30.0) == 100
    # Announcements expiring on a loaded hub: it still counts 100, so it does not speed up.
    assert peak.note(18, 60.0) == 100
    assert peak.note(40, 629.0) == 100
    assert peak.note(40, 631.0) == 40  # 100 was noted more than 10 minutes ago
    assert auto_interval(peak.note(100, 632.0)) == pytest.approx(30.0)
