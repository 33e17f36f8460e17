#!/usr/bin/env python3
"""Replay the container image's build and start-up without a container engine.

    python scripts/image_smoke.py          # exit 0 when the image would build, start, answer and stop

No Docker here, so this reads the Dockerfile and does what an engine would, as far as that is possible outside one:
the build context comes from .dockerignore, the build stage's COPY lines stage files under a scratch root, its RUN
lines run there (container paths rewritten to the scratch root), then everything the final stage does not COPY
--from the build stage is deleted, and the ENTRYPOINT starts with the final stage's ENV, as its USER when this runs
as root. The final stage's own RUN lines change the base image (users, pip) and are listed, not replayed. The
HEALTHCHECK command runs against the started process. tests/unit/test_image.py asserts on the returned report.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# Run as a script, the repository root is not on the path; the shared harness lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness.ports import free_port

REPO = Path(__file__).resolve().parent.parent
# The environment of the python:*-slim base images before the Dockerfile adds to it.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Bound every wait on the started process; nothing here waits for time to pass.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with continuation lines joined and comments dropped as Docker does."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "ARG" and not stages:
            name, _, default = ins.args.partition("=")
            global_args[name.strip()] = default.strip()
        elif ins.keyword == "FROM":
            words = ins.args.split()
            base = _expand(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif stages:
            stages[-1].instructions.append(ins)
    return global_args, stages


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B="two words"` → {"A": "1", "B": "two words"}, expanding $VARS from the stage so far."""
    out = {}
    for word in shlex.split(args):
        name, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV {args!r}: only the KEY=VALUE form is understood")
        out[name] = _expand(value, {**env, **out})
    return out


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line of a .dockerignore, in order, translated as moby's patternmatcher does."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            if c == "*":
                regex += "[^/]*"
            elif c == "?":
                regex += "[^/]"
            elif c == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end
            else:
                regex += re.escape(c)
            i += 1
        rules.append((exception, re.compile(f"^{regex}$")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is excluded when the last rule matching it, or any of its parent directories, is not an exception."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for exception, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not exception
    return result


def context_files(repo: Path) -> list[str]:
    """Every file `docker build` would send from `repo`, as POSIX paths relative to it."""
    ignore = repo / ".dockerignore"
    rules = dockerignore_rules(ignore.read_text()) if ignore.exists() else []
    files = []
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = Path(dirpath).relative_to(repo).as_posix()
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not ignored(rel, rules):
                files.append(rel)
    return sorted(files)


def _copy_args(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    words = ins.exec_form() or shlex.split(ins.args)
    flags = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    if len(words) < 2:
        raise ValueError(f"line {ins.line}: COPY needs a source and a destination")
    return flags, words[:-1], words[-1]


def _container_path(path: str, workdir: str) -> str:
    """A COPY or WORKDIR path made absolute; a trailing slash (meaning "into this directory") is kept."""
    absolute = path if path.startswith("/") else str(PurePosixPath(workdir) / path)
    return absolute + "/" if path.endswith("/") and not absolute.endswith("/") else absolute


@dataclass
class Image:
    """What the replay found; tests assert on it."""

    stages: list[Stage]
    context: list[str]
    root: Path
    user: tuple[int, int] | None
    env: dict[str, str]
    entrypoint: list[str]
    healthcheck: list[str]
    exposed: list[int]
    wheel_files: list[str]
    image_files: list[str]
    not_replayed: list[str]

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")


def _rewrite(text: str, paths: list[str], root: Path) -> str:
    for p in sorted(paths, key=len, reverse=True):
        text = re.sub(rf"(?<![\w./-]){re.escape(p)}(?=$|[/\s\"':])", str(root) + p, text)
    return text


def build(
    repo: Path, root: Path, *, python: str, pip_python: str, build_args: Mapping[str, str] | None = None
) -> Image:
    """Stage, build and trim the image under `root`, a scratch directory standing in for `/`. `build_args` are
    `docker build --build-arg`s: a build-stage ARG is in the environment of the RUN steps after it, as in Docker."""
    _, stages = parse_dockerfile((repo / "Dockerfile").read_text())
    final = stages[-1]
    context = context_files(repo)
    from_copies = [args for args in map(_copy_args, final.all("COPY")) if "from" in args[0]]
    build_names = {flags["from"] for flags, _, _ in from_copies}
    (build_stage,) = [s for s in stages if s.name in build_names]
    kept = []
    for _, sources, dest in from_copies:
        for source in sources:
            if source.rstrip("/") != dest.rstrip("/"):
                raise ValueError(f"COPY --from {source} {dest}: the venv's absolute shebangs need the same path")
            kept.append(source.rstrip("/"))

    # The build stage: COPY from the context, then RUN with container paths pointing into the scratch root.
    env = dict(BASE_ENV)
    args: dict[str, str | None] = {}
    workdir = "/"
    created = list(kept)
    for ins in build_stage.instructions:
        if ins.keyword == "ARG":
            name, sep, default = ins.args.partition("=")
            args[name.strip()] = (build_args or {}).get(name.strip(), default.strip() if sep else None)
        elif ins.keyword == "ENV":
            env.update(parse_env(ins.args, env))
        elif ins.keyword == "WORKDIR":
            workdir = _container_path(ins.args.strip(), workdir)
            created.append(workdir)
        elif ins.keyword == "COPY":
            _, sources, dest = _copy_args(ins)
            dest = _container_path(dest, workdir)
            created.append(dest.rstrip("/"))
            for source in sources:
                _copy_from_context(repo, context, source, dest, root)
        elif ins.keyword == "RUN":
            words = ins.exec_form()
            command = [_rewrite(w, created, root) for w in words] if words else ["sh", "-c", ins.args]
            if not words:
                command[2] = _rewrite(command[2], created, root)
            run_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
            run_env.update({k: v for k, v in env.items() if k != "PATH"})
            # An ARG nobody set is unset in the RUN, whatever the replaying shell has.
            run_env.update({k: v for k, v in args.items() if v is not None})
            for k in [k for k, v in args.items() if v is None]:
                run_env.pop(k, None)
            # pip's cache only changes how long this takes, not what gets installed: keep it here.
            run_env.pop("PIP_NO_CACHE_DIR", None)
            run_env.update(PYTHON=python, PIP_PYTHON=pip_python)
            cwd = root / workdir.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
            subprocess.run(command, cwd=cwd, env=run_env, check=True)
        elif ins.keyword != "LABEL":
            raise ValueError(f"line {ins.line}: the smoke replay does not know build-stage {ins.keyword}")

    wheels = sorted(root.rglob("spec_exporter-*.whl"))
    wheel_files = sorted(zipfile.ZipFile(wheels[0]).namelist()) if wheels else []
    _keep_only(root, root, kept)

    final_env = dict(BASE_ENV)
    user = None
    entrypoint: list[str] = []
    healthcheck: list[str] = []
    exposed: list[int] = []
    not_replayed = []
    for ins in final.instructions:
        if ins.keyword == "ENV":
            final_env.update(parse_env(ins.args, final_env))
        elif ins.keyword == "USER":
            uid, _, gid = ins.args.strip().partition(":")
            user = (int(uid), int(gid or uid)) if uid.isdigit() and (not gid or gid.isdigit()) else None
            if user is None:
                raise ValueError(f"USER {ins.args}: use a numeric uid:gid so runAsNonRoot can verify it")
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = ins.exec_form() or []
        elif ins.keyword == "HEALTHCHECK":
            _, _, cmd = ins.args.partition(" CMD ")
            healthcheck = json.loads(cmd.strip()) if cmd.strip().startswith("[") else ["sh", "-c", cmd.strip()]
        elif ins.keyword == "EXPOSE":
            exposed += [int(p.split("/")[0]) for p in ins.args.split()]
        elif ins.keyword == "RUN":
            not_replayed.append(ins.args)
    final_env["PATH"] = _rewrite(final_env["PATH"], kept, root)
    image_files = sorted("/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
    return Image(
        stages=stages,
        context=context,
        root=root,
        user=user,
        env=final_env,
        entrypoint=entrypoint,
        healthcheck=healthcheck,
        exposed=exposed,
        wheel_files=wheel_files,
        image_files=image_files,
        not_replayed=not_replayed,
    )


def _keep_only(root: Path, directory: Path, kept: list[str]) -> None:
    """Delete everything under `directory` that is neither a kept container path, inside one, nor above one."""
    for entry in directory.iterdir():
        path = "/" + entry.relative_to(root).as_posix()
        if any(path == k or path.startswith(k + "/") for k in kept):
            continue
        if entry.is_dir() and not entry.is_symlink() and any(k.startswith(path + "/") for k in kept):
            _keep_only(root, entry, kept)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _copy_from_context(repo: Path, context: list[str], source: str, dest: str, root: Path) -> None:
    if any(c in source for c in "*?["):
        raise ValueError(f"COPY {source}: wildcards are not replayed")
    src = source.strip("/").removeprefix("./")
    target = root / dest.lstrip("/")
    matches = [f for f in context if f == src or f.startswith(src + "/")]
    if not matches:
        raise FileNotFoundError(f"COPY {source}: not in the build context (check .dockerignore)")
    for f in matches:
        if f == src:  # a file: into the directory if dest ends with /, else as dest
            out = target / PurePosixPath(f).name if dest.endswith("/") else target
        else:  # a directory: its contents go into dest
            out = target / PurePosixPath(f).relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, out)


@dataclass
class Run:
    """What the started entrypoint did."""

    config_check: subprocess.CompletedProcess[str]
    healthz: int
    readyz: int
    metrics: str
    tap_status: int
    tap_body: str
    healthcheck: subprocess.CompletedProcess[str]
    healthcheck_after_stop: subprocess.CompletedProcess[str]
    stop_returncode: int
    uid: int
    stderr: str


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start(image: Image) -> Run:
    """Run the entrypoint the way the container would, on loopback ports, then stop it with SIGTERM."""
    config = image.host("/etc/spec-exporter/config.yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    upstream = free_port()  # nothing listens there: a vLLM that is not up yet
    config.write_text(f"targets:\n  - name: vllm\n    url: http://127.0.0.1:{upstream}\n")
    web, tap = free_port(), free_port()
    env = {
        **image.env,
        "HOME": "/nonexistent",
        "SPEC_EXPORTER_WEB_LISTEN_ADDRESS": f"127.0.0.1:{web}",
        "SPEC_EXPORTER_CONFIG_FILE": str(config),
    }
    as_user: dict[str, object] = {}
    if image.user is not None and os.geteuid() == 0:
        as_user = {"user": image.user[0], "group": image.user[1], "extra_groups": []}
    exe = shutil.which(image.entrypoint[0], path=env["PATH"])
    if exe is None:
        raise FileNotFoundError(f"ENTRYPOINT {image.entrypoint[0]} is not on the image's PATH {env['PATH']}")
    command = [exe, *image.entrypoint[1:]]
    checked = subprocess.run(
        [*command, "--config.check"], env=env, capture_output=True, text=True, timeout=60, **as_user
    )
    proc = subprocess.Popen(
        [*command, f"--tap.listen-address=127.0.0.1:{tap}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **as_user,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        healthz = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthz, _ = _get(f"http://127.0.0.1:{web}/healthz")
                break
            except OSError:
                time.sleep(0.05)  # polling a condition, bounded by the deadline
        if healthz == 0:
            raise RuntimeError(f"the entrypoint never answered /healthz (exit {proc.poll()})")
        readyz, _ = _get(f"http://127.0.0.1:{web}/readyz")
        _, metrics = _get(f"http://127.0.0.1:{web}/metrics")
        tap_status, tap_body = _get(f"http://127.0.0.1:{tap}/health")
        health_command = [shutil.which(image.healthcheck[0], path=env["PATH"]) or image.healthcheck[0]]
        health_command += image.healthcheck[1:]

        def healthcheck() -> subprocess.CompletedProcess[str]:
            return subprocess.run(health_command, env=env, capture_output=True, text=True, timeout=30, **as_user)

        health = healthcheck()
        uid = _uid_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=STOP_TIMEOUT)
        # With nothing listening the same check must fail, or it proves nothing.
        health_after_stop = healthcheck()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return Run(
        checked, healthz, readyz, metrics, tap_status, tap_body, health, health_after_stop, proc.returncode, uid, stderr
    )


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise RuntimeError("no Uid line")


def interpreters() -> tuple[str, str]:
    """(venv base, pip runner). As root, the venv is built on a Python the image's unprivileged user can execute:
    one outside root's private home. Elsewhere, this very interpreter does both."""
    if os.geteuid() == 0:
        for candidate in ("/usr/local/bin/python3.11", "/usr/bin/python3.11", "/usr/bin/python3"):
            path = Path(candidate)
            if path.exists() and _world_executable(path.resolve()):
                return str(path), sys.executable
    return sys.executable, sys.executable


def _world_executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXOTH) and all(d.stat().st_mode & stat.S_IXOTH for d in path.parents)


def scratch_root() -> Path:
    # Readable by the image's user, unlike pytest's private tmp directories.
    root = Path(tempfile.mkdtemp(prefix="spec-exporter-image-"))
    root.chmod(0o755)
    return root


def main() -> int:
    root = scratch_root()
    try:
        python, pip_python = interpreters()
        image = build(REPO, root, python=python, pip_python=pip_python)
        print(f"context: {len(image.context)} files; wheel: {len(image.wheel_files)} files")
        for cmd in image.not_replayed:
            print(f"not replayed (changes the base image): RUN {cmd}")
        bad = [f for f in image.context + image.wheel_files if is_dev_file(f)]
        run = start(image)
        print(f"--config.check: exit {run.config_check.returncode}")
        print(f"/healthz {run.healthz}, /readyz {run.readyz}, tap {run.tap_status}, uid {run.uid}")
        print(f"HEALTHCHECK: exit {run.healthcheck.returncode} (after stop: {run.healthcheck_after_stop.returncode})")
        print(f"SIGTERM: exit {run.stop_returncode}")
        ok = (
            not bad
            and run.config_check.returncode == 0
            and run.healthz == 200
            and run.healthcheck.returncode == 0
            and run.healthcheck_after_stop.returncode != 0
            and run.stop_returncode == 0
        )
        if bad:
            print("files that must not be in the image:", *bad, sep="\n  ")
        if not ok:
            print(run.stderr, file=sys.stderr)
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


DEV_PATTERNS = ("tests/*", "*/tests/*", "*__pycache__*", "*.pyc", ".git/*", ".venv/*", "*.egg-info/*", ".*_cache/*")


def is_dev_file(path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in DEV_PATTERNS)


if __name__ == "__main__":
    sys.exit(main())
