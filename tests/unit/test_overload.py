"""The saturation signal behind load shedding."""

from __future__ import annotations

import asyncio

import pytest

from app.api.overload import LagGauge, LoadShedder


def test_a_sustained_lag_past_the_threshold_saturates_for_the_hold_time() -> None:
    gauge = LagGauge(threshold_s=0.05, hold_s=1.0)
    for tick in range(3):
        gauge.observe(0.2, now=tick * 0.025)
    assert gauge.saturated(now=0.05)
    assert gauge.saturated(now=1.04), "held for a second after the last lagging tick"
    assert not gauge.saturated(now=1.06)


def test_one_short_stall_does_not() -> None:
    gauge = LagGauge(threshold_s=0.05)
    gauge.observe(0.2, now=0.0)
    assert gauge.lag_s < 0.05
    assert not gauge.saturated(now=0.0)


def test_the_hold_restarts_while_the_lag_stays_high() -> None:
    gauge = LagGauge(threshold_s=0.05, hold_s=1.0)
    now = 0.0
    for _ in range(200):
        gauge.observe(0.2, now)
        now += 0.025
    assert gauge.saturated(now + 0.9)
    while gauge.lag_s > 0.05:
        gauge.observe(0.0, now)
        now += 0.025
    assert gauge.saturated(now), "still within the hold"
    assert not gauge.saturated(now + 1.0)


def test_a_threshold_of_zero_never_sheds() -> None:
    gauge = LagGauge(threshold_s=0.0)
    for tick in range(10):
        gauge.observe(5.0, now=tick)
    assert gauge.lag_s > 1
    assert not gauge.saturated(now=10)


def test_a_timer_firing_early_counts_as_no_lag() -> None:
    gauge = LagGauge(threshold_s=0.05)
    gauge.observe(-0.001, now=0.0)
    assert gauge.lag_s == 0.0


@pytest.mark.anyio
async def test_a_writer_falling_behind_saturates_even_when_the_loop_keeps_time() -> None:
    shedder = LoadShedder(0.05, write_delay_s=lambda: 0.5, tick_s=0.001)
    await shedder.start()
    try:
        for _ in range(2_000):
            if shedder.saturated:
                break
            await asyncio.sleep(0.001)
        assert shedder.saturated
    finally:
        await shedder.stop()
