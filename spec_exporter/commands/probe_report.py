"""`probe --report FILE.html`: the probe's document as one self-contained page (inline SVG and script, no network).

Two charts, drawn in the browser from the document embedded in the page: acceptance by temperature (one line per
concurrency, with the disable and beneficial thresholds) and the measured TPOT speedup by concurrency (one line per
temperature, with the break-even line at 1.0), then the numbers of every cell, the crossovers and the schedule.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from spec_exporter.commands.format import ms, number
from spec_exporter.commands.probe_render import crossover_text


def _finite(value: Any) -> Any:
    """The document with NaN and infinities as null: JSON.parse accepts no other spelling of "no value"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _embedded(doc: dict[str, Any]) -> str:
    # Inside <script>, only "</" can end the element early; JSON allows "\/" for "/".
    return json.dumps(_finite(doc), allow_nan=False).replace("</", "<\\/")


def cell_values(s: dict[str, Any], with_baseline: bool) -> list[str]:
    """One cell of the sweep as the table and the report print it, column by column."""
    pct = s["acceptance_percentiles"]
    values = [
        str(s["concurrency"]),
        f"{s['temperature']:g}",
        number(s["acceptance_rate"], 3),
        number(pct.get("p10"), 2),
        number(pct.get("p50"), 2),
        number(pct.get("p90"), 2),
        number(s["mean_acceptance_length"], 2),
        ms(s["ttft_seconds"]["p50"]),
        ms(s["ttft_seconds"]["p99"]),
        ms(s["tpot_seconds"]["p50"]),
        ms(s["tpot_seconds"]["p99"]),
        number(s["output_tokens_per_second"], 1),
    ]
    if with_baseline:
        b = s["baseline"] or {}
        values += [
            ms((b.get("tpot_seconds") or {}).get("p50")),
            number(b.get("output_tokens_per_second"), 1),
            number(s["tpot_speedup"], 2),
            number(s["throughput_ratio"], 2),
        ]
    return [*values, str(s["failed"]), s["verdict"]]


def _cells_table(doc: dict[str, Any]) -> str:
    with_baseline = doc["baseline_target"] is not None
    head = ["concurrency", "temperature", "acceptance", "P10", "P50", "P90", "acceptance length"]
    head += ["TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "output tok/s"]
    if with_baseline:
        head += ["baseline TPOT p50 ms", "baseline tok/s", "TPOT speedup", "throughput ratio"]
    head += ["failed", "verdict"]
    rows = []
    for s in doc["cells"]:
        cells = cell_values(s, with_baseline)
        rows.append(
            f'<tr data-concurrency="{s["concurrency"]}" data-temperature="{s["temperature"]:g}">'
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<table id="cells"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _findings(doc: dict[str, Any]) -> str:
    parts = []
    rules = dict.fromkeys(c["rule"] for c in doc["cells"] if c.get("rule"))
    if rules:
        # Beside every verdict, the number that decided it: the measured speedup at the cell, or acceptance.
        listed = "".join(f"<li>{html.escape(r)}</li>" for r in rules)
        parts.append(f'<h2>Verdict rule</h2><ul id="rule">{listed}</ul>')
    if doc["crossover"]:
        items = []
        for c in doc["crossover"]:
            items.append(f"<li>T={c['temperature']:g}: {html.escape(crossover_text(c))}</li>")
        parts.append(f'<h2>Crossover</h2><ul id="crossover">{"".join(items)}</ul>')
    config = doc["suggested_speculative_config"]
    if config is not None:
        parts.append(
            "<h2>Suggested schedule</h2><p>Merge into <code>--speculative-config</code> (batch size ≈ "
            "concurrency; vLLM carries the last range's k on to <code>max_num_seqs</code>):</p>"
            f'<pre id="schedule">{html.escape(json.dumps(config))}</pre>'
        )
    if doc["warnings"]:
        warnings = "".join(f"<li>{html.escape(w)}</li>" for w in doc["warnings"])
        parts.append(f'<h2>Warnings</h2><ul id="warnings">{warnings}</ul>')
    return "".join(parts)


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
svg .axis { stroke: #888; } svg .grid { stroke: #eee; }
svg .threshold { stroke: #c33; stroke-dasharray: 5 4; } svg .beneficial { stroke: #393; }
svg .break-even { stroke: #333; stroke-dasharray: 5 4; }
table { border-collapse: collapse; margin-top: 1em; } td, th { border: 1px solid #ddd; padding: 3px 7px; }
td { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f5f5f5; }
pre { background: #f5f5f5; padding: .6em; }
"""

# Draws both charts from the embedded document. No library: a page that must work offline and forever.
_SCRIPT = r"""
(function () {
  const doc = JSON.parse(document.getElementById("probe-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const W = 460, H = 300, L = 50, R = 110, T = 15, B = 40;

  function el(parent, name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }

  function chart(svg, o) {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    const x = v => L + (W - L - R) * (o.xs.length > 1 ? o.xs.indexOf(v) / (o.xs.length - 1) : 0.5);
    const y = v => T + (H - T - B) * (1 - (v - o.ymin) / (o.ymax - o.ymin));
    for (let i = 0; i <= 4; i++) {
      const v = o.ymin + (o.ymax - o.ymin) * i / 4;
      el(svg, "line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)});
      el(svg, "text", {x: L - 6, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(2));
    }
    el(svg, "line", {class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B});
    el(svg, "line", {class: "axis", x1: L, x2: L, y1: T, y2: H - B});
    for (const v of o.xs) el(svg, "text", {x: x(v), y: H - B + 15, "text-anchor": "middle"}, String(v));
    el(svg, "text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle"}, o.xlabel);
    el(svg, "text", {x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`,
                     "text-anchor": "middle"}, o.ylabel);
    for (const line of o.lines) {
      el(svg, "line", {class: line.cls, x1: L, x2: W - R, y1: y(line.value), y2: y(line.value),
                       "data-value": line.value});
      el(svg, "text", {x: W - R + 4, y: y(line.value) + 4}, line.label);
    }
    o.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = s.points.filter(p => p.value !== null);
      if (pts.length > 1) {
        el(svg, "polyline", {fill: "none", stroke: color, "stroke-width": 2,
                             points: pts.map(p => `${x(p.x)},${y(p.value)}`).join(" ")});
      }
      for (const p of pts) {
        const c = el(svg, "circle", {class: "point", cx: x(p.x), cy: y(p.value), r: 4, fill: color,
                                     "data-series": s.name, "data-x": p.x, "data-value": p.value});
        el(c, "title", {}, `${s.name}, ${o.xlabel} ${p.x}: ${p.value.toFixed(3)}`);
      }
      el(svg, "text", {x: W - R + 4, y: T + 14 * i + 40, fill: color}, s.name);
    });
    if (o.note) el(svg, "text", {class: "note", x: (L + W - R) / 2, y: T + 20, "text-anchor": "middle"}, o.note);
  }

  const th = doc.thresholds;
  const conc = doc.concurrency, temps = doc.temperatures;
  const cell = (c, t) => doc.cells.find(r => r.concurrency === c && r.temperature === t);
  chart(document.getElementById("acceptance-chart"), {
    xs: temps, xlabel: "temperature", ylabel: "acceptance", ymin: 0, ymax: 1,
    lines: [{cls: "threshold", value: th.disable_below, label: `disable < ${th.disable_below}`},
            {cls: "threshold beneficial", value: th.beneficial_at, label: `beneficial ≥ ${th.beneficial_at}`}],
    series: conc.map(c => ({name: `concurrency ${c}`,
                            points: temps.map(t => ({x: t, value: (cell(c, t) || {}).acceptance_rate ?? null}))})),
  });
  const speedups = doc.cells.map(r => r.tpot_speedup).filter(v => v !== null);
  chart(document.getElementById("speedup-chart"), {
    xs: conc, xlabel: "concurrency", ylabel: "TPOT speedup (baseline / speculative)", ymin: 0,
    ymax: Math.max(1.5, ...speedups.map(v => v * 1.1)),
    lines: [{cls: "break-even", value: 1, label: "1.0 break-even"}],
    series: temps.map(t => ({name: `T=${t}`,
                             points: conc.map(c => ({x: c, value: (cell(c, t) || {}).tpot_speedup ?? null}))})),
    note: doc.baseline_target ? null : "no baseline: run probe with --baseline-target URL",
  });
  document.body.dataset.chartsDrawn = String(document.querySelectorAll("svg.chart").length);
})();
"""


def render_html(doc: dict[str, Any]) -> str:
    title = f"spec-exporter probe: {doc['target']}"
    against = (
        f" against the baseline {html.escape(doc['baseline_target'])}"
        if doc["baseline_target"]
        else " (no baseline: speedups need --baseline-target)"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; \
script-src 'unsafe-inline'">
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{doc["requests_per_cell"]} requests per cell at concurrency {", ".join(map(str, doc["concurrency"]))}{against}.</p>
<div class="charts">
<figure><figcaption>Acceptance by temperature</figcaption><svg class="chart" id="acceptance-chart"></svg></figure>
<figure><figcaption>TPOT speedup by concurrency</figcaption><svg class="chart" id="speedup-chart"></svg></figure>
</div>
{_cells_table(doc)}
{_findings(doc)}
<script type="application/json" id="probe-data">{_embedded(doc)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
