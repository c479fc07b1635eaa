"""The dashboard's inline SVG charts: well-formed, self-contained (no URL, script or inline style,
which the pages' CSP would block), and drawn to scale."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from web.charts import Series, bar_chart, format_seconds, line_chart, log_ticks, nice_ticks


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))


def _self_contained(svg: str) -> None:
    text = str(svg)
    assert "http" not in text and "href" not in text and "<script" not in text
    assert "style=" not in text and "<style" not in text


def test_bars_are_to_scale_and_empty_minutes_draw_nothing():
    svg = bar_chart([0, 2, 4, 0], title="encode <per minute>", color="#123456", x_labels={0: "−4m", 3: "now"})
    _self_contained(svg)
    root = _parse(svg)
    bars = [r for r in root.iter("rect")]
    assert len(bars) == 2
    heights = [float(r.get("height")) for r in bars]
    assert heights[1] == pytest.approx(2 * heights[0])
    assert root.find("title").text == "encode <per minute>"  # escaped in the markup, intact once parsed
    assert [t.text for t in root.iter("text")][-2:] == ["−4m", "now"]


def test_lines_break_at_missing_values_and_single_points_are_dots():
    svg = line_chart([Series("p50", [0.1, 0.2, None, 0.4, None], "#f00"),
                      Series("p99", [1.0, 3.0, 9.0, 30.0, 60.0], "#f00", dashed=True)],
                     title="latency", x_labels={0: "−60m", 4: "now"}, log=True)
    _self_contained(svg)
    root = _parse(svg)
    lines = list(root.iter("polyline"))
    assert len(lines) == 2 and len(list(root.iter("circle"))) == 1  # 0.1–0.2 and the p99 line; 0.4 alone
    p99 = [ln for ln in lines if ln.get("stroke-dasharray")][0]
    ys = [float(p.split(",")[1]) for p in p99.get("points").split()]
    assert ys == sorted(ys, reverse=True)  # rising latency goes up the chart
    # log scale: equal ratios are equal distances (1 → 3 s as far up as 3 → 9 s)
    assert ys[0] - ys[1] == pytest.approx(ys[1] - ys[2], abs=0.15)


def test_an_empty_chart_still_renders():
    _parse(line_chart([Series("p50", [None] * 12, "#000")], title="nothing yet", x_labels={}, log=True))
    _parse(bar_chart([0] * 60, title="idle", color="#000", x_labels={}))


@pytest.mark.parametrize(("top", "integer", "expected"), [
    (1, True, [0, 1]), (7, True, [0, 5, 10]), (23, True, [0, 10, 20, 30]), (0.3, False, [0, 0.1, 0.2, 0.3]),
])
def test_axis_ticks_are_round_and_cover_the_data(top, integer, expected):
    assert nice_ticks(top, integer=integer) == pytest.approx(expected)


def test_log_ticks_and_second_labels():
    assert log_ticks(0.012, 3.2) == [0.01, 0.1, 1.0, 10.0]
    assert [format_seconds(s) for s in (0.01, 0.25, 1.5, 300, 7200)] == ["10 ms", "250 ms", "1.5 s", "5 min", "2 h"]
    assert re.fullmatch(r"[\d.]+ ms", format_seconds(0.0123))
