# mypy: allow-untyped-calls
# (trial's assertions and twisted.web's methods are unannotated; mypy's
# untyped_calls_exclude does not reach a method inherited by a subclass of
# ours, mypy#16651, as pyproject.toml explains for pluginserver's modules.)
"""
The site's HTTP channel as a faithful twisted.web channel: Klein's and
twisted.web's own behaviours, run through it.

The root here is never pluginserver's web resource: it is a Klein app or
plain twisted.web resources (C{static.File}, resources that answer late, in
parts, with no length, with no body, by redirect).  What is checked is
twisted.web's and Klein's behaviour as they document it, seen on the wire:
routing by method, answers that come later on the clock, headers and codes,
C{request.args} from the query and from a form body, the request body
(with a length or chunked), the addresses, C{isSecure}; files with their
length, served through their producer with back-pressure, ranges, HEAD and
If-Modified-Since; chunked answers, streamed answers, C{notifyFinish} on a
lost connection, redirects, 204, HTTP/1.0 and C{Connection: close} ending
the connection, keep-alive.  None of it is pluginserver's: all of it needs
the channel to give twisted.web's C{Request} what twisted.web's own
C{HTTPChannel} gives it.  That is why these tests exist: the channel can be
replaced (issue 18) and these must pass the same before and after.

Only the site's public surface is used: C{PluginServerSite(root,
reactor=clock)}, C{buildProtocol}, C{makeConnection}, C{dataReceived},
C{connectionLost}, over a transport that pushes back as TCP does.

The site's request renders its root as a leaf, with C{prepath} and
C{postpath} left empty: pluginserver's web layer is always the root, splits
the path itself, and hands its Klein app the segments it has checked.  So
Klein and C{static.File} are mounted here under L{_Traversed}, which does
for them what twisted.web's C{Request.process} does (and the web layer does
for its own Klein app), so that what they check is the channel.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools
from klein import Klein
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web import static
from twisted.web.http import datetimeToString
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from pluginserver.site import PluginServerSite
from pluginserver.testing import Answer, read_answers
from tests.helpers import PushBackTransport

# -- answers as a client reads them -------------------------------------------


def answers(data: bytes, methods: Sequence[bytes] = (), closed: bool = False) -> list[Answer]:
    """
    The complete answers in C{data}, by L{read_answers}: the n-th answers
    a request made with C{methods[n]} (GET if not given); a body framed by
    neither chunks nor a length runs to the end of C{data} if the
    connection is C{closed}.  Bytes that are no answer fail the test.
    """
    reading = read_answers(data, methods, closed)
    if reading.error is not None:
        raise ValueError(f"{reading.error}: {reading.leftover!r}")
    return list(reading.answers)


def bodies_by_httptools(data: bytes) -> list[bytes]:
    """
    The bodies of the responses in C{data} as llhttp (httptools) reads
    them: a second opinion on the framing, independent of L{read_answers}.
    """
    bodies: list[bytes] = []
    parts: list[bytes] = []

    class Callbacks:
        def on_body(self, body: bytes) -> None:
            parts.append(body)

        def on_message_complete(self) -> None:
            bodies.append(b"".join(parts))
            parts.clear()

    httptools.HttpResponseParser(Callbacks()).feed_data(data)
    return bodies


def get(
    path: bytes, *headers: bytes, method: bytes = b"GET", version: bytes = b"HTTP/1.1"
) -> bytes:
    """
    A request without a body, with a Host header and these header lines.
    """
    return b"%s %s %s\r\nHost: 127.0.0.1\r\n%s\r\n" % (
        method,
        path,
        version,
        b"".join(header + b"\r\n" for header in headers),
    )


def post(path: bytes, body: bytes, contentType: bytes = b"application/octet-stream") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        % (path, contentType, len(body))
        + body
    )


def as_json(answer: Answer) -> Any:
    return json.loads(answer.body)


def _text(value: bytes) -> str:
    return value.decode("latin-1")


# -- roots --------------------------------------------------------------------


class _Traversed(Resource):
    """
    A root that finds the resource for a request in C{tree} as twisted.web's
    C{Site} does (C{Request.process}: C{prepath} empty, C{postpath} the
    unquoted segments of the path, then C{getChildForRequest}), since the
    site's request renders its root as a leaf with neither.
    """

    isLeaf = True

    def __init__(self, tree: Resource) -> None:
        super().__init__()
        self._tree = tree

    def render(self, request: Request) -> Any:
        request.prepath = []
        request.postpath = [unquote_to_bytes(segment) for segment in request.path[1:].split(b"/")]
        return getChildForRequest(self._tree, request).render(request)


LATER = 5.0  # seconds on the clock before /later answers


def klein_app(clock: task.Clock, cancelled: list[bytes]) -> Klein:
    """
    A Klein app of the usual kinds of routes; C{/later} answers after
    L{LATER} seconds on C{clock}, and adds its path to C{cancelled} if its
    Deferred is cancelled.
    """
    app = Klein()

    def where(request: Request, **more: Any) -> bytes:
        seen = {
            "prepath": [_text(s) for s in request.prepath or []],
            "postpath": [_text(s) for s in request.postpath or []],
            **more,
        }
        return json.dumps(seen).encode()

    @app.route("/")
    def root(request: Request) -> bytes:
        return where(request, route="root")

    @app.route("/users/<int:uid>/posts/<slug>")
    def posts(request: Request, uid: int, slug: str) -> bytes:
        return where(request, route="posts", uid=uid, slug=slug)

    @app.route("/files/", branch=True)
    def files(request: Request) -> bytes:
        return where(request, route="files")

    @app.route("/thing", methods=["GET"])
    def getThing(request: Request) -> str:
        return "got"

    @app.route("/thing", methods=["POST"])
    def postThing(request: Request) -> str:
        return "posted"

    @app.route("/later")
    def later(request: Request) -> Deferred[str]:
        def cancel(d: Deferred[str]) -> None:
            answer.cancel()
            cancelled.append(request.path)

        d: Deferred[str] = Deferred(cancel)
        # An IDelayedCall (whose methods mypy cannot call without mypy-zope).
        answer: Any = clock.callLater(LATER, d.callback, "at last")
        return d

    @app.route("/made", methods=["POST"])
    def made(request: Request) -> str:
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"location", b"/made/1")
        request.responseHeaders.addRawHeader(b"x-two", b"first")
        request.responseHeaders.addRawHeader(b"x-two", b"second")
        return "made"

    @app.route("/args", methods=["GET", "POST"])
    def args(request: Request) -> bytes:
        found = {
            _text(name): [_text(value) for value in values]
            for name, values in sorted(request.args.items())
        }
        return json.dumps(found).encode()

    @app.route("/echo", methods=["POST", "PUT"])
    def echo(request: Request) -> bytes:
        assert request.content is not None
        body: bytes = request.content.read()
        return body

    @app.route("/header")
    def header(request: Request) -> bytes:
        found = {
            "x-thing": request.getHeader(b"X-Thing"),
            "X-THING": request.getHeader(b"X-THING"),
            "missing": request.getHeader(b"x-missing"),
        }
        return json.dumps({k: _text(v) if v else v for k, v in found.items()}).encode()

    @app.route("/addresses")
    def addresses(request: Request) -> bytes:
        client = request.getClientAddress()
        host = request.getHost()
        assert isinstance(client, IPv4Address) and isinstance(host, IPv4Address)
        found = {
            "client": [client.type, client.host, client.port],
            "host": [host.type, host.host, host.port],
            "secure": request.isSecure(),
        }
        return json.dumps(found).encode()

    return app


class _Parts(Resource):
    """
    Resources of twisted.web's usual kinds, by the path's first segment:

      - C{/chunked}: three writes then finish, no Content-Length;
      - C{/stream}: a write now, one at each second on the clock, finished
        at the third (C{NOT_DONE_YET});
      - C{/hold}: one write, and no end (its requests are kept in C{held});
      - C{/redirect}: C{request.redirect};
      - C{/empty}: 204;
      - C{/fixed}: a body returned by C{render_GET} (twisted.web gives it
        a Content-Length), and nothing else: other methods are 405.
    """

    def __init__(self, clock: task.Clock) -> None:
        super().__init__()
        self.clock = clock
        self.held: list[Request] = []
        children: dict[bytes, Resource] = {
            b"chunked": _Leaf(self._chunked),
            b"stream": _Leaf(self._stream),
            b"hold": _Leaf(self._hold),
            b"redirect": _Leaf(self._redirect),
            b"empty": _Leaf(self._empty),
            b"fixed": _Fixed(),
        }
        for name, child in children.items():
            # A Resource provides IResource (mypy cannot see zope's implementer).
            self.putChild(name, cast(IResource, child))

    def _chunked(self, request: Request) -> int:
        for part in (b"Hello, ", b"chunked ", b"world"):
            request.write(part)
        request.finish()
        return NOT_DONE_YET

    def _stream(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"part 0;")
        for n in (1, 2, 3):
            self.clock.callLater(n, request.write, b"part %d;" % (n,))
        self.clock.callLater(3, request.finish)
        return NOT_DONE_YET

    def _hold(self, request: Request) -> int:
        request.write(b"partial")
        self.held.append(request)
        return NOT_DONE_YET

    def _redirect(self, request: Request) -> bytes:
        request.redirect(b"/elsewhere?x=1")
        return b""

    def _empty(self, request: Request) -> bytes:
        request.setResponseCode(204)
        return b""


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[Request], bytes | int]) -> None:
        super().__init__()
        self._render = render

    def render(self, request: Request) -> bytes | int:
        return self._render(request)


class _Fixed(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"fixed body"


# -- the cases ----------------------------------------------------------------


class WebCase(TestCase):
    """
    One connection to a L{PluginServerSite} over C{root}, time on a clock,
    the client at 127.0.0.1:40000 over a L{PushBackTransport}.
    """

    def serve(self, root: Resource) -> None:
        self.clock = task.Clock()
        self.site = PluginServerSite(root, reactor=self.clock)
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        self.channel: Protocol = channel
        self.transport = PushBackTransport()
        self.channel.makeConnection(self.transport)
        self.lost = False
        self.addCleanup(self.loseConnection)

    def loseConnection(self, reason: Failure | None = None) -> None:
        """
        The connection ends (the client went away), once.
        """
        if not self.lost:
            self.lost = True
            self.channel.connectionLost(reason or Failure(ConnectionDone()))

    def ask(self, data: bytes, methods: Sequence[bytes] = ()) -> list[Answer]:
        """
        Send C{data}; the answers written since the last C{ask} (the client
        reads them all).
        """
        self.channel.dataReceived(data)
        return answers(self.transport.drain(), methods)

    def ask1(self, data: bytes, method: bytes = b"GET") -> Answer:
        """
        Send one request; its answer, the only one.
        """
        (answer,) = self.ask(data, [method])
        return answer

    async def receive(self, count: int = 1, methods: Sequence[bytes] = ()) -> list[Answer]:
        """
        The client reads, as the reactor runs, until C{count} answers have
        come whole (a file is sent by its producer, on the reactor); they
        are all it reads.
        """
        transport = self.transport
        received = b""

        def ready() -> bool:
            whole = answers(received + transport.value(), methods)
            return transport.full or len(whole) >= count

        while len(answers(received, methods)) < count:
            await until(ready, f"{count} answer(s)")
            received += transport.drain()
        found = answers(received, methods)
        self.assertEqual(len(found), count, "as many answers as requests")
        return found


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """
    Let the reactor run until C{condition()} holds (twisted.web drives a
    file's producer through the global cooperator, on the real reactor).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting, after {timeout} s, for {what}")
        await task.deferLater(cast(IReactorTime, reactor), 0.001)


async def turns(seconds: float = 0.02) -> None:
    """
    Let the reactor run for a while.
    """
    await task.deferLater(cast(IReactorTime, reactor), seconds)


class KleinTests(WebCase):
    """
    A Klein app, as Klein and twisted.web make it behave.
    """

    def setUp(self) -> None:
        self.cancelled: list[bytes] = []
        self.appClock = task.Clock()  # the app's (the site has its own)
        self.serve(_Traversed(klein_app(self.appClock, self.cancelled).resource()))

    def test_routeVariables(self) -> None:
        """
        Variables in a route's path are converted and passed to it; Klein
        moves the segments it matched from C{postpath} to C{prepath}.
        """
        answer = self.ask1(get(b"/users/42/posts/hello%20there"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(
            as_json(answer),
            {
                "route": "posts",
                "uid": 42,
                "slug": "hello there",
                "prepath": ["users", "42", "posts", "hello there"],
                "postpath": [],
            },
        )

    def test_branchRoute(self) -> None:
        """
        A branch route gets what follows its prefix in C{postpath}.
        """
        answer = self.ask1(get(b"/files/a/b.txt"))
        self.assertEqual(
            as_json(answer), {"route": "files", "prepath": ["files"], "postpath": ["a", "b.txt"]}
        )

    def test_rootRoute(self) -> None:
        answer = self.ask1(get(b"/"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(as_json(answer)["route"], "root")

    def test_notFound(self) -> None:
        self.assertEqual(self.ask1(get(b"/nowhere")).status, 404)

    def test_routesByMethod(self) -> None:
        """
        One path, a handler for each method; a method it has none for is
        answered 405 by Klein (werkzeug), with the methods it allows.
        """
        self.assertEqual(self.ask1(get(b"/thing")).body, b"got")
        self.assertEqual(self.ask1(post(b"/thing", b"")).body, b"posted")
        answer = self.ask1(get(b"/thing", method=b"DELETE"))
        self.assertEqual(answer.status, 405)
        allowed = (answer.header(b"allow") or b"").replace(b" ", b"").split(b",")
        self.assertEqual(sorted(allowed), [b"GET", b"HEAD", b"POST"])

    def test_headIsGetWithoutBody(self) -> None:
        """
        werkzeug routes HEAD to a GET route; twisted.web sends no body.
        """
        self.channel.dataReceived(get(b"/thing", method=b"HEAD") + get(b"/thing"))
        head, after = answers(self.transport.drain(), [b"HEAD", b"GET"])
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertEqual(after.body, b"got")

    def test_deferredAnswersLater(self) -> None:
        """
        A route's Deferred answers when it fires: nothing is sent before,
        and the connection goes on to the next request after.
        """
        self.channel.dataReceived(get(b"/later"))
        self.appClock.advance(LATER - 0.1)
        self.assertEqual(self.transport.value(), b"")
        self.appClock.advance(0.1)
        answer = self.ask1(b"")
        self.assertEqual((answer.status, answer.body), (200, b"at last"))
        self.assertEqual(self.ask1(get(b"/thing")).body, b"got")

    def test_lostConnectionCancelsTheDeferred(self) -> None:
        """
        Klein cancels a route's Deferred when the connection is lost before
        it fires (it listens to C{notifyFinish}).
        """
        self.channel.dataReceived(get(b"/later"))
        self.assertEqual(self.cancelled, [])
        self.loseConnection(Failure(ConnectionLost()))
        self.assertEqual(self.cancelled, [b"/later"])
        self.assertEqual(self.appClock.getDelayedCalls(), [])
        self.assertEqual(self.transport.value(), b"")

    def test_codeAndHeaders(self) -> None:
        answer = self.ask1(post(b"/made", b""))
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.body, b"made")
        self.assertEqual(answer.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(answer.header(b"location"), b"/made/1")
        self.assertEqual(answer.headers.getRawHeaders(b"x-two"), [b"first", b"second"])

    def test_argsFromTheQuery(self) -> None:
        """
        The query's fields, in bytes: repeated, percent-escaped (UTF-8 too,
        left encoded), empty.
        """
        answer = self.ask1(get(b"/args?a=1&b=two+words&a=3&empty=&c=%26&u=J%C3%B6rg"))
        self.assertEqual(
            as_json(answer),
            {
                "a": ["1", "3"],
                "b": ["two words"],
                "c": ["&"],
                "empty": [""],
                "u": [_text(b"J\xc3\xb6rg")],
            },
        )

    def test_argsFromAFormBody(self) -> None:
        """
        twisted.web puts the fields of a urlencoded POST body in
        C{request.args} too (a field in both replaces the query's).
        """
        body = b"name=J%C3%B6rg&x=1&x=2&q=from+body"
        answer = self.ask1(
            post(b"/args?q=from+query&only=query", body, b"application/x-www-form-urlencoded")
        )
        self.assertEqual(
            as_json(answer),
            {
                "name": [_text(b"J\xc3\xb6rg")],
                "only": ["query"],
                "q": ["from body"],
                "x": ["1", "2"],
            },
        )

    def test_bodyWithContentLength(self) -> None:
        body = bytes(range(256)) * 40
        answer = self.ask1(post(b"/echo", body))
        self.assertEqual((answer.status, answer.body), (200, body))

    def test_bodyInPieces(self) -> None:
        """
        A body that arrives over several reads is handed over whole.
        """
        request = post(b"/echo", b"0123456789" * 100)
        for start in range(0, len(request), 97):
            self.channel.dataReceived(request[start : start + 97])
        answer = self.ask1(b"")
        self.assertEqual(answer.body, b"0123456789" * 100)

    def test_chunkedBody(self) -> None:
        """
        A chunked request body (with a chunk extension and a trailer) is
        handed over decoded.
        """
        request = (
            b"PUT /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nHello\r\n"
            b"8;name=value\r\n, chunky\r\n"
            b"1\r\n!\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n"
        )
        answer = self.ask1(request)
        self.assertEqual((answer.status, answer.body), (200, b"Hello, chunky!"))
        self.assertEqual(self.ask1(get(b"/thing")).body, b"got")

    def test_getHeader(self) -> None:
        answer = self.ask1(get(b"/header", b"x-THING: some value"))
        self.assertEqual(
            as_json(answer), {"x-thing": "some value", "X-THING": "some value", "missing": None}
        )

    def test_addressesAndNotSecure(self) -> None:
        """
        The client's address and ours are the transport's; over a plain
        transport the request is not secure.
        """
        answer = self.ask1(get(b"/addresses"))
        host = self.transport.getHost()
        assert isinstance(host, IPv4Address)
        self.assertEqual(
            as_json(answer),
            {
                "client": ["TCP", "127.0.0.1", 40000],
                "host": ["TCP", host.host, host.port],
                "secure": False,
            },
        )


SIZE = 1048576  # bytes in the big file: sixteen times a transport's buffer
READ = 65536  # bytes static.File reads, and writes, at a time
MTIME = 1_600_000_000  # the files' modification time


class FileTests(WebCase):
    """
    C{static.File} over a temporary directory.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.small = b"Small file contents.\n" * 10
        self.big = bytes(range(256)) * (SIZE // 256)
        for name, content in ((b"small.txt", self.small), (b"big.bin", self.big)):
            path = os.path.join(directory.encode(), name)
            with open(path, "wb") as f:
                f.write(content)
            os.utime(path, (MTIME, MTIME))
        self.serve(_Traversed(static.File(directory)))

    async def fetch(self, data: bytes, method: bytes = b"GET") -> Answer:
        """
        Send one request; its answer, the only one.
        """
        self.channel.dataReceived(data)
        (answer,) = await self.receive(1, [method])
        return answer

    async def test_get(self) -> None:
        answer = await self.fetch(get(b"/small.txt"))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, self.small)
        self.assertEqual(answer.header(b"content-length"), b"%d" % (len(self.small),))
        self.assertEqual(answer.header(b"content-type"), b"text/plain")
        self.assertEqual(answer.header(b"last-modified"), datetimeToString(MTIME))
        self.assertEqual(answer.header(b"accept-ranges"), b"bytes")
        self.assertFalse(self.transport.disconnecting)

    async def test_notFound(self) -> None:
        answer = await self.fetch(get(b"/missing.txt"))
        self.assertEqual(answer.status, 404)

    async def test_bigFileWaitsForTheClient(self) -> None:
        """
        A file much bigger than the transport's buffer is sent through its
        producer: paused while the client does not read (nothing more is
        written), resumed as the client reads, and whole in the end; the
        connection then serves the next request.
        """
        transport = self.transport
        most = transport.bufferSize + READ + 1024  # the buffer, a read, the head
        self.channel.dataReceived(get(b"/big.bin"))
        received = b""

        def fullOrDone() -> bool:
            return transport.full or bool(answers(received + transport.value()))

        rounds = 0
        while not answers(received):
            await until(fullOrDone, "the transport to fill or the answer to end")
            if transport.full:
                rounds += 1
                buffered = len(transport.value())
                self.assertLessEqual(buffered, most)
                await turns()
                # Paused: nothing more while the client does not read.
                self.assertTrue(transport.full)
                self.assertEqual(len(transport.value()), buffered)
            received += transport.drain()
        self.assertGreaterEqual(rounds, SIZE // most)
        (answer,) = answers(received)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-length"), b"%d" % (SIZE,))
        self.assertEqual(len(answer.body), SIZE)
        self.assertTrue(answer.body == self.big, "the file's bytes, in order")
        self.assertEqual((await self.fetch(get(b"/small.txt"))).body, self.small)

    async def test_range(self) -> None:
        """
        A Range request is answered 206 with that slice of the file.
        """
        answer = await self.fetch(get(b"/big.bin", b"Range: bytes=1000-70999"))
        self.assertEqual(answer.status, 206)
        self.assertEqual(answer.header(b"content-range"), b"bytes 1000-70999/%d" % (SIZE,))
        self.assertEqual(answer.header(b"content-length"), b"70000")
        self.assertTrue(answer.body == self.big[1000:71000], "the slice")
        suffix = await self.fetch(get(b"/small.txt", b"Range: bytes=-6"))
        self.assertEqual((suffix.status, suffix.body), (206, self.small[-6:]))

    async def test_unsatisfiableRange(self) -> None:
        answer = await self.fetch(get(b"/small.txt", b"Range: bytes=5000-6000"))
        self.assertEqual(answer.status, 416)
        self.assertEqual(answer.header(b"content-range"), b"bytes */%d" % (len(self.small),))

    async def test_head(self) -> None:
        """
        HEAD: the headers a GET would have, the length included, and no
        body (the next answer follows the head directly).
        """
        self.channel.dataReceived(get(b"/big.bin", method=b"HEAD") + get(b"/small.txt"))
        head, after = await self.receive(2, [b"HEAD", b"GET"])
        self.assertEqual(head.status, 200)
        self.assertEqual(head.header(b"content-length"), b"%d" % (SIZE,))
        self.assertEqual(head.header(b"last-modified"), datetimeToString(MTIME))
        self.assertEqual(head.body, b"")
        self.assertEqual((after.status, after.body), (200, self.small))

    async def test_ifModifiedSince(self) -> None:
        """
        Not modified since: 304 and no body.  Modified since: the file.
        """
        self.channel.dataReceived(
            get(b"/small.txt", b"If-Modified-Since: " + datetimeToString(MTIME))
            + get(b"/small.txt", b"If-Modified-Since: " + datetimeToString(MTIME - 60))
        )
        cached, modified = await self.receive(2)
        self.assertEqual(cached.status, 304)
        self.assertEqual(cached.body, b"")
        self.assertEqual((modified.status, modified.body), (200, self.small))


class ResourceTests(WebCase):
    """
    Plain twisted.web resources.
    """

    def setUp(self) -> None:
        self.partsClock = task.Clock()  # the resources' (the site has its own)
        self.parts = _Parts(self.partsClock)
        self.serve(_Traversed(self.parts))

    def test_chunkedAnswer(self) -> None:
        """
        An HTTP/1.1 answer without a Content-Length is sent chunked, one
        chunk a write, and reads back whole (by llhttp too).
        """
        self.channel.dataReceived(get(b"/chunked"))
        data = self.transport.value()
        (answer,) = answers(data)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"transfer-encoding"), b"chunked")
        self.assertIsNone(answer.header(b"content-length"))
        self.assertEqual(answer.chunks, (b"Hello, ", b"chunked ", b"world"))
        self.assertEqual(bodies_by_httptools(data), [b"Hello, chunked world"])

    def test_notDoneYet(self) -> None:
        """
        A resource that returns NOT_DONE_YET and writes as time passes:
        each write is sent as it is made, the answer ends at C{finish}.
        """
        self.channel.dataReceived(get(b"/stream"))
        sent = self.transport.drain()
        self.assertIn(b"part 0;", sent)
        self.assertEqual(answers(sent), [])
        for n in (1, 2):
            self.partsClock.advance(1)
            more = self.transport.drain()
            self.assertIn(b"part %d;" % (n,), more)
            sent += more
            self.assertEqual(answers(sent), [])
        self.partsClock.advance(1)
        sent += self.transport.drain()
        (answer,) = answers(sent)
        self.assertEqual(answer.body, b"part 0;part 1;part 2;part 3;")
        self.assertEqual(answer.header(b"content-type"), b"text/plain")
        self.assertFalse(self.transport.disconnecting)

    def test_notifyFinishOnLostConnection(self) -> None:
        """
        C{notifyFinish} errs back with the reason when the connection is
        lost in the middle of the answer.
        """
        self.channel.dataReceived(get(b"/hold"))
        (held,) = self.parts.held
        finished = held.notifyFinish()
        self.assertNoResult(finished)
        self.assertIn(b"partial", self.transport.value())
        self.loseConnection(Failure(ConnectionLost("gone")))
        self.failureResultOf(finished, ConnectionLost)

    def test_notifyFinish(self) -> None:
        """
        C{notifyFinish} fires with None when the answer is done.
        """
        self.channel.dataReceived(get(b"/hold"))
        (held,) = self.parts.held
        finished = held.notifyFinish()
        self.assertNoResult(finished)
        held.finish()
        self.assertIsNone(self.successResultOf(finished))
        (answer,) = answers(self.transport.value())
        self.assertEqual(answer.body, b"partial")

    def test_redirect(self) -> None:
        answer = self.ask1(get(b"/redirect"))
        self.assertEqual(answer.status, 302)
        self.assertEqual(answer.header(b"location"), b"/elsewhere?x=1")
        self.assertEqual(answer.body, b"")

    def test_noContent(self) -> None:
        """
        204 is sent with no body, chunked or not (twisted.web sends a
        Content-Length of 0): the next answer follows its head directly.
        """
        self.channel.dataReceived(get(b"/empty") + get(b"/fixed"))
        data = self.transport.drain()
        empty, fixed = answers(data)
        self.assertEqual(empty.status, 204)
        self.assertIsNone(empty.header(b"transfer-encoding"))
        self.assertIn(empty.header(b"content-length"), (None, b"0"))
        self.assertTrue(data.index(b"\r\n\r\n") + 4 == data.index(b"HTTP/1.1 200"), data)
        self.assertEqual(fixed.body, b"fixed body")

    def test_fixedLength(self) -> None:
        """
        A body returned by C{render} gets a Content-Length from twisted.web.
        """
        answer = self.ask1(get(b"/fixed"))
        self.assertEqual(answer.header(b"content-length"), b"10")
        self.assertIsNone(answer.header(b"transfer-encoding"))
        self.assertEqual(answer.body, b"fixed body")

    def test_unsupportedMethod(self) -> None:
        """
        A method a resource has no C{render_} for is answered 405 by
        twisted.web, with the ones it has.
        """
        answer = self.ask1(post(b"/fixed", b"data"))
        self.assertEqual(answer.status, 405)
        allowed = (answer.header(b"allow") or b"").replace(b" ", b"").split(b",")
        self.assertIn(b"GET", allowed)
        self.assertNotIn(b"POST", allowed)

    def test_http10(self) -> None:
        """
        An HTTP/1.0 request is answered in HTTP/1.0, without chunks (the
        end of the connection ends the body), and the connection closed.
        """
        self.channel.dataReceived(get(b"/chunked", version=b"HTTP/1.0"))
        self.assertTrue(self.transport.disconnecting)
        (answer,) = answers(self.transport.value(), closed=True)
        self.assertEqual((answer.version, answer.status), (b"HTTP/1.0", 200))
        self.assertIsNone(answer.header(b"transfer-encoding"))
        self.assertIsNone(answer.chunks)
        self.assertEqual(answer.body, b"Hello, chunked world")

    def test_http10WithLength(self) -> None:
        self.channel.dataReceived(get(b"/fixed", version=b"HTTP/1.0"))
        self.assertTrue(self.transport.disconnecting)
        (answer,) = answers(self.transport.value())
        self.assertEqual(
            (answer.version, answer.status, answer.body), (b"HTTP/1.0", 200, b"fixed body")
        )

    def test_connectionClose(self) -> None:
        """
        C{Connection: close}: answered, then the connection is closed, and
        a request sent after it is not answered.
        """
        self.channel.dataReceived(get(b"/fixed", b"Connection: close") + get(b"/fixed"))
        self.assertTrue(self.transport.disconnecting)
        (answer,) = answers(self.transport.value())
        self.assertEqual(answer.body, b"fixed body")
        self.assertEqual(answer.header(b"connection"), b"close")

    def test_keepAlive(self) -> None:
        """
        Requests one after the other on one connection are all answered,
        and the connection stays open; so are requests sent together.
        """
        first = self.ask1(get(b"/fixed"))
        self.assertFalse(self.transport.disconnecting)
        second = self.ask1(get(b"/chunked"))
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual((first.body, second.body), (b"fixed body", b"Hello, chunked world"))
        together = self.ask(get(b"/chunked") + get(b"/fixed") + get(b"/redirect"))
        self.assertEqual(
            [(a.status, a.body) for a in together],
            [(200, b"Hello, chunked world"), (200, b"fixed body"), (302, b"")],
        )
        self.assertFalse(self.transport.disconnecting)
