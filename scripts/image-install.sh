#!/bin/sh
# Install spec-exporter from a source tree into a fresh virtualenv: the container image's build step.
# The Dockerfile runs exactly this, and scripts/image_smoke.py replays it outside a container, so the image and its
# smoke test cannot install two different ways.
#
#   image-install.sh SRC PREFIX
#
# SRC is the source tree (pyproject.toml, README.md, spec_exporter/); PREFIX is the virtualenv to create. The wheel is
# left in $SRC/dist so that the smoke test can list what went into the image.
# PYTHON is the interpreter the venv is built on (the one the image runs); PIP_PYTHON the one whose pip installs into
# it. In the image both are the base image's python.
# REVISION and BRANCH (the Dockerfile's build args) are recorded in the installed package for build_info
# (spec_exporter/buildinfo.py); left unset, nothing is written and the exporter reports "unknown".
set -eu

src=$1
prefix=$2
python=${PYTHON:-python}
pip_python=${PIP_PYTHON:-$python}

# No pip in the runtime venv: it is a build tool, and nothing installs anything at run time.
"$python" -m venv --without-pip "$prefix"
rm -rf "$src/dist"
"$pip_python" -m pip wheel --quiet --no-deps --wheel-dir "$src/dist" "$src"
"$pip_python" -m pip --python "$prefix/bin/python" install --quiet "$src"/dist/spec_exporter-*.whl

if [ -n "${REVISION:-}" ] || [ -n "${BRANCH:-}" ]; then
    purelib=$("$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    printf 'revision=%s\nbranch=%s\n' "${REVISION:-unknown}" "${BRANCH:-unknown}" > "$purelib/spec_exporter/_build.txt"
fi
