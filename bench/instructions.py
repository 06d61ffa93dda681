"""
Instructions per request, counted by valgrind's callgrind: the one measure
of the request path's cost that the noise of a shared machine does not
move, for comparing two versions of it.

Each site answers bench/inprocess.py's keep-alive /hello in process, under
callgrind, twice: 200 requests and 3,200.  The difference, divided by the
3,000 requests between them, leaves out start-up and the first requests
(imports, caches).  Hash randomisation is off (PYTHONHASHSEED=0), as it
moves the count by about 1%.  pluginserver serves the hello plugin alone:
systeminfo's sampler thread would be counted too.

    python bench/instructions.py                 # pluginserver and the ceiling
    python bench/instructions.py --only pluginserver

Needs valgrind (Debian: apt-get install valgrind); about a minute per site.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FEW, MANY = 200, 3200


def collected(site: str, requests: int, plugins: str) -> int:
    """
    The instructions callgrind counts for a whole run of C{requests}.
    """
    with tempfile.TemporaryDirectory() as directory:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={os.path.join(directory, 'callgrind.out')}",
            sys.executable,
            os.path.join(HERE, "inprocess.py"),
            "--drive",
            site,
            "--count",
            str(requests),
            "--plugins",
            plugins,
        ]
        run = subprocess.run(
            command,
            env=dict(os.environ, PYTHONHASHSEED="0"),
            capture_output=True,
            text=True,
            timeout=1800,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"bench/instructions.py: {site} failed:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_request(site: str, plugins: str) -> int:
    return (collected(site, MANY, plugins) - collected(site, FEW, plugins)) // (MANY - FEW)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--only", choices=("pluginserver", "ceiling"))
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as plugins:
        shutil.copy(os.path.join(os.path.dirname(HERE), "plugins", "hello.py"), plugins)
        for site in ("pluginserver", "ceiling"):
            if args.only in (None, site):
                print(f"{site:14s} {per_request(site, plugins):8,d} instructions per /hello")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
