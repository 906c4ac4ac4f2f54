"""Windowed rules (``window_s``): the mean of a window whose state stays bounded however long the
window and however fast the readings, exact but for the window's trailing edge, and snapshots of
windows from before buckets (raw values) restored into buckets."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import Measurement
from gateway.rules import RuleEngine
from gateway.rules.defaults import CODE_AF_SCREENING, LOINC_HEART_RATE
from gateway.rules.engine import _BUCKETS, _Window
from tests.rules.util import T0, engine, feed_series, meas

WEEK = 7 * 86400.0
DATA = Path(__file__).parent / "data"


def week_rule() -> dict[str, Any]:
    """The reviewer's rule: a heart-rate mean over the longest window a rule may have."""
    return {
        "id": "hr-week",
        "kind": "hr_week_high",
        "code": LOINC_HEART_RATE,
        "op": ">=",
        "threshold": 80,
        "severity": "low",
        "window_s": WEEK,
    }


def hr_every_5_s(n: int, start: float = T0) -> list[Measurement]:
    return [meas(LOINC_HEART_RATE, 80, start + 5 * i) for i in range(n)]


def roundtrip(e: RuleEngine, now: float) -> RuleEngine:
    data = json.loads(json.dumps(e.snapshot(), allow_nan=False))
    fresh = engine()
    fresh.restore(data, now)
    return fresh


def test_a_week_long_window_fed_every_5_s_for_a_week_keeps_a_small_snapshot() -> None:
    """Before buckets the window kept every value: after these 7 days its snapshot was 2.7 MB for this
    one rule (155 MB for 64 of them), every minute, on the event loop."""
    e = engine()
    e.update_rules("default", [week_rule()])
    readings = hr_every_5_s(round(WEEK / 5) + 1)  # simulated capture times, fed as fast as it goes
    (raised,) = feed_series(e, readings)
    # judged once the stream covers the whole week, on the exact mean
    assert (raised.state, raised.at) == ("raised", T0 + WEEK)
    assert raised.detail == {"mean": 80.0, "window_s": WEEK}
    snap = e.snapshot()
    (state,) = snap["states"]
    assert len(state["state"]["windows"][0]["buckets"]) <= _BUCKETS + 2
    assert len(json.dumps(state)) < 16 * 1024  # the rule's state: spec, holds and its window
    assert len(json.dumps(snap)) < 64 * 1024  # the whole snapshot of the engine
    assert roundtrip(e, T0 + WEEK).snapshot()["states"] == json.loads(json.dumps(snap["states"]))


def counted_by_the_docs(pushed: list[tuple[float, int]], span: float) -> tuple[list[int], list[int]]:
    """The values a window counts at the latest push, by the rule docs/rules.md states: every value of
    the last ``span`` seconds, plus the older ones in the bucket of the oldest of those. Also returns
    the values of the last ``span`` seconds alone."""
    t = pushed[-1][0]
    width = span / _BUCKETS
    young = [(ti, k) for ti, k in pushed if ti > t - span]
    first = young[0][0] // width
    return [k for ti, k in pushed if ti // width >= first], [k for _, k in young]


# values k / 8: exact in binary, so the reference mean is an exact fraction of integers (and fast)
EIGHTHS = 8
gaps = st.sampled_from([0.01, 0.2, 1.0, 1.0, 5.0, 29.0, 31.0, 61.0, 500.0, 4000.0])
runs = st.tuples(gaps, st.integers(-800, 2000), st.integers(1, 30))  # (gap, value, how many times)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1.0, 10.0, 60.0, 3600.0]), st.floats(0, 1000), st.lists(runs, min_size=1, max_size=40))
def test_a_windows_mean_is_exact_but_at_its_trailing_edge(span: float, offset: float, script: Any) -> None:
    win = _Window(span)
    pushed: list[tuple[float, int]] = []
    t = T0 + offset
    sparse = True  # so far, every reading further from the one before than a bucket is wide
    for gap, k, times in script:
        for _ in range(times):
            t += gap
            sparse = sparse and (not pushed or t - pushed[-1][0] > span / _BUCKETS)
            pushed.append((t, k))
            mean = win.push(t, k / EIGHTHS)
            assert len(win.buckets) <= _BUCKETS + 2  # bounded, whatever the span and the rate
            if t - pushed[0][0] < span:
                assert mean is None  # not a whole window yet
                continue
            counted, young = counted_by_the_docs(pushed, span)
            # the correctly rounded mean of exactly these values: no drift, whatever came and went
            assert mean == float(Fraction(sum(counted), EIGHTHS * len(counted)))
            # every value of the last span counts; older ones only from within one bucket width
            assert len(counted) >= len(young)
            assert pushed[-len(counted)][0] > t - span - span / _BUCKETS
            if sparse:
                assert counted == young  # readings further apart than a bucket: exactly the last span


def test_the_trailing_edge_counts_the_older_values_of_its_bucket_until_it_is_all_old() -> None:
    """The documented imprecision, pinned: a 120 s window has buckets of 1 s."""
    win = _Window(120.0)
    assert win.push(T0 + 0.1, 10.0) is None  # T0 is a multiple of 1 s: bucket [T0, T0 + 1)
    assert win.push(T0 + 0.9, 20.0) is None
    means = [win.push(T0 + 1.5 + i, 30.0) for i in range(121)]
    # at T0 + 120.5 the last 120 s hold the 20 and 120 x 30; the 10 (120.4 s old) shares their bucket
    assert means[-2] == (10 + 20 + 120 * 30) / 122
    # a second later that bucket's latest value is 120.6 s old: it leaves whole, and so does the
    # reading at T0 + 1.5, exactly 120 s old
    assert means[-1] == 30.0 and win.n == 120


def af(t: float, burden: float, label: str) -> Measurement:
    return meas(CODE_AF_SCREENING, burden, t, quality=0.8, extra={"label": label, "burden": burden})


def test_a_snapshot_with_raw_window_values_from_before_buckets_restores_into_buckets() -> None:
    """tests/rules/data/snapshot_raw_window.json was written by the engine before buckets (windows as
    ``{"items": [[t, v], ...], "since": t}``) after these readings: 90 min of sinus rhythm, then 3 min
    of AF. A gateway upgraded in the field carries on with that window as if it had never stopped."""
    before = [af(T0 + 60 * i, 0.0, "sinus") for i in range(90)] + [af(T0 + 5400 + 60 * i, 0.6, "af") for i in range(3)]
    after = [af(T0 + 5400 + 60 * i, 0.6, "af") for i in range(3, 60)]
    old = json.loads((DATA / "snapshot_raw_window.json").read_text())
    assert "items" in old["states"][0]["state"]["windows"][0]  # the old form, as it was written
    upgraded = engine()
    upgraded.restore(old, before[-1].captured_at)
    live = engine()
    assert feed_series(live, before) == []
    # readings a minute apart, buckets of 30 s: the migrated window is the live one exactly
    assert upgraded.snapshot()["states"] == live.snapshot()["states"]
    raised = feed_series(upgraded, after)
    assert [(ev.kind, ev.state) for ev in raised] == [("af_followup", "raised")]
    assert [ev.to_dict() for ev in raised] == [ev.to_dict() for ev in feed_series(live, after)]


def test_a_fat_raw_window_of_an_old_snapshot_is_summed_into_buckets() -> None:
    """The reviewer's case as an old gateway saved it (a day of a reading every 5 s, 17 280 raw values
    in one window): restored into buckets, the same state as a window that always had them."""
    readings = hr_every_5_s(17280)
    live = engine()
    live.update_rules("default", [week_rule()])
    assert feed_series(live, readings) == []
    snap = json.loads(json.dumps(live.snapshot()))
    (state,) = snap["states"]
    state["state"]["windows"] = [{"items": [[m.captured_at, m.value] for m in readings], "since": T0}]
    assert len(json.dumps(snap)) > 256 * 1024  # the old form: 22 bytes a value
    upgraded = engine()
    upgraded.restore(snap, readings[-1].captured_at)
    again = upgraded.snapshot()
    assert again["states"] == live.snapshot()["states"]
    assert len(json.dumps(again)) < 64 * 1024
    # and it is judged on: the week completes on the live readings that follow
    rest = hr_every_5_s(round(WEEK / 5) + 1 - 17280, start=T0 + 5 * 17280)
    (raised,) = feed_series(upgraded, rest)
    assert (raised.at, raised.detail["mean"]) == (T0 + WEEK, 80.0)


@pytest.mark.parametrize(
    "window",
    [
        {"buckets": [[1 << 70, 1, T0 + 10], [1 << 70, 1, T0 + 5]], "since": T0},  # out of time order
        {"buckets": [[0, 0, T0]], "since": T0},  # an empty bucket
        {"buckets": [[1 << 70, 1, 10**400]], "since": T0},  # a time beyond a float: OverflowError
        {"buckets": [[1.5, 1, T0]], "since": T0},  # a sum that is not an integer
        {"items": [[T0, 10**400]], "since": T0},
        {"items": [[T0, 70.0]], "since": 10**400},
        {"since": T0},
    ],
)
def test_a_damaged_window_leaves_its_rule_state_out_and_the_rest_restored(
    window: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    e = engine()
    e.update_rules("default", [week_rule(), {"id": "hr-high", "base": "hr-high"}])
    feed_series(e, hr_every_5_s(10))
    e.open_external("sos-sos-1-x", "sos", "critical", "sos-1", T0 + 1, T0 + 1)
    data = json.loads(json.dumps(e.snapshot()))
    week = next(s for s in data["states"] if s["rule"] == "hr-week")
    week["state"]["windows"] = [window]
    fresh = engine()
    with caplog.at_level(logging.WARNING, logger="gateway.rules.engine"):
        fresh.restore(data, T0 + 100)
    assert [s["rule"] for s in fresh.snapshot()["states"]] == ["hr-high"]
    assert [a.alert_id for a in fresh.open_alerts()] == ["sos-sos-1-x"]
    assert "a rule's state in the saved state is damaged" in caplog.text
