# The test command in the README and .ci/run is `make test`; it installs what it needs first.
PY := .venv/bin/python

.PHONY: test deps lint unit golden mixin docs bench

test: deps lint
	$(PY) -m pytest -q

deps:
	scripts/install-test-deps.sh

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

unit: deps
	$(PY) -m pytest -q -m "not system"

# Rewrite tests/golden/*.prom from the current code; review the diff before committing.
golden: deps
	UPDATE_GOLDEN=1 $(PY) -m pytest -q tests/test_exposition.py

# Regenerate alerts/*.yaml and dashboards/*.json from mixin/.
mixin: deps
	$(PY) -m mixin

docs: deps
	$(PY) -c "from spec_exporter.catalog import markdown; open('docs/metrics.md', 'w').write(markdown())"

bench: deps
	$(PY) -m bench.bench_parse
