"""The overview's trend charts (charts_svg.py and pages._trends), drawn from rollup rows."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.etree import ElementTree

from orchwf.dashboard import pages
from orchwf.dashboard.charts_svg import (
    Series,
    count_label,
    line_chart,
    minutes,
    ms_label,
    nice_ceiling,
)

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=timezone.utc)
EVIL = "<script>alert(1)</script>\"'&"
SVG = "{http://www.w3.org/2000/svg}"


def _svg(html: str) -> ElementTree.Element:
    """The chart's SVG, parsed as XML (it must be well-formed)."""
    [svg] = re.findall(r"<svg.*?</svg>", html, re.S)
    return ElementTree.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def test_the_y_axis_ends_at_a_round_number() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 7, 12, 140_000, 850_001)] == [
        1, 0.5, 1, 10, 20, 200_000, 1_000_000]


def test_labels_are_for_people() -> None:
    assert [count_label(v) for v in (0, 2.5, 12, 2333, 850_000)] == ["0", "2.5", "12", "2,333", "850,000"]
    assert [ms_label(v) for v in (0, 0.42, 2.5, 250, 1500, 150_000)] == [
        "0", "0.4 ms", "2.5 ms", "250 ms", "1.5 s", "2.5 min"]


def test_the_minutes_end_with_the_current_one() -> None:
    times = minutes(NOW, 3)
    assert times == [datetime(2026, 12, 3, h, m, tzinfo=timezone.utc) for h, m in ((11, 58), (11, 59), (12, 0))]


def test_a_minute_without_a_value_breaks_the_line() -> None:
    times = minutes(NOW, 6)
    html = line_chart("t", [Series("a", [1, 2, None, 4, 5, None])], times)
    svg = _svg(html)
    lines = svg.findall(f"{SVG}polyline")
    assert [len(p.get("points", "").split()) for p in lines] == [2, 2]
    hovers = svg.findall(f"{SVG}rect")
    assert len(hovers) == 6
    assert hovers[2].findtext(f"{SVG}title") == "11:57 UTC: a –"


def test_values_are_scaled_to_the_round_top() -> None:
    times = minutes(NOW, 2)
    svg = _svg(line_chart("t", [Series("a", [0, 70])], times))
    [line] = svg.findall(f"{SVG}polyline")
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in line.get("points", "").split())
    labels = [t.text for t in svg.findall(f"{SVG}text") if t.get("class") == "y-label"]
    assert labels == ["0", "25", "50", "75", "100"]  # 70 rounds up to 100
    top, bottom = 10, 170 - 24
    assert y0 == bottom and abs(y1 - (bottom - 0.7 * (bottom - top))) < 0.1
    assert x0 < x1


def test_names_are_escaped() -> None:
    html = line_chart(EVIL, [Series(EVIL, [1.0, 2.0])], minutes(NOW, 2))
    assert "<script>" not in html
    assert _svg(html) is not None


def _data(trend: list[dict[str, Any]], backlog: list[dict[str, Any]]) -> dict[str, Any]:
    return {"now": NOW, "trend": trend, "backlog_trend": backlog}


def _row(minute: datetime, **values: Any) -> dict[str, Any]:
    return {"minute": minute, "completed": 0, "failed": 0, "cancelled": 0, "started": 0, "wait_p50_ms": None,
            "wait_p99_ms": None, "closed": True} | values


def test_the_overview_draws_three_charts_of_the_last_hour() -> None:
    times = minutes(NOW, 60)
    trend = [_row(times[-1], completed=2333, failed=7, started=2340, wait_p50_ms=1.2, wait_p99_ms=48.0),
             _row(times[-2], completed=1000)]
    html = pages._trends(_data(trend, [{"minute": times[-1], "queue": "emails", "ready": 850_000}]))
    assert html.count("<svg") == 3
    for chart in ("chart-finished", "chart-wait", "chart-backlog"):
        assert f'id="{chart}"' in html
    assert "12:00 UTC: completed 2,333; failed 7" in html
    assert "12:00 UTC: p50 1.2 ms; p99 48 ms" in html
    assert "12:00 UTC: emails 850,000" in html
    assert "11:59 UTC: emails 0" in html  # rolled up, and the queue had nothing ready
    assert "11:58 UTC: emails –" in html  # never rolled up: no value, not zero


def test_the_backlog_chart_keeps_the_busiest_queues() -> None:
    times = minutes(NOW, 60)
    backlog = [{"minute": times[-1], "queue": f"q{i}", "ready": i} for i in range(10)]
    html = pages._trends(_data([_row(times[-1])], backlog))
    keys = re.findall(r'<span class="key series-\d">([^<]*)</span>', html)
    assert keys[-pages.QUEUE_LINES:] == ["q9", "q8", "q7", "q6", "q5", "q4"]


def test_no_rollup_yet_says_so() -> None:
    assert 'id="no-trends"' in pages._trends(_data([], []))


def test_an_hour_old_minute_is_outside_the_charts() -> None:
    old = minutes(NOW, 61)[0]  # 12:00 - 60 minutes
    html = pages._trends(_data([_row(old, completed=99)], []))
    titles = re.findall(r"<title>([^<]*)</title>", html)
    assert len(titles) == 3 * 60 and not any("completed 99" in t for t in titles)


def test_minute_keys_match_across_time_zones() -> None:
    """Rows come back in the session's time zone; the chart's minutes are UTC."""
    times = minutes(NOW, 60)
    local = times[-1].astimezone(timezone(timedelta(hours=5, minutes=30)))
    html = pages._trends(_data([_row(local, completed=42)], []))
    assert "12:00 UTC: completed 42" in html
