"""Fire-time computation: cron in time zones (DST), intervals, validation of every field."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from flowyard_schedule import Schedule, ScheduleError, fire_key, fire_run_id, parse_every

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_cron_is_read_in_its_time_zone() -> None:
    s = Schedule(name="daily", workflow="/w.yaml", cron="0 8 * * *", tz="Europe/Berlin")
    nxt = s.next_after(ts(2026, 12, 2, 12, 0))
    assert datetime.fromtimestamp(nxt, BERLIN) == datetime(2026, 12, 3, 8, 0, tzinfo=BERLIN)
    utc = Schedule(name="daily", workflow="/w.yaml", cron="0 8 * * *")
    assert utc.next_after(ts(2026, 12, 2, 12, 0)) - nxt == 3600  # 08:00 UTC is 09:00 Berlin


def test_spring_forward_fires_once_at_the_first_valid_time() -> None:
    # 2026-03-29: Berlin clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
    s = Schedule(name="dst", workflow="/w.yaml", cron="30 2 * * *", tz="Europe/Berlin")
    times, more = s.times_between(ts(2026, 3, 28, 12, 0), ts(2026, 3, 31, 12, 0), limit=10)
    local = [datetime.fromtimestamp(t, BERLIN) for t in times]
    assert more == 0
    assert [(d.day, d.hour, d.minute) for d in local] == [(29, 3, 0), (30, 2, 30), (31, 2, 30)]
    assert times[1] - times[0] == 23.5 * 3600  # the short day


def test_interval_counts_from_start_at_and_caps_long_downtime() -> None:
    s = Schedule(name="tick", workflow="/w.yaml", every_s=600, start_at=1000.0)
    assert s.next_after(0) == 1000.0
    assert s.next_after(1000.0) == 1600.0
    assert s.next_after(1599.0) == 1600.0
    times, more = s.times_between(1000.0, 1000.0 + 600 * 1_000_000, limit=3)
    assert times == [1000.0 + 600 * n for n in (999_998, 999_999, 1_000_000)]
    assert more == 999_997


def test_cron_with_seconds_and_cap() -> None:
    s = Schedule(name="sec", workflow="/w.yaml", cron="* * * * * */10")
    times, more = s.times_between(0.0, 100.0, limit=4)
    assert times == [70.0, 80.0, 90.0, 100.0] and more == 6


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600),
                                           ("2h", 7200), ("1d", 86400), ("1w", 604800),
                                           ("1.5m", 90)])
def test_parse_every(text: str, seconds: float) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5m", "0.5s", "m", "1e9999"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(ScheduleError, match="every"):
        parse_every(text)


@pytest.mark.parametrize("fields, match", [
    ({"cron": "61 * * * *"}, "cron: '61 \\* \\* \\* \\*' is not a cron expression"),
    ({"cron": "every day"}, "cron:"),
    ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "tz: 'Mars/Olympus' is not an IANA"),
    ({"cron": "* * * * *", "tz": "../../etc/passwd"}, "tz:"),
    ({"cron": "* * * * *", "every_s": 60}, "exactly one of cron and every"),
    ({}, "exactly one of cron and every"),
    ({"every_s": 0.2}, "every:"),
    ({"every_s": float("nan")}, "every:"),
    ({"every_s": 60, "catch_up": "sometimes"}, "catch_up: 'sometimes' must be one of"),
    ({"every_s": 60, "inputs": {"x": float("nan")}}, "inputs: not JSON-ready"),
    ({"every_s": 60, "inputs": {"blob": "x" * 300_000}}, "inputs: .* bytes of JSON"),
    ({"every_s": 60, "max_catch_up": 0}, "max_catch_up"),
])
def test_invalid_fields_are_named(fields: dict, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        Schedule(name="x", workflow="/w.yaml", **fields)


@pytest.mark.parametrize("name", ["a/b", "../x", "it's", 'say "hi"', "", " x", "x" * 129,
                                  "-lead", "a b", "semi;colon", "nul\x00"])
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(ScheduleError, match="schedule name"):
        Schedule(name=name, workflow="/w.yaml", every_s=60)


def test_fire_identity_is_deterministic_per_name_and_time() -> None:
    assert fire_key("nightly", 0.0) == "schedule:nightly:1970-01-01T00:00:00+00:00"
    assert fire_run_id("nightly", 0.0) == fire_run_id("nightly", 0.0)
    assert fire_run_id("nightly", 0.0) != fire_run_id("nightly", 60.0)
    assert fire_run_id("nightly", 0.0) != fire_run_id("other", 0.0)
    assert len(fire_run_id("nightly", 0.0)) == 32


def test_stored_form_round_trips() -> None:
    s = Schedule(name="r", workflow="/w.yaml", cron="*/5 * * * *", tz="Asia/Tokyo",
                 catch_up="all", inputs={"n": 3}, start_at=5.0, created_at=4.0)
    assert Schedule.from_json(s.to_json()) == s
    with pytest.raises(ScheduleError, match="damaged"):
        Schedule.from_json({"name": "r"})
