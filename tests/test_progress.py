"""Progress lines: the ETA arithmetic, a line every N seconds of a (fake) clock rather than every N percent,
the closing line, and the interval setting."""

from __future__ import annotations

import logging

import pytest

from bertclf.errors import ConfigError
from bertclf.progress import EVERY_ENV, Progress, eta_seconds, every_seconds, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bertclf.test_progress"]


LOG = logging.getLogger("bertclf.test_progress")


def test_eta_is_the_remaining_work_at_the_average_rate():
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)  # 2.5/s, 75 left
    assert eta_seconds(100, 100, 10.0) == 0.0
    assert eta_seconds(120, 100, 10.0) == 0.0  # an estimated total that was overshot: never negative
    assert eta_seconds(0, 100, 10.0) is None  # no rate yet
    assert eta_seconds(5, None, 10.0) is None  # no total


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (44.6, "45s"), (185, "3m05s"), (3600, "1h00m"),
                                          (7620, "2h07m"), (-3, "0s")])
def test_durations_read_at_a_glance(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_every_n_seconds_whatever_the_step_count(clock, caplog):
    caplog.set_level(logging.INFO, logger="bertclf")
    p = Progress("epoch 1/3", 400, "steps", log=LOG, every_s=30, clock=clock)
    logged = []
    for step in range(1, 401):
        clock.now += 0.5  # 2 steps/s: 200 s for the epoch
        logged.append(p.update(step))
    assert sum(logged) == 6  # at 30, 60, ..., 180 s: not one per 10% of the steps
    assert [i + 1 for i, was in enumerate(logged) if was] == [60, 120, 180, 240, 300, 360]
    first = _lines(caplog)[0]
    assert first == "progress: epoch 1/3 60/400 steps (15%), 2.0 steps/s, ETA 2m50s"


def test_slow_steps_log_each_time_the_interval_has_passed(clock, caplog):
    caplog.set_level(logging.INFO, logger="bertclf")
    p = Progress("scored", 10_000, log=LOG, every_s=30, clock=clock)
    clock.now += 10
    assert not p.update(100)
    clock.now += 50  # one unit took 50 s: the next update logs at once
    assert p.update(1_000, "2/20 unit(s)")
    assert _lines(caplog) == ["progress: scored 1,000/10,000 rows (10%), 16.7 rows/s, ETA 9m00s; 2/20 unit(s)"]


def test_detail_is_computed_only_when_a_line_is_due(clock):
    calls = []
    p = Progress("epoch 1/1", 10, "steps", log=LOG, every_s=30, clock=clock)

    def detail() -> str:
        calls.append(1)
        return "loss 0.5"

    clock.now += 1
    p.update(1, detail)
    assert calls == []
    clock.now += 30
    p.update(2, detail)
    assert calls == [1]


def test_finish_always_logs_totals_and_time(clock, caplog):
    caplog.set_level(logging.INFO, logger="bertclf")
    p = Progress("counted", 300, log=LOG, every_s=30, clock=clock)
    clock.now += 3
    p.update(300)
    p.finish()
    assert _lines(caplog) == ["progress: counted 300/300 rows (100%), 100.0 rows/s, in 3s"]


def test_unknown_total_still_says_count_and_rate(clock, caplog):
    caplog.set_level(logging.INFO, logger="bertclf")
    p = Progress("read", None, log=LOG, every_s=1, clock=clock)
    clock.now += 2
    p.update(50)
    assert _lines(caplog) == ["progress: read 50 rows, 25.0 rows/s, ETA unknown"]


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    assert every_seconds() == 30.0
    monkeypatch.setenv(EVERY_ENV, "5")
    assert every_seconds() == 5.0
    assert Progress("x", 1, log=LOG).every_s == 5.0
    for bad in ("0", "-1", "soon", "nan"):
        monkeypatch.setenv(EVERY_ENV, bad)
        with pytest.raises(ConfigError, match=EVERY_ENV):
            every_seconds()
