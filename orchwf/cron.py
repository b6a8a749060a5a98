"""Cron expressions: the five standard fields and the ``@hourly``-style nicknames,
evaluated in a time zone.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
week (0-7 or sun-sat; 0 and 7 are Sunday). Each is ``*``, a value, a range ``a-b``, a
list ``a,b``, or a step ``*/n`` / ``a-b/n`` / ``a/n``. As in Vixie cron, when both day
fields are restricted a day matches if either does. Seconds are not supported.

Daylight saving, decided as Vixie cron does (docs/schedules.md):

- a schedule whose hour field is ``*`` follows real time: it fires at every instant
  whose local wall time matches, so an hourly or every-15-minutes schedule keeps its
  pace through both transitions (the skipped hour has no wall times to match; the
  repeated hour matches twice);
- a schedule at fixed hours fires once per matching wall time: a wall time the
  spring-forward gap skips fires at the instant it would have had on the old offset
  (02:30 becomes 03:30 summer time), and a wall time the fall-back hour repeats fires
  at its first occurrence only.

Ticks are instants (UTC), strictly increasing: two wall times that map to one instant
are one tick.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ValidationError

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {m: i + 1 for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                          "nov", "dec"))}
WEEKDAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names)
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, MONTHS),
          ("day of week", 0, 7, WEEKDAYS))
SEARCH_DAYS = 366 * 5  # a schedule with no tick within five years never fires: refused
REORDER = timedelta(hours=3)  # daylight saving reorders wall times within less than this


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``, or a ValidationError."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValidationError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown time zone {name!r}") from exc


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    def number(token: str) -> int:
        value = names.get(token.lower()) if names else None
        if value is None:
            if not token.isdigit():
                raise ValidationError(f"cron {name} field: {token!r} is not a number")
            value = int(token)
        if not low <= value <= high:
            raise ValidationError(f"cron {name} field: {value} is out of range {low}-{high}")
        return value

    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValidationError(f"cron {name} field: empty list item in {text!r}")
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValidationError(f"cron {name} field: step {step_text!r} must be a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise ValidationError(f"cron {name} field: range {span!r} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression in a time zone; ``next_after`` gives its ticks."""

    expression: str
    timezone: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool      # day of month is *
    any_weekday: bool  # day of week is *
    follows_real_time: bool  # the hour field is *: see the module's docstring

    @classmethod
    def parse(cls, expression: str, timezone_name: str = "UTC") -> CronSchedule:
        """Parse, or raise a ValidationError that names the field at fault."""
        if not isinstance(expression, str) or not expression.strip():
            raise ValidationError(f"cron expression must be a non-empty string, got {expression!r}")
        tz = zone(timezone_name)
        text = " ".join(expression.split())
        fields = NICKNAMES.get(text.lower(), text).split(" ")
        if text.startswith("@") and text.lower() not in NICKNAMES:
            raise ValidationError(f"unknown cron nickname {text!r} (known: {', '.join(sorted(NICKNAMES))})")
        if len(fields) != 5:
            raise ValidationError(
                f"cron expression {text!r} has {len(fields)} fields; it needs 5 (minute hour day-of-month "
                "month day-of-week); seconds are not supported")
        parsed = [_field(f, *spec) for f, spec in zip(fields, FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in parsed[4])
        schedule = cls(text, timezone_name, tuple(sorted(parsed[0])), tuple(sorted(parsed[1])), parsed[2],
                       parsed[3], weekdays, fields[2] == "*", fields[4] == "*", fields[1] == "*")
        start = datetime(2000, 1, 1, tzinfo=tz)
        if schedule._first_day(start.date(), SEARCH_DAYS) is None:
            raise ValidationError(f"cron expression {text!r} never fires (no matching day in five years)")
        return schedule

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone)

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return (self.any_day or dom) and (self.any_weekday or dow)
        return dom or dow

    def _first_day(self, start: date, limit: int) -> date | None:
        for i in range(limit):
            day = start + timedelta(days=i)
            if self.matches_day(day):
                return day
        return None

    def _instants(self, day: date, floor: datetime) -> Iterator[tuple[datetime, datetime]]:
        """(wall time, instant in UTC) of each tick on ``day`` from wall time ``floor`` on,
        in wall-time order."""
        tz = self.zone
        for hour in self.hours:
            if datetime.combine(day, time(hour, 59)) < floor:
                continue
            for minute in self.minutes:
                wall = datetime.combine(day, time(hour, minute))
                if wall < floor:
                    continue
                first = wall.replace(tzinfo=tz)
                instant = first.astimezone(timezone.utc)
                if self.follows_real_time:
                    # every instant whose wall time this is: none in a gap, two in a repeated hour
                    for fold in (0, 1):
                        at = wall.replace(tzinfo=tz, fold=fold).astimezone(timezone.utc)
                        if at.astimezone(tz).replace(tzinfo=None) == wall and (fold == 0 or at != instant):
                            yield wall, at
                else:
                    yield wall, instant  # fold 0: a gap's time shifts forward, a repeated one fires first

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (an aware datetime), in UTC."""
        if after.tzinfo is None:
            raise ValidationError("next_after needs a timezone-aware datetime")
        local = after.astimezone(self.zone).replace(tzinfo=None)
        floor = local - REORDER  # no earlier wall time can map to an instant after ``after``
        local_day = floor.date()
        best: datetime | None = None
        best_wall: datetime | None = None
        for i in range(SEARCH_DAYS + 2):
            day = local_day + timedelta(days=i)
            if best_wall is not None and datetime.combine(day, time()) > best_wall + REORDER:
                break
            if not self.matches_day(day):
                continue
            for wall, at in self._instants(day, floor):
                if best_wall is not None and wall > best_wall + REORDER:
                    break
                if at > after and (best is None or at < best):
                    best, best_wall = at, wall
        if best is None:
            raise ValidationError(f"cron expression {self.expression!r} has no tick after {after.isoformat()}")
        return best

    def ticks(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """The ticks ``t`` with ``start <= t <= end``, at most ``limit`` (the earliest)."""
        tz = self.zone
        floor = start.astimezone(tz).replace(tzinfo=None) - REORDER
        stop = end.astimezone(tz).replace(tzinfo=None) + REORDER
        found: set[datetime] = set()
        enough: datetime | None = None  # the wall time at which ``limit`` ticks were found
        day = floor.date()
        while datetime.combine(day, time()) <= stop:
            if self.matches_day(day):
                for wall, at in self._instants(day, floor):
                    if wall > stop or (enough is not None and wall > enough + REORDER):
                        break
                    if start <= at <= end:
                        found.add(at)
                        if enough is None and len(found) >= limit:
                            enough = wall
            if enough is not None and datetime.combine(day, time()) > enough + REORDER:
                break
            day += timedelta(days=1)
        return sorted(found)[:limit]
