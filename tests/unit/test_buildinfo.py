"""build_info's revision and branch: recorded by the image build, else asked of git in a checkout, else unknown."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from spec_exporter import __version__, buildinfo
from spec_exporter.buildinfo import BuildInfo

ROOT = Path(__file__).parents[2]
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=True, env=env
    )
    return result.stdout.strip()


def checkout(tmp_path: Path, branch: str = "release-1.2") -> tuple[Path, str]:
    """A real git checkout holding a `spec_exporter/` package at its root, with one commit."""
    repo = tmp_path / "repo"
    (repo / "spec_exporter").mkdir(parents=True)
    (repo / "spec_exporter" / "__init__.py").write_text("")
    git(repo, "init", "--quiet", f"--initial-branch={branch}")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "--quiet", "-m", "one")
    return repo / "spec_exporter", git(repo, "rev-parse", "HEAD")


def test_the_build_file_is_what_the_image_reports(tmp_path: Path) -> None:
    (tmp_path / buildinfo.BUILD_FILE).write_text("revision=0123abc\nbranch=main\n")
    assert buildinfo.read(tmp_path) == BuildInfo("0123abc", "main")


def test_a_build_file_with_only_a_revision_leaves_the_branch_unknown(tmp_path: Path) -> None:
    (tmp_path / buildinfo.BUILD_FILE).write_text("revision=0123abc\nbranch=\n")
    assert buildinfo.read(tmp_path) == BuildInfo("0123abc", "unknown")


@needs_git
def test_a_checkout_reports_its_head_and_branch(tmp_path: Path) -> None:
    package, head = checkout(tmp_path)
    assert buildinfo.read(package) == BuildInfo(head, "release-1.2")


@needs_git
def test_the_build_file_wins_over_git(tmp_path: Path) -> None:
    package, _ = checkout(tmp_path)
    (package / buildinfo.BUILD_FILE).write_text("revision=fromimage\nbranch=b\n")
    assert buildinfo.read(package) == BuildInfo("fromimage", "b")


@needs_git
def test_an_installed_copy_inside_another_repository_does_not_report_that_repository(tmp_path: Path) -> None:
    package, _ = checkout(tmp_path)
    nested = package.parent / ".venv" / "lib" / "site-packages" / "spec_exporter"
    nested.mkdir(parents=True)
    assert buildinfo.read(nested) == BuildInfo("unknown", "unknown")


def test_outside_a_checkout_everything_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "spec_exporter").mkdir()
    assert buildinfo.read(tmp_path / "spec_exporter") == BuildInfo("unknown", "unknown")


def test_a_missing_git_binary_is_unknown_and_silent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "spec_exporter").mkdir()
    info = buildinfo.read(tmp_path / "spec_exporter", git=str(tmp_path / "no-such-git"))
    assert info == BuildInfo("unknown", "unknown")
    assert capfd.readouterr() == ("", "")


@needs_git
def test_a_broken_git_directory_is_unknown_and_silent(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".git").write_text("gitdir: /nonexistent/worktree\n")
    (tmp_path / "spec_exporter").mkdir()
    assert buildinfo.read(tmp_path / "spec_exporter") == BuildInfo("unknown", "unknown")
    assert capfd.readouterr() == ("", "")  # git's "not a git repository" stays out of the exporter's stderr


def test_a_hanging_git_is_abandoned_after_the_timeout(tmp_path: Path) -> None:
    # An executable that never answers (as git on a stalled network filesystem): without the timeout this test
    # would hang for the full sleep instead of returning unknown.
    (tmp_path / ".git").mkdir()
    (tmp_path / "spec_exporter").mkdir()
    hang = tmp_path / "hanging-git"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    assert buildinfo.read(tmp_path / "spec_exporter", git=str(hang), timeout=0.2) == BuildInfo("unknown", "unknown")


@needs_git
def test_this_checkout_reports_its_own_head() -> None:
    if not (ROOT / ".git").exists() or (ROOT / "spec_exporter" / buildinfo.BUILD_FILE).exists():
        pytest.skip("not running from a git checkout without a build file")
    assert buildinfo.read() == BuildInfo(git(ROOT, "rev-parse", "HEAD"), git(ROOT, "rev-parse", "--abbrev-ref", "HEAD"))


def test_build_info_values_line_up_with_their_labels() -> None:
    values = dict(zip(buildinfo.BUILD_INFO_LABELS, buildinfo.build_info_values(), strict=True))
    assert values["version"] == __version__
    assert values["python_version"] == platform.python_version()
    assert values["revision"] == buildinfo.revision() and values["branch"] == buildinfo.branch()
