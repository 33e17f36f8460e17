#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine: Prometheus' binaries (promtool, prometheus,
# alertmanager) and Chromium from the distribution, and the project with its test extras in ./.venv. Safe to re-run.
#   --python-only: only ./.venv, for the unit tier, which needs neither Prometheus nor Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
python_only=false
[ "${1:-}" = "--python-only" ] && python_only=true

# Debian packages, each installed when a tool it brings is missing: Prometheus' four, and Chromium for the probe's
# HTML report, which is checked in a real headless browser, and systemd-analyze for the bare-metal recipe's unit.
packages=""
for tool in promtool prometheus prometheus-alertmanager amtool; do
  command -v "$tool" >/dev/null 2>&1 || packages="prometheus prometheus-alertmanager"
done
for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null 2>&1 || packages="$packages chromium chromium-driver"
done
command -v systemd-analyze >/dev/null 2>&1 || packages="$packages systemd"
if [ -n "$packages" ] && ! $python_only; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # shellcheck disable=SC2086 # word splitting: one package per word
  $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
