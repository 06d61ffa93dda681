"""
The "old" server for bench/run.py: pluginserver as it was at a git revision
(by default the last commit of the server built on twisted.web's
HTTPChannel), exported with C{git archive} into bench/.cache/ and installed
(a normal, non-editable C{pip install}) into a venv of its own there, so it
runs beside the working tree's server in the same benchmark run.

The venv is built once per commit and reused by later runs (a marker file
says the install finished; an interrupted one is redone).  Its
dependencies are pinned, as constraints, to the versions installed in the
running venv, so that the two servers differ in pluginserver's code only,
not in Twisted's or Klein's.

Standard library only.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

from _harness import BENCH_DIR, REPO_DIR, BenchError, log_tail

CACHE_DIR = os.path.join(BENCH_DIR, ".cache")
# The last commit of the server on twisted.web's HTTPChannel (issue 18).
DEFAULT_OLD_REV = "9ac1471"
_MARKER = "installed.json"


@dataclass(frozen=True)
class OldTree:
    """
    An installed old pluginserver: the revision asked for, the commit it
    names, that commit's subject line, and the venv it is installed in.
    """

    rev: str
    commit: str
    subject: str
    directory: str

    @property
    def venv(self) -> str:
        return os.path.join(self.directory, "venv")

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    @property
    def twistd(self) -> str:
        return os.path.join(self.venv, "bin", "twistd")

    @property
    def short(self) -> str:
        return self.commit[:7]


def old_env(env: dict[str, str]) -> dict[str, str]:
    """
    The environment for the old server: C{env} without what could make it
    import the working tree's pluginserver instead of its own.
    """
    env = dict(env)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", "-C", REPO_DIR, *args], capture_output=True, text=True, check=True
        )
    except FileNotFoundError as e:
        raise BenchError("git is not installed: cannot build the old server") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(f"git {' '.join(args)} failed:\n{e.stderr.strip()}") from e
    return result.stdout


def _constraints() -> list[str]:
    """
    C{name==version} of every distribution installed in the running venv,
    but pluginserver (and editable installs).
    """
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "freeze",
            "--exclude-editable",
            "--disable-pip-version-check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = []
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match and match.group(1).lower().replace("_", "-") != "pluginserver":
            lines.append(line.strip())
    return lines


def _installed(directory: str, commit: str) -> bool:
    marker = os.path.join(directory, _MARKER)
    try:
        with open(marker) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        recorded.get("commit") == commit
        and os.path.exists(os.path.join(directory, "venv", "bin", "twistd"))
        and os.path.exists(os.path.join(directory, "venv", "bin", "python"))
    )


def _run_logged(command: list[str], log: str, env: dict[str, str]) -> bool:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(command)}\n".encode())
        out.flush()
        status = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        ).returncode
    return status == 0


def prepare_old(rev: str, rebuild: bool = False) -> OldTree:
    """
    The old server at C{rev}: installed into bench/.cache/old-<commit>/venv,
    or the venv a previous run installed there reused.
    """
    found = subprocess.run(
        ["git", "-C", REPO_DIR, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    commit = found.stdout.strip()
    if found.returncode != 0 or not commit:
        raise BenchError(f"--old-rev {rev!r} names no commit of {REPO_DIR}")
    subject = _git("log", "-1", "--format=%s", commit).strip()
    directory = os.path.join(CACHE_DIR, f"old-{commit[:12]}")
    tree = OldTree(rev=rev, commit=commit, subject=subject, directory=directory)
    if not rebuild and _installed(directory, commit):
        return tree

    print(
        f"building the old server ({commit[:7]} {subject}) in {directory} ...",
        flush=True,
    )
    started = time.monotonic()
    shutil.rmtree(directory, ignore_errors=True)
    source = os.path.join(directory, "src")
    os.makedirs(source)
    archive = subprocess.run(
        ["git", "-C", REPO_DIR, "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit} failed:\n{archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(source, filter="data")

    log = os.path.join(directory, "install.log")
    env = old_env(dict(os.environ))
    # Run from the running venv, venv makes the new one on the base Python.
    if not _run_logged([sys.executable, "-m", "venv", tree.venv], log, env):
        raise BenchError(f"python -m venv {tree.venv} failed:\n{log_tail(log)}")
    constraints = os.path.join(directory, "constraints.txt")
    with open(constraints, "w") as f:
        f.write("\n".join(_constraints()) + "\n")
    install = [tree.python, "-m", "pip", "install", "--disable-pip-version-check"]
    if not _run_logged([*install, "-c", constraints, source], log, env):
        # A pinned version the index does not have: the same install unpinned.
        print(
            "  pip install with the running venv's versions as constraints failed; "
            "installing unpinned (see install.log)",
            flush=True,
        )
        if not _run_logged([*install, source], log, env):
            raise BenchError(f"pip install of the old tree failed:\n{log_tail(log)}")

    with open(os.path.join(directory, _MARKER), "w") as f:
        json.dump({"rev": rev, "commit": commit, "subject": subject}, f)
        f.write("\n")
    print(f"  built in {time.monotonic() - started:.0f} s", flush=True)
    return tree


def describe(tree: OldTree, cwd: str) -> dict[str, str]:
    """
    Where the old venv imports pluginserver from and its Twisted and Klein
    versions; fails when it would import the working tree's pluginserver.
    """
    code = (
        "import json, pluginserver, twisted, klein; "
        "print(json.dumps({'pluginserver': pluginserver.__file__, "
        "'twisted': twisted.__version__, 'klein': klein.__version__}))"
    )
    result = subprocess.run(
        [tree.python, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=old_env(dict(os.environ)),
    )
    if result.returncode != 0:
        raise BenchError(f"the old venv cannot import pluginserver:\n{result.stderr}")
    found: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    if not os.path.realpath(found["pluginserver"]).startswith(os.path.realpath(tree.venv)):
        raise BenchError(
            f"the old venv imports pluginserver from {found['pluginserver']}, not its own install"
        )
    return found
