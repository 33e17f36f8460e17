"""The monitoring mixin: recording and alerting rules, and Grafana dashboards, generated from code.

`python -m mixin` writes alerts/*.yaml and dashboards/*.json with the default parameters, and the Helm chart's
copies (helm/spec-exporter/templates/prometheusrule.yaml with Helm expressions for the parameters, and
helm/spec-exporter/dashboards/); tests regenerate them and compare, so no committed file drifts from this source.
"""
