"""Generated documentation stays in step with the code that it documents."""

from __future__ import annotations

from pathlib import Path

from spec_exporter import catalog

ROOT = Path(__file__).parents[2]


def test_metrics_doc_is_generated_from_the_catalogue() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == catalog.markdown(), "run `make docs`"


def test_every_catalogued_metric_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [spec.exposed_name for spec in catalog.ALL if f"`{spec.exposed_name}`" not in readme]
    assert not missing, f"README metrics table lacks {missing}"


def test_metric_names_follow_prometheus_naming() -> None:
    for spec in catalog.ALL:
        assert spec.name.startswith("spec_decode_") and ":" not in spec.name
        assert spec.name.endswith("_total") is False, "the _total suffix is added to counters on exposition"
        assert spec.help and spec.help[-1] == ".", spec.name
        if spec.type != "counter":
            assert not spec.exposed_name.endswith("_total")
