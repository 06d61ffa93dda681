"""
Per-request cost of the request path, in process and without a network:
keep-alive requests fed through an in-memory transport to pluginserver's
site (its own llhttp channel) and to a bare twisted.web Resource (twisted's
HTTPChannel), side by side.

Quieter than wrk (no sockets, no second process), so it is the tool for
profiling and for comparing two versions of the request path; wrk
(bench/run.py) has the last word on throughput.

    python bench/inprocess.py            # microseconds per request, both sites
    python bench/inprocess.py --profile  # cProfile of pluginserver's path
    python bench/inprocess.py --limits   # with a rate limit never hit

bench/instructions.py counts the instructions of the same requests.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEST = b"GET /hello HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


class Ceiling(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"hello":"world"}'


def drive(site: Site, count: int) -> float:
    """
    Feed C{count} requests, one at a time, over one connection; return
    microseconds per request.
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    started = time.perf_counter()
    for _ in range(count):
        channel.dataReceived(REQUEST)
        transport.clear()
    elapsed = time.perf_counter() - started
    channel.connectionLost(None)
    return elapsed / count * 1e6


def pluginserver_site(limits: bool = False, plugins: str | None = None) -> Site:
    sys.path.insert(0, os.path.dirname(HERE))
    from twisted.internet import reactor

    from pluginserver.tap import Options, makeService

    directory = tempfile.mkdtemp()
    config = os.path.join(directory, "ps.ini")
    with open(config, "w") as f:
        f.write(
            "[server]\nlisten = tcp:0:interface=127.0.0.1\n"
            "allowed_hosts = list:localhost 127.0.0.1\n"
            f"[paths]\nplugins = {plugins or os.path.join(os.path.dirname(HERE), 'plugins')}\n"
            # A rate limit so high it is never hit: what asking it costs.
            + ("[limits]\nrate = float:1000000\nburst = int:1000000\n" if limits else "")
        )
    options = Options()
    options.parseOptions(["--config", config])
    service = makeService(options)
    # Module bodies run in the registry's import thread: turn the reactor
    # until the plugins are loaded (else every request is a 404).
    loaded: list[Any] = []
    service.registry.load_all().addBoth(loaded.append)
    deadline = time.monotonic() + 60
    while not loaded:
        if time.monotonic() > deadline:
            raise SystemExit("bench/inprocess.py: the plugins did not load within 60 s")
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    service.registry.close()  # the import thread is not needed any more
    site: Site = service.site
    check(site)
    return site


def check(site: Site) -> None:
    """
    Make sure the request measured is answered as /hello is: 200 and its
    JSON (a bench of 404s measures nothing).
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    channel.dataReceived(REQUEST)
    answer = transport.value()
    channel.connectionLost(None)
    if not (answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"hello":"world"}')):
        raise SystemExit(f"bench/inprocess.py: /hello answered {answer[:200]!r}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--limits", action="store_true", help="with a [limits] rate limit that is never hit"
    )
    parser.add_argument("--plugins", help="the plugins directory (default: the bundled plugins)")
    parser.add_argument(
        "--drive",
        choices=("pluginserver", "ceiling"),
        help="only answer --count requests on this site, and print nothing "
        "(what bench/instructions.py counts)",
    )
    args = parser.parse_args(argv)
    if args.drive == "ceiling":
        drive(Site(Ceiling()), args.count)
        return 0
    ours = pluginserver_site(args.limits, args.plugins)
    if args.drive == "pluginserver":
        drive(ours, args.count)
        return 0
    ceiling = Site(Ceiling())
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(drive, ours, args.count)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    results: dict[str, list[float]] = {"ceiling": [], "pluginserver": []}
    runs: list[tuple[str, Callable[[], float]]] = [
        ("ceiling", lambda: drive(ceiling, args.count)),
        ("pluginserver", lambda: drive(ours, args.count)),
    ]
    for _ in range(args.rounds):
        for name, run in runs:
            results[name].append(run())
    for name, values in results.items():
        print(f"{name:14s} {min(values):7.2f} us/request (best of {args.rounds})")
    ratio = min(results["ceiling"]) / min(results["pluginserver"])
    print(f"ceiling/pluginserver time ratio {ratio:.3f} (1.0 = as fast as the ceiling)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
