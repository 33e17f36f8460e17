"""`probe --report`: the HTML page, opened in a real headless Chromium, draws both charts from the run's numbers."""

from __future__ import annotations

import html.parser
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from spec_exporter.commands.probe_document import probe_document
from spec_exporter.commands.probe_render import render_table
from spec_exporter.commands.probe_report import render_html
from tests.unit.test_probe import swept


class Elements(html.parser.HTMLParser):
    """Every element of the rendered DOM with its attributes, the chart it sits in, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.text: list[str] = []
        self._chart: list[str | None] = [None]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        chart = a.get("id") if tag == "svg" else self._chart[-1]
        self.elements.append((tag, a, chart))
        if tag not in ("line", "circle", "polyline", "meta", "br"):
            self._chart.append(chart)

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("line", "circle", "polyline", "meta", "br") and len(self._chart) > 1:
            self._chart.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def in_chart(self, chart: str, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a, c in self.elements
            if t == tag and c == chart and (cls is None or cls in a.get("class", "").split())
        ]


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium not found: install Debian's chromium package (scripts/install-test-deps.sh does)"
    return path


def rendered_dom(page: Path, profile: Path) -> Elements:
    """The DOM after the page's scripts ran, as a real browser built it."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = Elements()
    parsed.feed(result.stdout)
    return parsed


def values(points: list[dict[str, str]]) -> dict[tuple[str, float], float]:
    return {(p["data-series"], float(p["data-x"])): float(p["data-value"]) for p in points}


async def test_the_report_draws_both_charts_with_the_runs_numbers(aiohttp_server: Any, tmp_path: Path) -> None:
    settings, run = await swept(aiohttp_server)
    doc = probe_document(settings, run)
    page = tmp_path / "report.html"
    page.write_text(render_html(doc), encoding="utf-8")
    dom = rendered_dom(page, tmp_path / "profile")
    body = next(a for t, a, _ in dom.elements if t == "body")
    assert body.get("data-charts-drawn") == "2", "the page's script did not finish"

    acceptance = values(dom.in_chart("acceptance-chart", "circle", "point"))
    expected = {(f"concurrency {c['concurrency']}", c["temperature"]): c["acceptance_rate"] for c in doc["cells"]}
    assert acceptance.keys() == expected.keys()
    assert all(math.isclose(acceptance[k], v) for k, v in expected.items())
    thresholds = {float(a["data-value"]) for a in dom.in_chart("acceptance-chart", "line", "threshold")}
    assert thresholds == {0.5, 0.65}

    speedup = values(dom.in_chart("speedup-chart", "circle", "point"))
    expected = {(f"T={c['temperature']:g}", float(c["concurrency"])): c["tpot_speedup"] for c in doc["cells"]}
    assert speedup.keys() == expected.keys()
    assert all(math.isclose(speedup[k], v) for k, v in expected.items())
    assert {float(a["data-value"]) for a in dom.in_chart("speedup-chart", "line", "break-even")} == {1.0}
    assert (
        len(dom.in_chart("speedup-chart", "polyline")) == 2 and len(dom.in_chart("acceptance-chart", "polyline")) == 2
    )

    # The table shows the numbers the text report shows, and the schedule is there to copy.
    text = " ".join(dom.text)
    for number in ("0.817", "0.383", "1.60", "0.60"):
        assert number in text and number in render_table(doc)
    schedule = next(a for t, a, _ in dom.elements if t == "pre" and a.get("id") == "schedule")
    assert schedule is not None
    assert json.dumps(doc["suggested_speculative_config"]) in text
    # Every verdict beside a speedup has the rule that says which number decided it.
    assert "the verdict follows the speedup at the current load (baseline evidence)" in text


async def test_without_a_baseline_the_speedup_chart_says_how_to_get_one(aiohttp_server: Any, tmp_path: Path) -> None:
    settings, run = await swept(aiohttp_server)
    run.baseline = None
    doc = probe_document(settings, run)
    page = tmp_path / "report.html"
    page.write_text(render_html(doc), encoding="utf-8")
    dom = rendered_dom(page, tmp_path / "profile")
    assert next(a for t, a, _ in dom.elements if t == "body").get("data-charts-drawn") == "2"
    assert dom.in_chart("speedup-chart", "circle", "point") == []
    assert len(dom.in_chart("acceptance-chart", "circle", "point")) == 4
    assert "no baseline: run probe with --baseline-target URL" in " ".join(dom.text)
    assert "the verdict follows the acceptance policy" in " ".join(dom.text)
