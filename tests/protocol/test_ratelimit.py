"""Tests for flood control in :mod:`enlace.protocol.ratelimit`.

Nothing sleeps: every call gets its clock reading as an argument, so whole
minutes of traffic run in microseconds. :class:`TokenBucket` must let a full
burst through, then exactly ``rate`` events a second; a refusal spends nothing;
:meth:`~TokenBucket.retry_after` must be exact (waiting that long succeeds,
waiting less does not); clocks that stall, run backwards or read NaN must not
mint tokens. Property tests with hypothesis check the defining bound: in any
interval of length ``t``, at most ``burst + rate * t`` events pass, and a
sender that keeps to the rate is never refused. :class:`FloodGuard` must
forgive a paste, refuse a fast typist politely and disconnect a sustained
flooder within its window, and stay disconnected.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enlace.protocol import ratelimit
from enlace.protocol.ratelimit import (
    FLOOD_BURST,
    FLOOD_MAX_REFUSALS,
    FLOOD_RATE,
    FLOOD_WINDOW,
    FloodGuard,
    TokenBucket,
    Verdict,
)

T0 = 1000.0  # monotonic clocks start anywhere; not at zero, to catch "now - 0" bugs


def takes(bucket: TokenBucket, times: list[float]) -> list[bool]:
    return [bucket.take(now) for now in times]


def checks(guard: FloodGuard, times: list[float]) -> list[Verdict]:
    return [guard.check(now) for now in times]


# -------------------------------------------------------------------------------- token bucket


def test_defaults_are_burst_5_then_1_per_second():
    assert (FLOOD_BURST, FLOOD_RATE) == (5, 1.0)
    bucket = TokenBucket()
    assert (bucket.burst, bucket.rate) == (5, 1.0)
    assert takes(bucket, [T0] * 6) == [True] * 5 + [False]
    assert bucket.take(T0 + 0.999) is False
    assert bucket.take(T0 + 1.0) is True
    assert bucket.take(T0 + 1.5) is False
    assert bucket.take(T0 + 2.0) is True


def test_the_bucket_starts_full_whatever_the_first_reading():
    for start in (0.0, -5.0, 1e9):
        bucket = TokenBucket(burst=3, rate=0.5)
        assert bucket.tokens(start) == 3.0
        assert takes(bucket, [start] * 4) == [True, True, True, False]


def test_a_pause_refills_but_never_past_the_burst():
    bucket = TokenBucket(burst=5, rate=1.0)
    takes(bucket, [T0] * 5)
    assert bucket.tokens(T0 + 2.5) == pytest.approx(2.5)
    assert bucket.tokens(T0 + 3600) == 5.0
    assert takes(bucket, [T0 + 3600] * 6) == [True] * 5 + [False]


def test_a_refusal_spends_nothing():
    bucket = TokenBucket(burst=1, rate=1.0)
    assert bucket.take(T0) is True
    # Hammering while empty does not push the next token further away.
    assert takes(bucket, [T0 + i / 10 for i in range(1, 10)]) == [False] * 9
    assert bucket.take(T0 + 1.0) is True


def test_retry_after_is_exact():
    bucket = TokenBucket(burst=2, rate=4.0)  # a token every 0.25 s
    assert bucket.retry_after(T0) == 0.0
    takes(bucket, [T0, T0])
    assert bucket.retry_after(T0) == pytest.approx(0.25)
    assert bucket.retry_after(T0 + 0.1) == pytest.approx(0.15)
    wait = bucket.retry_after(T0 + 0.1)
    assert bucket.take(T0 + 0.1 + wait * 0.99) is False
    assert bucket.take(T0 + 0.1 + wait) is True
    assert bucket.retry_after(T0 + 10) == 0.0


def test_retry_after_does_not_change_the_bucket():
    bucket = TokenBucket(burst=1, rate=1.0)
    bucket.take(T0)
    for _ in range(3):
        assert bucket.retry_after(T0 + 0.5) == pytest.approx(0.5)
    assert bucket.tokens(T0 + 0.5) == pytest.approx(0.5)


def test_fractional_rates_accumulate_without_losing_a_token_to_rounding():
    # 0.1 added ten times is 0.9999999999999999 in binary floating point.
    bucket = TokenBucket(burst=1, rate=0.1)
    assert bucket.take(T0) is True
    for step in range(1, 10):
        assert bucket.take(T0 + step) is False
    assert bucket.take(T0 + 10) is True


def test_a_clock_that_runs_backwards_mints_no_tokens():
    bucket = TokenBucket(burst=2, rate=1.0)
    takes(bucket, [T0, T0])
    assert bucket.take(T0 - 100) is False
    assert bucket.take(T0 + 0.5) is False  # still measured from T0, not from T0 - 100
    assert bucket.take(T0 + 1.0) is True


def test_a_nan_reading_is_ignored():
    bucket = TokenBucket(burst=1, rate=1.0)
    assert bucket.take(math.nan) is True  # the bucket starts full
    assert bucket.take(math.nan) is False
    assert bucket.take(T0) is True
    assert bucket.take(math.nan) is False
    assert bucket.take(T0 + 1) is True


@pytest.mark.parametrize(
    "options",
    [
        {"burst": 0},
        {"burst": -1},
        {"burst": 2.5},
        {"burst": True},
        {"rate": 0},
        {"rate": -1.0},
        {"rate": math.inf},
        {"rate": math.nan},
        {"rate": "1"},
    ],
)
def test_bad_parameters_are_refused(options):
    with pytest.raises(ValueError, match="must be"):
        TokenBucket(**options)


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        TokenBucket(5, 1.0)
    with pytest.raises(TypeError):
        FloodGuard(5)


@settings(max_examples=300)
@given(
    burst=st.integers(1, 10),
    rate=st.floats(0.05, 20),
    gaps=st.lists(st.floats(0, 3), min_size=1, max_size=200),
)
def test_no_interval_lets_more_than_burst_plus_rate_times_its_length_through(burst, rate, gaps):
    bucket = TokenBucket(burst=burst, rate=rate)
    now, allowed = T0, []
    for gap in gaps:
        now += gap
        if bucket.take(now):
            allowed.append(now)
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            passed = j - i + 1
            assert passed <= burst + rate * (allowed[j] - start) + 1e-6


@settings(max_examples=200)
@given(burst=st.integers(1, 10), rate=st.floats(0.05, 20), count=st.integers(1, 300))
def test_a_sender_that_keeps_to_the_rate_is_never_refused(burst, rate, count):
    bucket = TokenBucket(burst=burst, rate=rate)
    assert all(bucket.take(T0 + i / rate) for i in range(count))


@settings(max_examples=200)
@given(
    burst=st.integers(1, 10),
    rate=st.floats(0.05, 20),
    gaps=st.lists(st.floats(0, 2), max_size=50),
)
def test_waiting_retry_after_always_succeeds(burst, rate, gaps):
    bucket = TokenBucket(burst=burst, rate=rate)
    now = T0
    for gap in gaps:
        now += gap
        bucket.take(now)
    wait = bucket.retry_after(now)
    assert wait >= 0.0
    assert bucket.take(now + wait) is True


# --------------------------------------------------------------------------------- flood guard


def test_guard_defaults_are_documented():
    guard = FloodGuard()
    assert (guard.bucket.burst, guard.bucket.rate) == (FLOOD_BURST, FLOOD_RATE)
    assert (guard.max_refusals, guard.window) == (FLOOD_MAX_REFUSALS, FLOOD_WINDOW) == (20, 10.0)


def test_a_person_typing_is_always_allowed():
    guard = FloodGuard()
    # A few quick lines, a pause, a few more: for ten minutes.
    times = [T0 + minute * 60 + offset for minute in range(10) for offset in (0, 0.5, 1, 1.2, 30)]
    assert set(checks(guard, times)) == {Verdict.ALLOW}


def test_a_fast_typist_is_refused_and_told_when_to_send_again():
    guard = FloodGuard()
    assert checks(guard, [T0 + i * 0.1 for i in range(5)]) == [Verdict.ALLOW] * 5
    assert guard.check(T0 + 0.5) is Verdict.REFUSE
    # Five tokens spent by 0.4 s, refilling since: 0.5 of a token at 0.5 s.
    assert guard.retry_after(T0 + 0.5) == pytest.approx(0.5)
    assert guard.refusal(T0 + 0.5) == "slow down: next message in 0.5 s"
    assert guard.check(T0 + 1.0) is Verdict.ALLOW


def test_the_wait_in_the_refusal_is_rounded_up_to_a_tenth():
    guard = FloodGuard(burst=1, rate=1.0)
    guard.check(T0)
    assert guard.refusal(T0 + 0.25) == "slow down: next message in 0.8 s"  # 0.75 s
    assert guard.refusal(T0 + 0.3) == "slow down: next message in 0.7 s"  # 0.7 s exactly
    assert guard.refusal(T0 + 0.9999) == "slow down: next message in 0.1 s"
    # Waiting as told always succeeds.
    assert guard.check(T0 + 0.25 + 0.8) is Verdict.ALLOW


def test_a_paste_is_forgiven():
    guard = FloodGuard()
    verdicts = checks(guard, [T0] * 25)  # 5 allowed, 20 refused: not more than 20
    assert verdicts == [Verdict.ALLOW] * 5 + [Verdict.REFUSE] * 20
    assert not guard.flooded
    assert guard.check(T0 + 1) is Verdict.ALLOW


def test_a_bigger_paste_is_a_flood():
    guard = FloodGuard()
    verdicts = checks(guard, [T0] * 26)
    assert verdicts[-1] is Verdict.DISCONNECT
    assert verdicts[:-1] == [Verdict.ALLOW] * 5 + [Verdict.REFUSE] * 20


def test_a_sustained_flooder_is_disconnected_within_the_window():
    guard = FloodGuard()
    # Four messages a second: one allowed, three refused, every second.
    times = [T0 + i / 4 for i in range(400)]
    verdicts = checks(guard, times)
    first = verdicts.index(Verdict.DISCONNECT)
    assert times[first] - T0 < FLOOD_WINDOW
    assert guard.flooded
    assert guard.reason() == (
        "flooding: more than 20 messages refused within 10 s; you are disconnected"
    )


def test_a_script_in_a_loop_is_disconnected_at_once():
    guard = FloodGuard()
    verdicts = checks(guard, [T0 + i / 1000 for i in range(1000)])
    assert verdicts.index(Verdict.DISCONNECT) == FLOOD_BURST + FLOOD_MAX_REFUSALS


def test_excess_below_the_threshold_is_only_refused():
    # rate + max_refusals / window = 3 a second; at 2.5 a second the sender is held
    # to 1 a second for as long as it goes on, and never disconnected.
    guard = FloodGuard()
    verdicts = checks(guard, [T0 + i / 2.5 for i in range(2500)])
    assert Verdict.DISCONNECT not in verdicts
    assert verdicts.count(Verdict.ALLOW) == pytest.approx(1000, abs=6)


def test_a_disconnected_flooder_stays_disconnected():
    guard = FloodGuard(max_refusals=0)
    assert checks(guard, [T0] * 5) == [Verdict.ALLOW] * 5
    assert guard.check(T0) is Verdict.DISCONNECT
    # Even after a long pause: the connection is being closed, nothing slips through.
    assert guard.check(T0 + 3600) is Verdict.DISCONNECT


def test_refusals_older_than_the_window_are_forgotten():
    guard = FloodGuard(burst=1, rate=1.0, max_refusals=3, window=10.0)
    # Every 4 s: one allowed message, then 3 refused ones right after it.
    for second in range(0, 60, 4):
        start = T0 + second
        assert guard.check(start) is Verdict.ALLOW
        verdicts = checks(guard, [start + 0.1, start + 0.2, start + 0.3])
        if second == 0:
            assert verdicts == [Verdict.REFUSE] * 3
        else:
            # The 3 refusals of 4 s ago are still in the 10 s window: 4th refusal is too many.
            assert verdicts[0] is Verdict.DISCONNECT
            return
    pytest.fail("never disconnected")


def test_a_window_boundary_refusal_exactly_window_seconds_later_is_not_counted():
    guard = FloodGuard(burst=1, rate=0.01, max_refusals=1, window=10.0)
    guard.check(T0)
    assert guard.check(T0) is Verdict.REFUSE
    assert guard.check(T0 + 10.0) is Verdict.REFUSE  # 10 s apart: not within 10 s
    assert guard.check(T0 + 10.5) is Verdict.DISCONNECT  # 0.5 s after the previous one


def test_max_refusals_none_only_ever_refuses():
    guard = FloodGuard(max_refusals=None)
    verdicts = checks(guard, [T0 + i / 1000 for i in range(10_000)])
    assert Verdict.DISCONNECT not in verdicts
    assert verdicts.count(Verdict.ALLOW) == 5 + 9  # the burst, then one a second for ~10 s


@pytest.mark.parametrize(
    "options",
    [
        {"max_refusals": -1},
        {"max_refusals": 1.5},
        {"max_refusals": True},
        {"window": 0},
        {"window": -1.0},
        {"window": math.inf},
        {"burst": 0},
        {"rate": 0},
    ],
)
def test_bad_guard_parameters_are_refused(options):
    with pytest.raises(ValueError, match="must be"):
        FloodGuard(**options)


@settings(max_examples=200)
@given(
    max_refusals=st.integers(0, 30),
    window=st.floats(0.5, 60),
    gaps=st.lists(st.floats(0, 2), max_size=200),
)
def test_disconnect_happens_exactly_when_too_many_refusals_fall_in_the_window(
    max_refusals, window, gaps
):
    guard = FloodGuard(burst=3, rate=1.0, max_refusals=max_refusals, window=window)
    now, refused = T0, []
    for gap in gaps:
        now += gap
        verdict = guard.check(now)
        if verdict is Verdict.DISCONNECT:
            recent = [t for t in [*refused, now] if now - t < window]
            assert len(recent) > max_refusals
            assert guard.check(now + 1000) is Verdict.DISCONNECT
            return
        if verdict is Verdict.REFUSE:
            refused.append(now)
            assert len([t for t in refused if now - t < window]) <= max_refusals
    assert not guard.flooded


# --------------------------------------------------------------------------------- sans-I/O


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


MODULES = [ratelimit]


@pytest.mark.parametrize("module", MODULES)
def test_the_module_does_no_io(module):
    # protocol/ is sans-I/O: no sockets, event loops, threads or clocks.
    assert not imported_modules(Path(module.__file__)) & {"socket", "asyncio", "threading", "time"}
