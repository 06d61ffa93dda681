"""
Plugin routes answered without twisted.web's Request (L{ParsedRequest}),
and the twisted.web Request made from a parsed request where one is needed
(L{pluginserver.site.web_request}).

What a client sees must not depend on which of the two answered: the same
head, byte for byte, and every header the web layer set before it asked
for twisted.web's Request.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pluginserver import testing
from pluginserver.answers import INTERNAL_ERROR
from pluginserver.site import PluginServerSite
from tests.helpers import PluginDir

PEER = IPv4Address("TCP", "127.0.0.1", 40000)

ANSWERS = textwrap.dedent(
    """
    import asyncio
    import os

    from pluginserver import EventStream, FileResponse, Plugin, Response


    class P(Plugin):
        def handle(self, request):
            kind = request.subpath
            if kind == "stream":
                return EventStream(iter([{"n": 1}]))
            if kind == "lines":
                return Response(iter(["a\\n", "b\\n"]))
            if kind == "file":
                return FileResponse(os.path.join(os.path.dirname(__file__), "p.py"))
            if kind == "later":
                return self.later()
            if kind == "unnamed":
                return 299, {"kind": kind}
            return {"kind": kind}

        async def later(self):
            await asyncio.sleep(0)
            return {"kind": "later"}
    """
)


def exchange(site: PluginServerSite, data: bytes) -> bytes:
    """
    What C{site} writes back on one connection to which C{data} was sent.
    """
    channel = site.buildProtocol(PEER)
    assert channel is not None
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    written: bytes = transport.value()
    channel.connectionLost(None)  # type: ignore[arg-type]
    return written


def undated(data: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*\r\n", b"\r\nDate: -\r\n", data)


class WireTests(TestCase):
    """
    The answers a plugin route's plain answer writes, byte for byte.
    """

    @defer.inlineCallbacks
    def serve(self, **settings: Any) -> Any:
        plugins = PluginDir(self)
        plugins.write("p", ANSWERS)
        self.server = yield testing.serve(self, plugins.path, **settings)

    @defer.inlineCallbacks
    def test_aPlainAnswer(self) -> Any:
        yield self.serve()
        written = exchange(self.server.site, b"GET /p/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(
            undated(written),
            b"HTTP/1.1 200 OK\r\nDate: -\r\nContent-Type: application/json\r\n"
            b"X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n"
            b'Content-Length: 12\r\n\r\n{"kind":"x"}',
        )
        self.assertRegex(written, rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n")

    @defer.inlineCallbacks
    def test_headGetsTheLengthAndNoBody(self) -> Any:
        yield self.serve()
        written = exchange(self.server.site, b"HEAD /p/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 200 OK\r\n"), written)
        self.assertTrue(written.endswith(b"\r\nContent-Length: 12\r\n\r\n"), written)

    @defer.inlineCallbacks
    def test_http10AndConnectionClose(self) -> Any:
        """
        HTTP/1.0 is answered in HTTP/1.0; an HTTP/1.1 client that asked to
        close is told the connection closes.
        """
        yield self.serve()
        written = exchange(self.server.site, b"GET /p/x HTTP/1.0\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.0 200 OK\r\n"), written)
        self.assertTrue(written.endswith(b'{"kind":"x"}'), written)
        written = exchange(
            self.server.site,
            b"GET /p/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        self.assertIn(b"\r\nConnection: close\r\n", written)
        self.assertTrue(written.endswith(b'{"kind":"x"}'), written)

    @defer.inlineCallbacks
    def test_theFirstAnswerThatClosesCarriesTheDate(self) -> Any:
        """
        An answer whose headers were set while its head was parsed (the
        Connection: close of a client that asked for it, or of an Upgrade)
        carries the Date of when it is answered, even the first answer of
        a new server.
        """
        yield self.serve()
        for extra in (b"Connection: close\r\n", b"Connection: upgrade\r\nUpgrade: x\r\n"):
            written = exchange(
                PluginServerSite(self.server.resource),
                b"GET /p/x HTTP/1.1\r\nHost: localhost\r\n" + extra + b"\r\n",
            )
            self.assertRegex(written, rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n")
            self.assertIn(b"\r\nConnection: close\r\n", written)
            self.assertTrue(written.endswith(b'{"kind":"x"}'), written)

    @defer.inlineCallbacks
    def test_aStatusTwistedWebDoesNotName(self) -> Any:
        yield self.serve()
        written = exchange(self.server.site, b"GET /p/unnamed HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 299 Unknown Status\r\n"), written)

    @defer.inlineCallbacks
    def test_errorsOfTheGate(self) -> Any:
        yield self.serve(allowed_hosts=("localhost",))
        written = exchange(self.server.site, b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 404 Not Found\r\n"), written)
        self.assertTrue(written.endswith(b'\r\n\r\n{"error":"not found"}'), written)
        written = exchange(self.server.site, b"DELETE /p/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), written)
        self.assertIn(b"\r\nAllow: GET, HEAD, POST\r\n", written)
        written = exchange(self.server.site, b"GET /p/x HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 400 Bad Request\r\n"), written)


class PromotedTests(TestCase):
    """
    What the web layer set before it asked for twisted.web's Request (for
    a stream, a file, a later answer) is in the answer that Request sends.
    """

    @defer.inlineCallbacks
    def test_corsHeadersReachEveryKindOfAnswer(self) -> Any:
        plugins = PluginDir(self)
        plugins.write("p", ANSWERS)
        server = yield testing.serve(
            self, plugins.path, cors_enabled=True, cors_origins=("https://a.example",)
        )
        for kind in ("x", "stream", "lines", "file", "later"):
            answer = yield server.get(f"/p/{kind}", headers={"Origin": "https://a.example"})
            self.assertEqual(answer.status, 200, kind)
            self.assertEqual(answer.header("access-control-allow-origin"), "https://a.example")
            self.assertEqual(answer.header("vary"), "Origin", kind)
            self.assertEqual(answer.header("x-content-type-options"), "nosniff", kind)
        self.assertEqual(answer.json(), {"kind": "later"})

    @defer.inlineCallbacks
    def test_aPipelinedPlainAnswerWaitsForAStream(self) -> Any:
        """
        A stream answered through twisted.web's Request, then a plain answer
        pipelined behind it: in order, on one connection.
        """
        plugins = PluginDir(self)
        plugins.write("p", ANSWERS)
        server = yield testing.serve(self, plugins.path)
        written = exchange(
            server.site,
            b"GET /p/lines HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /p/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        reading = testing.read_answers(written)
        self.assertIsNone(reading.error)
        first, second = reading.answers
        self.assertEqual(first.chunks, (b"a\n", b"b\n"))
        self.assertEqual(second.json(), {"kind": "x"})


class _Recorder(Resource):
    """
    A root that is not the web layer's: it records what request it was
    given.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.given: list[object] = []

    def render_GET(self, request: Request) -> bytes:
        self.given.append(request)
        return b"{}"


class _Failing(Resource):
    """
    A root that takes parsed requests and fails on the first.
    """

    isLeaf = True
    rendersParsedRequests = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render(self, request: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("a bug")
        request.setHeader(b"x-second", b"yes")
        request.write(b'{"second":')
        request.write(b"true}")
        request.finish()
        request.finish()  # a second finish is ignored, as twisted.web ignores it
        return NOT_DONE_YET


class RootTests(SynchronousTestCase):
    def test_aRootThatDoesNotTakeThemGetsTwistedWebsRequest(self) -> None:
        root = _Recorder()
        written = exchange(PluginServerSite(root), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(written.startswith(b"HTTP/1.1 200 OK\r\n"), written)
        (given,) = root.given
        self.assertIsInstance(given, Request)

    def test_aFailureIsA500AndTheConnectionServesOn(self) -> None:
        """
        A failure no layer caught is logged and answered 500 in JSON; the
        next request on the connection is answered (here by writes and a
        finish, sent as one answer with its length).
        """
        root = _Failing()
        written = exchange(
            PluginServerSite(root),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        first, second = testing.read_answers(written).answers
        self.assertEqual((first.status, first.body), (500, INTERNAL_ERROR))
        self.assertEqual(first.header("content-type"), "application/json")
        self.assertEqual(len(testing.read_answers(written).answers), 2)
        self.assertEqual((second.status, second.json()), (200, {"second": True}))
        self.assertEqual(second.header("x-second"), "yes")
        self.assertEqual(second.header("content-length"), str(len(second.body)))
