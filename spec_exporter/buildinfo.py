"""Which source the running exporter was built from: the git revision and branch, as Prometheus' own binaries report.

An image build records them (Dockerfile `ARG REVISION` / `ARG BRANCH`, written by scripts/image-install.sh into the
installed package as `_build.txt`, never committed); a process started from a git checkout asks git; anything else
is "unknown". Looked up once per process: a scrape must never wait for git.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from spec_exporter import __version__

BUILD_FILE = "_build.txt"
UNKNOWN = "unknown"
PACKAGE_DIR = Path(__file__).resolve().parent
# git answers in milliseconds; a hung one (a network filesystem, a credential prompt) must not hold up start-up.
GIT_TIMEOUT = 2.0


@dataclass(frozen=True)
class BuildInfo:
    revision: str = UNKNOWN
    branch: str = UNKNOWN


def _from_build_file(path: Path) -> BuildInfo | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and value.strip():
            fields[key.strip()] = value.strip()
    return BuildInfo(fields.get("revision", UNKNOWN), fields.get("branch", UNKNOWN))


def _git(checkout: Path, *args: str, git: str, timeout: float) -> str | None:
    try:
        result = subprocess.run(
            [git, "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = result.stdout.strip()
    return out if result.returncode == 0 and out else None


def read(package_dir: Path = PACKAGE_DIR, *, git: str = "git", timeout: float = GIT_TIMEOUT) -> BuildInfo:
    """The build file beside the package, else git when the package sits at the root of a checkout, else unknown."""
    recorded = _from_build_file(package_dir / BUILD_FILE)
    if recorded is not None:
        return recorded
    checkout = package_dir.parent
    # Only our own checkout: an installed copy inside some other repository (a venv under a project) would
    # otherwise report that repository's revision.
    if not (checkout / ".git").exists():
        return BuildInfo()
    revision = _git(checkout, "rev-parse", "HEAD", git=git, timeout=timeout)
    if revision is None:
        return BuildInfo()
    branch = _git(checkout, "rev-parse", "--abbrev-ref", "HEAD", git=git, timeout=timeout)
    return BuildInfo(revision, branch or UNKNOWN)


@functools.cache
def current() -> BuildInfo:
    return read()


def revision() -> str:
    return current().revision


def branch() -> str:
    return current().branch


BUILD_INFO_LABELS = ("version", "revision", "branch", "python_version")


def build_info_values() -> list[str]:
    """The values of `spec_decode_exporter_build_info`'s labels, in BUILD_INFO_LABELS order."""
    return [__version__, revision(), branch(), platform.python_version()]
