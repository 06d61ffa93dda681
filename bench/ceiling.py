"""
The ceiling: a bare twisted.web Resource answering every GET with the same
small JSON as the hello plugin, C{{"hello":"world"}} as application/json, on
the epoll reactor.  No routing, no plugin, no access log: the fastest a
twisted.web server can answer on this machine, so the pluginserver's
figures are read against it.

    python bench/ceiling.py PORT        # listens on 127.0.0.1:PORT
"""

from __future__ import annotations

import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web.http import Request  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Site  # noqa: E402

BODY = b'{"hello":"world"}'


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return BODY


class QuietSite(Site):
    """
    A Site that writes no access-log line (pluginserver writes none either
    unless [server] access_log is set).
    """

    def log(self, request: Request) -> None:
        pass


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[1].isdigit():
        raise SystemExit("usage: python bench/ceiling.py PORT")
    port = int(argv[1])
    reactor.listenTCP(port, QuietSite(Hello()), interface="127.0.0.1")  # type: ignore[arg-type]
    reactor.run()  # type: ignore[misc]


if __name__ == "__main__":
    main(sys.argv)
