#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine: Prometheus' binaries (promtool, prometheus,
# alertmanager) from the distribution, and the project with its test extras in ./.venv. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=""
for tool in promtool prometheus prometheus-alertmanager amtool; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
