"""The monitoring mixin: recording and alerting rules, and Grafana dashboards, generated from code.

`python -m mixin` writes alerts/*.yaml and dashboards/*.json with the default parameters; tests regenerate them
and compare, so the committed files never drift from this source.
"""
