"""Cron expressions (orchwf/cron.py) and the misfire decision (orchwf/schedules.py):
parsing with errors that name the field, ticks, daylight saving in both directions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from orchwf import Schedule, StepBuilder, ValidationError, WorkflowBuilder
from orchwf.cron import CronSchedule
from orchwf.schedules import MAX_TICKS_PER_RUN, check_schedule, tick_key, ticks_to_fire

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(*args: int, tz: ZoneInfo | timezone = UTC) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


def local(ticks: list[datetime], tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).strftime("%m-%d %H:%M%z") for t in ticks]


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "message"), [
    ("* * * *", "has 4 fields; it needs 5"),
    ("0 * * * * *", "seconds are not supported"),
    ("60 * * * *", "minute field: 60 is out of range 0-59"),
    ("* 24 * * *", "hour field: 24 is out of range 0-23"),
    ("* * 0 * *", "day of month field: 0 is out of range 1-31"),
    ("* * * 13 *", "month field: 13 is out of range 1-12"),
    ("* * * * 8", "day of week field: 8 is out of range 0-7"),
    ("* * * foo *", "month field: 'foo' is not a number"),
    ("*/0 * * * *", "minute field: step '0' must be a positive number"),
    ("5-1 * * * *", "minute field: range '5-1' runs backwards"),
    ("1,,2 * * * *", "minute field: empty list item"),
    ("@fortnightly", "unknown cron nickname"),
    ("0 0 30 2 *", "never fires"),
    ("", "non-empty string"),
])
def test_a_bad_expression_is_refused_naming_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("*", r"\*")):
        CronSchedule.parse(expression)


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        CronSchedule.parse("* * * * *", "Mars/Olympus")


def test_fields_lists_ranges_steps_and_names() -> None:
    c = CronSchedule.parse("0,30 9-17/4 * jan-mar mon,wed,fri")
    assert c.minutes == (0, 30) and c.hours == (9, 13, 17)
    assert c.months == frozenset({1, 2, 3}) and c.weekdays == frozenset({1, 3, 5})
    assert CronSchedule.parse("0 0 * * 7").weekdays == frozenset({0})  # 7 is Sunday
    assert CronSchedule.parse("5/20 * * * *").minutes == (5, 25, 45)


@pytest.mark.parametrize(("nickname", "same_as"), [
    ("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"), ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *")])
def test_nicknames(nickname: str, same_as: str) -> None:
    start = at(2026, 1, 1)
    assert CronSchedule.parse(nickname).ticks(start, start + timedelta(days=400), 20) == \
        CronSchedule.parse(same_as).ticks(start, start + timedelta(days=400), 20)


def test_either_day_field_matches_when_both_are_restricted() -> None:
    """Vixie cron: "on the 13th, and on every Friday"."""
    c = CronSchedule.parse("0 12 13 * fri")
    days = [t.strftime("%a %d") for t in c.ticks(at(2026, 2, 1), at(2026, 3, 1), 10)]
    assert days == ["Fri 06", "Fri 13", "Fri 20", "Fri 27"]
    c = CronSchedule.parse("0 12 13 * *")
    assert [t.day for t in c.ticks(at(2026, 2, 1), at(2026, 4, 1), 10)] == [13, 13]


# -- ticks ------------------------------------------------------------------------------------


def test_ticks_are_strictly_after_and_in_order() -> None:
    c = CronSchedule.parse("*/15 * * * *")
    assert c.next_after(at(2026, 5, 1, 10, 0)) == at(2026, 5, 1, 10, 15)
    assert c.next_after(at(2026, 5, 1, 10, 7, 30)) == at(2026, 5, 1, 10, 15)
    ticks = c.ticks(at(2026, 5, 1, 10, 0), at(2026, 5, 1, 11, 0), 100)
    assert [t.minute for t in ticks] == [0, 15, 30, 45, 0] and ticks == sorted(set(ticks))
    assert c.ticks(at(2026, 5, 1, 10, 0), at(2026, 5, 1, 11, 0), 2) == ticks[:2]


def test_a_schedule_in_a_time_zone_ticks_in_its_wall_time() -> None:
    c = CronSchedule.parse("0 9 * * mon-fri", "America/New_York")
    ticks = c.ticks(at(2026, 7, 3), at(2026, 7, 8), 10)  # Fri 3 July to Wed 8 July (EDT, -4)
    assert local(ticks, NEW_YORK) == ["07-03 09:00-0400", "07-06 09:00-0400", "07-07 09:00-0400"]
    assert ticks[0] == at(2026, 7, 3, 13, 0)


# -- daylight saving: Europe/Berlin springs forward 2026-03-29 02:00 -> 03:00, falls back
#    2026-10-25 03:00 -> 02:00 ------------------------------------------------------------------


def test_a_fixed_time_in_the_skipped_hour_runs_once_an_hour_later() -> None:
    c = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    ticks = c.ticks(at(2026, 3, 28), at(2026, 3, 31), 10)
    assert local(ticks, BERLIN) == ["03-28 02:30+0100", "03-29 03:30+0200", "03-30 02:30+0200"]


def test_a_fixed_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() -> None:
    c = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    ticks = c.ticks(at(2026, 10, 24), at(2026, 10, 27), 10)
    assert local(ticks, BERLIN) == ["10-24 02:30+0200", "10-25 02:30+0200", "10-26 02:30+0100"]


def test_two_fixed_times_in_the_skipped_hour_keep_their_order_and_do_not_repeat() -> None:
    c = CronSchedule.parse("0,30 2,3 * * *", "Europe/Berlin")
    ticks = c.ticks(at(2026, 3, 29), at(2026, 3, 29, 12), 10)
    assert local(ticks, BERLIN) == ["03-29 03:00+0200", "03-29 03:30+0200"]  # 02:00 = 03:00, 02:30 = 03:30


def test_an_hourly_wildcard_keeps_real_time_through_both_transitions() -> None:
    c = CronSchedule.parse("*/30 * * * *", "Europe/Berlin")
    spring = c.ticks(at(2026, 3, 29, 0, 0), at(2026, 3, 29, 2, 0), 10)  # 01:00 CET to 04:00 CEST
    assert local(spring, BERLIN) == ["03-29 01:00+0100", "03-29 01:30+0100", "03-29 03:00+0200",
                                     "03-29 03:30+0200", "03-29 04:00+0200"]
    assert all(b - a == timedelta(minutes=30) for a, b in zip(spring, spring[1:], strict=False))
    autumn = c.ticks(at(2026, 10, 24, 23, 30), at(2026, 10, 25, 2, 0), 10)  # the repeated hour twice
    assert local(autumn, BERLIN) == ["10-25 01:30+0200", "10-25 02:00+0200", "10-25 02:30+0200",
                                     "10-25 02:00+0100", "10-25 02:30+0100", "10-25 03:00+0100"]
    assert all(b - a == timedelta(minutes=30) for a, b in zip(autumn, autumn[1:], strict=False))


def test_next_after_agrees_with_ticks_across_transitions() -> None:
    for expression in ("* * * * *", "30 2 * * *", "*/20 1-3 * * *", "0 * * * *"):
        c = CronSchedule.parse(expression, "Europe/Berlin")
        for start in (at(2026, 3, 28, 22), at(2026, 10, 24, 22)):
            end = start + timedelta(hours=8)
            walked, t = [], c.next_after(start - timedelta(microseconds=1))
            while t <= end:
                walked.append(t)
                t = c.next_after(t)
            assert walked == c.ticks(start, end, 10_000), (expression, start)


# -- the misfire decision ---------------------------------------------------------------------


EVERY_MINUTE = CronSchedule.parse("* * * * *")
NOW = at(2026, 5, 1, 12, 0, 20)


def test_on_time_every_policy_fires_the_tick() -> None:
    for policy in ("once", "all", "skip"):
        fire, next_run = ticks_to_fire(EVERY_MINUTE, policy, at(2026, 5, 1, 12, 0), NOW)
        assert (fire, next_run) == ([at(2026, 5, 1, 12, 0)], at(2026, 5, 1, 12, 1)), policy


def test_after_an_outage_once_fires_the_latest_tick_all_fires_each_skip_none() -> None:
    hourly = CronSchedule.parse("0 * * * *")
    missed_since, now = at(2026, 5, 1, 9, 0), at(2026, 5, 1, 11, 30)  # 09:00, 10:00, 11:00 missed
    once, next_run = ticks_to_fire(hourly, "once", missed_since, now)
    assert once == [at(2026, 5, 1, 11, 0)] and next_run == at(2026, 5, 1, 12, 0)
    every, next_run = ticks_to_fire(hourly, "all", missed_since, now)
    assert every == [at(2026, 5, 1, h, 0) for h in (9, 10, 11)] and next_run == at(2026, 5, 1, 12, 0)
    skipped, next_run = ticks_to_fire(hourly, "skip", missed_since, now)
    assert skipped == [] and next_run == at(2026, 5, 1, 12, 0)
    # the tick due now still runs under "skip": only missed ones are dropped
    on_time, _ = ticks_to_fire(hourly, "skip", missed_since, at(2026, 5, 1, 12, 0, 20))
    assert on_time == [at(2026, 5, 1, 12, 0)]


def test_all_catches_up_in_bounded_runs() -> None:
    start = NOW - timedelta(days=1)
    first, next_run = ticks_to_fire(EVERY_MINUTE, "all", start, NOW)
    assert len(first) == MAX_TICKS_PER_RUN and next_run == first[-1] + timedelta(minutes=1)
    rest, _ = ticks_to_fire(EVERY_MINUTE, "all", next_run, NOW)
    assert len(first) + len(rest) == 24 * 60 and not set(first) & set(rest)  # 12:01 to 12:00


def test_tick_keys_are_the_same_on_every_host() -> None:
    tick = at(2026, 5, 1, 12, 0)
    assert tick_key("nightly", tick) == tick_key("nightly", tick.astimezone(BERLIN)) == "cron:nightly:2026-05-01T12:00Z"


# -- definitions ------------------------------------------------------------------------------


def _step() -> StepBuilder:
    return StepBuilder("a", "A", lambda ctx, data: {})


def test_a_definition_carries_its_schedules_outside_its_version() -> None:
    plain = WorkflowBuilder("report", "Report").add_step(_step().build()).build()
    scheduled = (WorkflowBuilder("report", "Report").add_step(_step().build())
                 .with_schedule("0 6 * * *", timezone="Europe/Berlin", input={"kind": "daily"})
                 .with_schedule("@hourly", name="hourly-report", misfire="skip").build())
    assert plain.version_hash == scheduled.version_hash
    assert [(s.name, s.cron, s.timezone, dict(s.input), s.misfire) for s in scheduled.schedules] == [
        ("report 0 6 * * *", "0 6 * * *", "Europe/Berlin", {"kind": "daily"}, "once"),
        ("hourly-report", "@hourly", "UTC", {}, "skip")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "0 25 * * *"}, "hour field"),
    ({"cron": "@daily", "timezone": "Nowhere/City"}, "unknown time zone"),
    ({"cron": "@daily", "misfire": "sometimes"}, "misfire must be one of"),
    ({"cron": "@daily", "input": [1, 2]}, "schedule input"),
    ({"cron": "@daily", "name": "x" * 201}, "schedule name"),
])
def test_a_bad_schedule_is_refused_at_definition(kwargs: dict, message: str) -> None:
    cron = kwargs.pop("cron")
    with pytest.raises(ValidationError, match=message):
        WorkflowBuilder("w", "W").add_step(_step().build()).with_schedule(cron, **kwargs)


def test_two_schedules_with_one_name_are_refused() -> None:
    builder = WorkflowBuilder("w", "W").add_step(_step().build())
    builder.with_schedule("@daily", input={"a": 1}).with_schedule("@daily", input={"a": 2})
    with pytest.raises(ValidationError, match="two schedules named 'w @daily'"):
        builder.build()


def test_check_schedule_normalises_spacing_for_the_default_name() -> None:
    checked = check_schedule(Schedule("0  6 * *   *"), "w")
    assert (checked.name, checked.cron) == ("w 0 6 * * *", "0 6 * * *")


def test_the_longest_name_keeps_the_whole_tick_in_its_key() -> None:
    """The key must tell every tick apart: a name that left no room for the tick would
    make every tick after the first a duplicate."""
    from orchwf.schedules import MAX_NAME

    key = tick_key("n" * MAX_NAME, at(2026, 5, 1, 12, 0))
    assert len(key) <= 255 and key.endswith(":2026-05-01T12:00Z")
