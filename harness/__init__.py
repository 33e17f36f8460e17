"""Development harness: ports and processes (vLLM, Prometheus, Alertmanager, the exporter) on loopback.

One place for the demo, the benchmarks, the system and real test tiers and the scripts; never shipped in the
package (pyproject's package list is spec_exporter only).
"""
