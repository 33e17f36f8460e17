"""The demo: a real vLLM with real speculative decoding on the CPU and the tap inside it (the middleware;
`--proxy` puts the proxy tap in front of it instead), the exporter polling it, a workload that mixes
temperatures, and Prometheus + Alertmanager with the shipped rules when their binaries are
installed. Prints a live summary every few seconds and stops everything on Ctrl-C.

    make demo            # or: .venv/bin/python -m demo [--duration SECONDS]

The models are tiny: a Llama target and a draft about ten times smaller, shipped in harness/pair (trained by
scripts/train_models.py) on the
Python standard library's own source, completing code. The numbers illustrate the mechanism (acceptance falling
with temperature, the verdicts, a hot band going net-negative while the average looks fine), not a production
figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from harness.models import prompts
from harness.processes import running
from harness.prometheus import PrometheusStack, ScrapeJob, prometheus_stack
from harness.vllm import MODEL_NAME, ROOT, running_vllm, trained_models
from mixin.generate import render_rules
from mixin.params import Params
from spec_exporter.commands.format import latency

# Shorter than the shipped rules so that something happens within a demo's minutes; same rules otherwise.
DEMO_PARAMS = Params(
    rate_window="1m",
    for_net_negative="30s",
    for_break_even="30s",
    for_band="30s",
    for_squeeze="30s",
    for_target_down="30s",
    for_missing="30s",
    min_draft_tokens_per_second=1,
    min_band_draft_tokens_per_second=0.2,
    exporter_job_selector='job="spec-exporter"',
)
# Temperature and share of requests: mostly greedy, so the engine's average looks healthy (about 0.75 with the
# shipped pair, docs/models.md) while the hot bands accept about 0.36 and 0.2, below the net-negative line: the
# mixed-workload case the band alert is for.
MIX = ((0.0, 0.9), (0.4, 0.04), (0.8, 0.06))


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _workload(tap: str, stop: threading.Event, counts: dict[float, int]) -> None:
    """Chat requests to `tap` (vLLM with the middleware, or the proxy tap), temperatures drawn from MIX, in turn."""
    rng = random.Random(0)
    temperatures, weights = zip(*MIX, strict=True)
    code = prompts()
    while not stop.is_set():
        t = rng.choices(temperatures, weights)[0]
        body = {
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": rng.choice(code)}],
            "max_tokens": 32,
            "temperature": t,
            "stream": rng.random() < 0.5,
        }
        request = urllib.request.Request(
            f"{tap}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
            counts[t] = counts.get(t, 0) + 1
        except OSError:
            stop.wait(1)


def _samples(exporter: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(_get(f"{exporter}/metrics").decode()) for s in f.samples]


def summary(samples: list[Any], alerts: list[dict[str, Any]] | None) -> str:
    """The live summary: verdict and P10/P50/P90 per band, engine acceptance, latency, firing alerts."""

    def value(name: str, **labels: str) -> float | None:
        return next(
            (s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())), None
        )

    lines = []
    engine = value("spec_decode_draft_acceptance_rate", window="1m")
    verdict = next(
        (
            s.labels["verdict"]
            for s in samples
            if s.name == "spec_decode_verdict" and s.value == 1 and s.labels.get("temperature_band") == "all"
        ),
        "insufficient_data",
    )
    lines.append(f"engine: acceptance {_f(engine)} over 1m, verdict {verdict}")
    bands = sorted(
        {s.labels["temperature_band"] for s in samples if s.name == "spec_decode_request_acceptance_rate_quantile"}
    )
    for band in bands:
        qs = [
            value("spec_decode_request_acceptance_rate_quantile", temperature_band=band, window="1m", quantile=q)
            for q in ("0.1", "0.5", "0.9")
        ]
        v = next(
            (
                s.labels["verdict"]
                for s in samples
                if s.name == "spec_decode_verdict" and s.value == 1 and s.labels.get("temperature_band") == band
            ),
            "-",
        )
        lines.append(f"  band {band:>8}: acceptance P10/P50/P90 {' / '.join(_f(q) for q in qs)}   verdict {v}")
    for metric in ("ttft", "tpot"):
        p50 = value("spec_decode_latency_seconds", metric=metric, window="1m", quantile="0.5")
        p99 = value("spec_decode_latency_seconds", metric=metric, window="1m", quantile="0.99")
        # Inside vLLM's lowest bucket a quantile is interpolated from 0: it says only "below the bound".
        floor = value("spec_decode_latency_lowest_bucket_seconds", metric=metric)
        lines.append(f"{metric.upper()} p50 / p99: {latency(p50, floor)} / {latency(p99, floor)}")
    if alerts is not None:
        firing = sorted(
            {
                (a["labels"]["alertname"], a["labels"].get("temperature_band", ""))
                for a in alerts
                if a["state"] == "firing"
            }
        )
        lines.append("firing: " + (", ".join(f"{n}{f' ({b})' if b else ''}" for n, b in firing) or "nothing"))
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


MIDDLEWARE = ("--middleware", "spec_exporter.middleware.SpecDecodeMiddleware")


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: Ctrl-C)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between summaries (default 5)")
    parser.add_argument("--vllm-port", type=int, default=8000)
    parser.add_argument(
        "--proxy", action="store_true", help="the proxy tap in front of vLLM instead of the middleware inside it"
    )
    parser.add_argument("--tap-port", type=int, default=8001, help="the proxy tap's port, with --proxy")
    parser.add_argument("--exporter-port", type=int, default=9811)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    args = parser.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    work = Path(tempfile.mkdtemp(prefix="spec-exporter-demo-"))
    print(f"demo: logs and configs in {work}", flush=True)
    print("demo: setting up vLLM's CPU build; the first run installs it (a few GB, a couple of minutes)...", flush=True)
    pair = trained_models()
    print(
        f"demo: the models are tiny Llamas completing Python code: {pair.describe()}. They serve as target and "
        "draft (draft-model speculative decoding, k=3); the numbers illustrate the mechanism, not production.",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        # The middleware imports spec_exporter from this checkout: vLLM's own environment doesn't have it.
        middleware = {} if args.proxy else {"extra_args": MIDDLEWARE, "env": {"PYTHONPATH": str(ROOT)}}
        vllm = stack.enter_context(running_vllm(work / "vllm.log", port=args.vllm_port, **middleware))
        exporter, tap = f"127.0.0.1:{args.exporter_port}", f"127.0.0.1:{args.tap_port}"
        config: dict[str, Any] = {
            "targets": [{"name": "vllm", "url": vllm.url}],
            "windows": ["1m", "5m"],
            "thresholds": {"min_draft_tokens": 20},
        }
        if args.proxy:
            config["tap"] = {"listen_address": tap}
        entry = f"http://{tap}" if args.proxy else vllm.url
        (work / "exporter.yaml").write_text(yaml.safe_dump(config))
        stack.enter_context(
            running(
                [
                    sys.executable,
                    "-m",
                    "spec_exporter",
                    "--config.file",
                    str(work / "exporter.yaml"),
                    "--web.listen-address",
                    exporter,
                ],
                f"http://{exporter}/healthz",
                work / "exporter.log",
            )
        )
        urls = {
            "vLLM" + ("" if args.proxy else " (with the middleware)"): vllm.url,
            **({"proxy tap (send requests here)": entry} if args.proxy else {}),
            "exporter metrics": f"http://{exporter}/metrics",
            "exporter readiness": f"http://{exporter}/readyz",
        }
        prometheus: PrometheusStack | None = None
        if shutil.which("prometheus") and shutil.which("prometheus-alertmanager"):
            jobs = [ScrapeJob("spec-exporter", [exporter]), ScrapeJob("vllm", [vllm.url.removeprefix("http://")])]
            null = {"route": {"receiver": "null", "group_wait": "0s"}, "receivers": [{"name": "null"}]}
            prometheus = stack.enter_context(
                prometheus_stack(
                    work / "prometheus",
                    rules=render_rules(DEMO_PARAMS),
                    jobs=jobs,
                    alertmanager=null,
                    interval="5s",
                    prometheus_port=args.prometheus_port,
                    alertmanager_port=args.alertmanager_port,
                )
            )
            urls |= {
                "Prometheus alerts": f"{prometheus.prometheus}/alerts",
                "Alertmanager": str(prometheus.alertmanager),
            }
        else:
            print(
                "demo: Prometheus/Alertmanager binaries not found (apt-get install prometheus "
                "prometheus-alertmanager): running without alerts",
                flush=True,
            )
        for what, url in urls.items():
            print(f"  {what:<26} {url}")
        route = "through the proxy tap" if args.proxy else "straight to vLLM (the middleware joins it)"
        print(
            f"demo: workload {route}: {', '.join(f'{int(s * 100)}% at T={t:g}' for t, s in MIX)}. Ctrl-C to stop.",
            flush=True,
        )
        print(
            "demo: watch the engine's average stay near the healthy line while the 0.3-0.5 and 0.7-1.0 bands accept "
            "well under 0.5; with Prometheus, SpecDecodeTemperatureBandNetNegative fires for them within about two "
            "minutes.\n",
            flush=True,
        )
        counts: dict[float, int] = {}
        worker = threading.Thread(target=_workload, args=(entry, stop, counts), daemon=True)
        worker.start()
        started = time.monotonic()
        try:
            while not stop.wait(args.interval):
                alerts = None
                if prometheus is not None:
                    with contextlib.suppress(OSError):
                        alerts = prometheus.alerts()
                with contextlib.suppress(OSError):
                    elapsed = time.monotonic() - started
                    print(
                        f"--- {elapsed:5.0f}s, {sum(counts.values())} requests "
                        f"({', '.join(f'T={t:g}: {n}' for t, n in sorted(counts.items()))})"
                    )
                    print(summary(_samples(f"http://{exporter}"), alerts), flush=True)
                if args.duration and time.monotonic() - started >= args.duration:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            print("\ndemo: stopping...", flush=True)
            worker.join(timeout=70)
    print("demo: stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
