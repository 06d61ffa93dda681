"""
Streamed answers (L{pluginserver.streams}): iterator and async iterator
bodies sent as they are produced, with back-pressure, and server-sent
events.

In memory: the server's own registry, resource, site and HTTP channel
(L{pluginserver.testing}) over a transport that pushes back as a TCP socket
does (past C{bufferSize} unsent bytes it pauses its producer), time on a
L{Clock}; the raw bytes the channel writes are read as a client would.
An async iterator's pulls run as asyncio tasks on the real loop, on later
turns than what starts them: a test waits (bounded, L{until}) for what a
pull brings about before it asserts it.
For real: C{twistd pluginserver} on 127.0.0.1, a client that reads nothing
while a plugin streams 200 MB, and a reload that ends a stream.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import os
import socket
import textwrap
import time
from typing import Any

import psutil
from sseclient import SSEClient
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pluginserver import testing
from pluginserver.answers import BadResponse
from pluginserver.plugin import RawJSON
from pluginserver.streams import CHUNKS_PER_TURN, KEEP_ALIVE, _Stream, encode_event
from tests.helpers import HELLO, PluginDir, PushBackTransport
from tests.process import Server, sleep
from tests.test_registry import until

# -- the plugin every in-memory test serves -------------------------------------

STREAMER = """
import asyncio

from twisted.internet import defer

from pluginserver import EventStream, Plugin, Response


class S(Plugin):
    '''
    /s/<kind>: a stream of that kind.  What each stream pulled and closed
    is recorded on the instance; the async ones wait on Deferreds in
    self.gates, which the test fires (None ends the stream).
    '''

    def start(self):
        self.closed = []
        self.pulled = 0
        self.gates = []

    def stop(self):
        # What was closed by the time stop() ran.
        self.closedAtStop = list(self.closed)

    def lines(self, n):
        try:
            for i in range(n):
                self.pulled += 1
                yield "line %d\\n" % i
        finally:
            self.closed.append("lines")

    def forever(self, size):
        try:
            while True:
                self.pulled += 1
                yield b"x" * size
        finally:
            self.closed.append("forever")

    def raises(self, after):
        try:
            for i in range(after):
                yield "ok %d\\n" % i
            raise ZeroDivisionError("the stream broke")
        finally:
            self.closed.append("raises")

    def bad(self, after):
        try:
            for i in range(after):
                yield b"ok"
            yield 42
        finally:
            self.closed.append("bad")

    async def waits(self):
        try:
            while True:
                gate = defer.Deferred()
                self.gates.append(gate)
                try:
                    item = await gate
                finally:
                    if gate in self.gates:
                        self.gates.remove(gate)
                if item is None:
                    return
                self.pulled += 1
                yield item
        finally:
            self.closed.append("waits")

    async def slowclose(self):
        try:
            while True:
                gate = defer.Deferred()
                self.gates.append(gate)
                yield await gate
        finally:
            await asyncio.sleep(0.01)  # a clean-up that awaits
            self.closed.append("slowclose")

    async def araises(self):
        try:
            raise ZeroDivisionError("before the first chunk")
            yield b""
        finally:
            self.closed.append("araises")

    def handle(self, request):
        kind, args = request.subpath, request.args
        given = args.get("type")
        if kind == "lines":
            return Response(self.lines(int(args.get("n", 3))), content_type=given)
        if kind == "bytes":
            return Response(iter([b"\\x00\\x01", "and text"]), content_type=given)
        if kind == "forever":
            return Response(self.forever(int(args.get("size", 1000))))
        if kind == "empty":
            return Response(iter([""] * int(args.get("n", 1))))
        if kind == "raises":
            return Response(self.raises(int(args.get("after", 0))))
        if kind == "bad":
            return Response(self.bad(int(args.get("after", 0))))
        if kind == "waits":
            return Response(self.waits(), 201, {"X-Mine": "yes"}, content_type=given)
        if kind == "slowclose":
            return Response(self.slowclose())
        if kind == "araises":
            return Response(self.araises())
        if kind == "sse":
            return EventStream(self.waits(), heartbeat=float(args.get("hb", 15)))
        if kind == "events":
            return EventStream(iter([{"data": {"n": 1}, "event": "tick", "id": "1"}, [1, 2]]))
        if kind == "badheartbeat":
            return EventStream(iter([]), heartbeat="often")
        return {"kinds": "see the source"}
"""


# -- a client over a transport that pushes back ----------------------------------


class Answer:
    """
    What a client has received so far on one connection: the head, and
    the body de-chunked as far as it has come.
    """

    def __init__(self, raw: bytes) -> None:
        head, separator, rest = raw.partition(b"\r\n\r\n")
        assert separator, f"no complete head in {raw!r}"
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        self.headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        self.chunked = self.headers.get(b"transfer-encoding") == [b"chunked"]
        self.chunks: list[bytes] = []
        self.complete = False  # the last chunk came
        self.rest = b""
        if not self.chunked:
            self.body = rest
            return
        position = 0
        while True:
            end = rest.find(b"\r\n", position)
            if end < 0:
                break
            size = int(rest[position:end], 16)
            if len(rest) < end + 2 + size + 2:
                break
            if size == 0:
                self.complete = True
                self.rest = rest[end + 4 :]
                break
            self.chunks.append(rest[end + 2 : end + 2 + size])
            position = end + 2 + size + 2
        self.body = b"".join(self.chunks)

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name)
        return values[-1] if values else None


def streamTimers(clock: Clock) -> list[Any]:
    """
    The calls on C{clock} that streams made (the channel's own idle
    timeout, back once an answer is done, is not one of them).
    """
    return [
        c for c in clock.getDelayedCalls() if isinstance(getattr(c.func, "__self__", None), _Stream)
    ]


def request(path: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return f"{method} {path} {version}\r\nHost: localhost\r\n\r\n".encode()


class Wire:
    """
    One connection to the in-memory server.
    """

    def __init__(self, server: testing.Server, bufferSize: int) -> None:
        self.transport = PushBackTransport(bufferSize)
        self.channel = server.site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)
        self.closed = False

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def sent(self) -> bytes:
        """
        Everything the server has sent so far, whether the client has read
        it or not (this reads nothing).
        """
        return self.transport.received + self.transport.value()

    def answer(self) -> Answer:
        """
        Everything received so far (the client reads it all).
        """
        self.transport.drain()
        return Answer(self.transport.received)

    def close(self) -> None:
        """
        The client goes away.
        """
        if not self.closed:
            self.closed = True
            self.channel.connectionLost(Failure(ConnectionDone("the client closed")))


class StreamCase(TestCase):
    """
    The streamer plugin (and hello) served in memory, with the registry's
    hook to the resource's streams connected as the service connects it.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.dir.write("s", STREAMER)
        self.dir.write("hello", HELLO)
        self.clock = Clock()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.wires: list[Wire] = []

    @defer.inlineCallbacks
    def serve(self, **settings: Any) -> Any:
        self.server = yield testing.serve(self, self.dir.path, clock=self.clock, **settings)
        self.streams = self.server.resource.streams
        self.addCleanup(self.closeWires)

    def closeWires(self) -> None:
        for wire in self.wires:
            wire.close()

    def open(self, path: str, bufferSize: int = 65536, **kwargs: Any) -> Wire:
        wire = Wire(self.server, bufferSize)
        self.wires.append(wire)
        wire.send(request(path, **kwargs))
        return wire

    @property
    def plugin(self) -> Any:
        loaded = self.server.registry.get("s")
        assert loaded is not None
        return loaded.instance

    def pulling(self, count: int = 1, plugin: Any = None) -> Any:
        """
        Wait until C{count} pulls of the async streams are in flight: their
        tasks have run as far as the gates they wait on (of C{plugin}, the
        current instance by default).
        """
        return until(lambda: len((self.plugin if plugin is None else plugin).gates) == count)

    def arrived(self, wire: Wire, data: bytes) -> Any:
        """
        Wait until the server has sent C{data} on C{wire} (the client
        reads nothing meanwhile).
        """
        return until(lambda: data in wire.sent())

    def errorsLogged(self) -> list[dict[str, Any]]:
        return [e for e in self.logged if e.get("log_level").name in ("error", "critical")]


# -- framing and content types ------------------------------------------------------


class FramingTests(StreamCase):
    @defer.inlineCallbacks
    def test_chunkedAsProduced(self) -> Any:
        """
        Each chunk goes out as one HTTP/1.1 chunk, and the last chunk ends
        the body; the headers every answer carries are there.
        """
        yield self.serve()
        wire = self.open("/s/lines?n=3")
        raw = wire.transport.value()
        self.assertIn(b"7\r\nline 0\n\r\n7\r\nline 1\n\r\n7\r\nline 2\n\r\n0\r\n\r\n", raw)
        answer = wire.answer()
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.chunked)
        self.assertTrue(answer.complete)
        self.assertEqual(answer.chunks, [b"line 0\n", b"line 1\n", b"line 2\n"])
        self.assertEqual(answer.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(answer.header(b"x-content-type-options"), b"nosniff")
        self.assertEqual(answer.header(b"cache-control"), b"no-store")
        self.assertIsNone(answer.header(b"content-length"))
        self.assertEqual(self.plugin.closed, ["lines"])
        self.assertEqual(self.streams.count(), 0)
        # Logged and counted, as any answer.
        self.assertEqual(self.server.metrics._requests.get(("s", 200)), 1)

    @defer.inlineCallbacks
    def test_defaultContentTypes(self) -> Any:
        """
        The first chunk's type gives the default content type; a given
        one wins.
        """
        yield self.serve()
        answer = self.open("/s/bytes").answer()
        self.assertEqual(answer.header(b"content-type"), b"application/octet-stream")
        self.assertEqual(answer.body, b"\x00\x01and text")
        answer = self.open("/s/lines?type=text/csv").answer()
        self.assertEqual(answer.header(b"content-type"), b"text/csv")
        answer = self.open("/s/lines?n=0").answer()
        self.assertIsNone(answer.header(b"content-type"))  # no chunk, no type
        self.assertTrue(answer.complete)
        self.assertEqual(answer.body, b"")

    @defer.inlineCallbacks
    def test_statusAndHeaders(self) -> Any:
        """
        A stream's status and headers are the Response's; HTML gets the
        HTML headers as any HTML answer does.
        """
        yield self.serve()
        wire = self.open("/s/waits?type=text/html")
        yield self.pulling()
        self.plugin.gates.pop(0).callback("<p>")
        yield self.arrived(wire, b"<p>")
        answer = wire.answer()
        self.assertEqual(answer.status, 201)
        self.assertEqual(answer.header(b"x-mine"), b"yes")
        self.assertEqual(answer.header(b"x-frame-options"), b"DENY")
        self.assertEqual(answer.body, b"<p>")

    @defer.inlineCallbacks
    def test_http10(self) -> Any:
        """
        An HTTP/1.0 client gets the body unframed, and the connection
        closes at its end.
        """
        yield self.serve()
        wire = self.open("/s/lines?n=2", version="HTTP/1.0")
        answer = wire.answer()
        self.assertFalse(answer.chunked)
        self.assertEqual(answer.body, b"line 0\nline 1\n")
        self.assertTrue(wire.transport.disconnecting)

    @defer.inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD sends the head GET would send (the first chunk is pulled for
        its type when none is given), no body, and closes the iterator.
        """
        yield self.serve()
        wire = self.open("/s/lines?n=5", method="HEAD")
        answer = wire.answer()
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(answer.body, b"")
        self.assertEqual(self.plugin.pulled, 1)
        self.assertEqual(self.plugin.closed, ["lines"])
        # With a type given, nothing is pulled (the generator never ran).
        wire = self.open("/s/lines?n=5&type=text/csv", method="HEAD")
        self.assertEqual(wire.answer().header(b"content-type"), b"text/csv")
        self.assertEqual(self.plugin.pulled, 1)
        self.assertEqual(self.plugin.closed, ["lines"])
        # The connection is still good for the next request.
        wire.send(request("/hello"))
        self.assertIn(b'{"hello":"world"}', wire.transport.drain())
        self.assertEqual(self.streams.count(), 0)

    @defer.inlineCallbacks
    def test_keepAliveAfterStream(self) -> Any:
        """
        A finished stream leaves the connection open for the next,
        pipelined, request.
        """
        yield self.serve()
        wire = self.open("/s/lines?n=2")
        wire.send(request("/hello"))
        answer = wire.answer()
        self.assertTrue(answer.complete)
        self.assertIn(b'{"hello":"world"}', answer.rest)

    @defer.inlineCallbacks
    def test_emptyChunksYieldTheReactor(self) -> Any:
        """
        A stream whose chunks never fill the transport (here: empty ones)
        lets the reactor run between turns of L{CHUNKS_PER_TURN} chunks.
        """
        yield self.serve()
        wire = self.open(f"/s/empty?n={CHUNKS_PER_TURN * 2 + 1}")
        self.assertFalse(Answer(wire.transport.value()).complete)
        self.assertEqual(len(streamTimers(self.clock)), 1)  # the next turn
        self.clock.advance(0)
        answer = wire.answer()
        self.assertTrue(answer.complete)
        self.assertEqual(answer.body, b"")


class AsyncTests(StreamCase):
    @defer.inlineCallbacks
    def test_asyncIterator(self) -> Any:
        """
        An async iterator's chunks go out as each comes; nothing is sent,
        not even the head, while the first one is awaited (its pull in
        flight); one pull at a time.
        """
        yield self.serve()
        wire = self.open("/s/waits")
        yield self.pulling()  # the plugin awaits its first chunk
        self.assertEqual(wire.transport.value(), b"")
        self.assertEqual(len(self.plugin.gates), 1)  # one pull in flight
        self.plugin.gates.pop(0).callback(b"first")
        yield self.arrived(wire, b"first")
        self.assertEqual(wire.answer().chunks, [b"first"])
        yield self.pulling()
        self.plugin.gates.pop(0).callback("second")
        yield self.arrived(wire, b"second")
        self.assertEqual(wire.answer().chunks, [b"first", b"second"])
        yield self.pulling()
        self.plugin.gates.pop(0).callback(None)
        yield self.arrived(wire, b"\r\n0\r\n\r\n")  # the last chunk
        answer = wire.answer()
        self.assertTrue(answer.complete)
        self.assertEqual(answer.header(b"content-type"), b"application/octet-stream")
        self.assertEqual(self.plugin.closed, ["waits"])

    @defer.inlineCallbacks
    def test_requestTimeoutUntilTheFirstChunk(self) -> Any:
        """
        A stream whose first chunk takes longer than C{request_timeout} is
        answered 504 and closed; once the head is sent it may take its time.
        """
        yield self.serve(request_timeout=5.0)
        wire = self.open("/s/waits")
        yield self.pulling()  # the plugin awaits its first chunk
        self.clock.advance(5)
        answer = wire.answer()
        self.assertEqual(answer.status, 504)
        self.assertEqual(answer.body, b'{"error":"timeout"}')
        yield until(lambda: len(self.plugin.closed) == 1)  # the cancelled pull ends
        self.assertEqual(self.plugin.closed, ["waits"])
        wire = self.open("/s/waits")
        yield self.pulling()
        self.plugin.gates.pop(0).callback(b"at once")
        yield self.arrived(wire, b"at once")
        self.clock.advance(50)
        yield self.pulling()
        self.plugin.gates.pop(0).callback(b" and later")
        yield self.arrived(wire, b" and later")
        self.assertEqual(wire.answer().body, b"at once and later")
        self.assertEqual(streamTimers(self.clock), [])

    @defer.inlineCallbacks
    def test_idleTimeoutDoesNotCutAStreamThatSends(self) -> Any:
        """
        An event stream that sends only keep-alives for longer than
        C{idle_timeout} keeps its connection.
        """
        yield self.serve(idle_timeout=10.0)
        wire = self.open("/s/sse?hb=4")
        for _ in range(10):
            self.clock.advance(4)
        self.assertFalse(wire.transport.disconnecting)
        self.assertEqual(wire.answer().body, KEEP_ALIVE * 10)


# -- errors ---------------------------------------------------------------------------


class ErrorTests(StreamCase):
    @defer.inlineCallbacks
    def test_raisesBeforeTheFirstChunk(self) -> Any:
        """
        An iterator that raises before its first chunk: 500 JSON, logged
        with the plugin's name and generation; the server serves on.
        """
        yield self.serve()
        for path in ("/s/raises", "/s/araises"):
            wire = self.open(path)
            yield self.arrived(wire, b'{"error":"internal error"}')
            answer = wire.answer()
            self.assertEqual(answer.status, 500, path)
            self.assertEqual(answer.header(b"content-type"), b"application/json")
            self.assertEqual(answer.body, b'{"error":"internal error"}')
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        (event, _) = self.errorsLogged()
        self.assertEqual((event["plugin"], event["generation"]), ("s", 1))
        self.assertEqual(self.plugin.closed, ["raises", "araises"])
        self.assertIn(b"world", self.open("/hello").answer().body)

    @defer.inlineCallbacks
    def test_raisesMidway(self) -> Any:
        """
        An iterator that raises after its head: the chunks before it are
        sent, the last chunk never is (the client sees a cut body), the
        connection closes, the error is logged and the request counted.
        """
        yield self.serve()
        wire = self.open("/s/raises?after=2")
        answer = wire.answer()
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.chunks, [b"ok 0\n", b"ok 1\n"])
        self.assertFalse(answer.complete)
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        (event,) = self.errorsLogged()
        self.assertEqual((event["plugin"], event["generation"]), ("s", 1))
        self.assertIn("body is cut", event["when"])
        self.assertEqual(self.server.metrics._requests.get(("s", 200)), 1)
        self.assertEqual(self.server.metrics._errors["s"], 1)
        wire.close()
        self.assertEqual(self.streams.count(), 0)
        self.assertIn(b"world", self.open("/hello").answer().body)

    @defer.inlineCallbacks
    def test_badChunk(self) -> Any:
        """
        A chunk that is neither str nor bytes is logged and ends the
        stream: 500 before the head, a cut body after; the iterator is
        closed either way.
        """
        yield self.serve()
        self.assertEqual(self.open("/s/bad").answer().status, 500)
        wire = self.open("/s/bad?after=1")
        answer = wire.answer()
        self.assertEqual((answer.status, answer.body, answer.complete), (200, b"ok", False))
        events = self.errorsLogged()
        self.assertEqual(len(events), 2)
        self.assertIn("type int", events[0]["what"])
        self.assertEqual(self.plugin.closed, ["bad", "bad"])

    @defer.inlineCallbacks
    def test_badHeartbeat(self) -> Any:
        """
        An EventStream whose heartbeat is not a number of seconds is a
        logged 500.
        """
        yield self.serve()
        answer = self.open("/s/badheartbeat").answer()
        self.assertEqual(answer.status, 500)
        self.assertEqual(len(self.errorsLogged()), 1)


# -- back-pressure and the client going away --------------------------------------------


class BackPressureTests(StreamCase):
    @defer.inlineCallbacks
    def test_pausedPullsNothing(self) -> Any:
        """
        While the transport is paused nothing is pulled, however long; the
        server holds at most its buffer plus about one chunk.  The client
        reading resumes the stream.
        """
        yield self.serve()
        wire = self.open("/s/forever?size=1000", bufferSize=8192)
        pulled = self.plugin.pulled
        self.assertTrue(wire.transport.full)
        self.assertLessEqual(pulled, 10)
        self.assertLess(len(wire.transport.value()), 8192 + 1000 + 64)
        for _ in range(10):
            self.clock.advance(1)
        self.assertEqual(self.plugin.pulled, pulled)
        wire.answer()  # the client reads: the stream goes on until full again
        self.assertTrue(wire.transport.full)
        self.assertGreater(self.plugin.pulled, pulled)
        self.assertLessEqual(self.plugin.pulled, 2 * pulled + 1)
        for _ in range(20):
            wire.answer()
        # All the client read, and no more than a buffer's worth unread.
        read = len(wire.answer().chunks)
        self.assertGreater(read, 20 * pulled // 2)
        self.assertLessEqual(self.plugin.pulled - read, pulled + 1)

    @defer.inlineCallbacks
    def test_disconnectClosesTheIterator(self) -> Any:
        """
        A client that goes away closes the iterator (its finally runs): a
        sync one at once, an async one once its pull in flight, cancelled,
        has ended (on a later turn of the loop); the answer is counted, and
        nothing the stream started is left on the clock.
        """
        yield self.serve()
        wire = self.open("/s/forever", bufferSize=8192)
        wire.close()
        self.assertEqual(self.plugin.closed, ["forever"])
        wire = self.open("/s/sse")  # async, waiting for its first event
        yield self.pulling()
        self.assertEqual(len(self.plugin.gates), 1)
        wire.close()
        yield until(lambda: len(self.plugin.closed) == 2)
        self.assertEqual(self.plugin.closed, ["forever", "waits"])
        self.assertEqual(self.streams.count(), 0)
        self.assertEqual(streamTimers(self.clock), [])
        self.assertEqual(self.server.metrics._requests.get(("s", 200)), 2)

    @defer.inlineCallbacks
    def test_stalledClientLetGo(self) -> Any:
        """
        A client that reads nothing for C{idle_timeout} has its connection
        aborted and its iterator closed.
        """
        yield self.serve(idle_timeout=10.0)
        wire = self.open("/s/forever", bufferSize=8192)
        self.clock.advance(9)
        self.assertFalse(wire.transport.aborted)
        wire.answer()  # reading restarts the wait
        self.clock.advance(9)
        self.assertFalse(wire.transport.aborted)
        self.clock.advance(1)
        self.assertTrue(wire.transport.aborted)
        self.assertEqual(self.plugin.closed, ["forever"])
        self.assertEqual(streamTimers(self.clock), [])


# -- server-sent events ---------------------------------------------------------------


class EncodeEventTests(SynchronousTestCase):
    def test_fields(self) -> None:
        self.assertEqual(
            encode_event({"data": {"a": 1}, "event": "tick", "id": "7", "retry": 500}),
            b'event: tick\nid: 7\nretry: 500\ndata: {"a":1}\n\n',
        )
        self.assertEqual(encode_event({"data": "hi"}), b'data: "hi"\n\n')
        self.assertEqual(encode_event({"data": None, "id": 3}), b"id: 3\ndata: null\n\n")

    def test_otherItemsWhole(self) -> None:
        self.assertEqual(encode_event([1, "two"]), b'data: [1,"two"]\n\n')
        self.assertEqual(encode_event("text"), b'data: "text"\n\n')
        self.assertEqual(encode_event({"data": 1, "other": 2}), b'data: {"data":1,"other":2}\n\n')
        self.assertEqual(encode_event({"event": "x"}), b'data: {"event":"x"}\n\n')

    def test_multiLineData(self) -> None:
        """
        Data of several lines (pre-encoded JSON may have them) is sent as
        several C{data:} lines, which a client joins with line feeds.
        """
        raw = RawJSON(b'{\n  "a": 1,\r\n  "b": 2\r}')
        encoded = encode_event({"data": raw, "event": "doc"})
        self.assertEqual(
            encoded, b'event: doc\ndata: {\ndata:   "a": 1,\ndata:   "b": 2\ndata: }\n\n'
        )
        (event,) = SSEClient(iter([encoded])).events()
        self.assertEqual(event.data, '{\n  "a": 1,\n  "b": 2\n}')
        self.assertEqual(event.event, "doc")

    def test_refused(self) -> None:
        for bad in (
            {"data": 1, "event": "two\nlines"},
            {"data": 1, "id": "a\rb"},
            {"data": 1, "id": "nul\x00"},
            {"data": 1, "retry": 1.5},
            {"data": 1, "retry": -1},
            {"data": 1, "event": ["x"]},
            {"data": float("nan")},
            object(),
            {"data": RawJSON(b"\xff")},
        ):
            self.assertRaises(BadResponse, encode_event, bad)


class EventStreamTests(StreamCase):
    @defer.inlineCallbacks
    def test_eventsParsed(self) -> Any:
        """
        The events of an EventStream, parsed by a real SSE parser.
        """
        yield self.serve()
        answer = self.open("/s/events").answer()
        self.assertEqual(answer.header(b"content-type"), b"text/event-stream")
        self.assertEqual(answer.header(b"cache-control"), b"no-store")
        self.assertEqual(answer.header(b"x-accel-buffering"), b"no")
        self.assertTrue(answer.complete)
        events = list(SSEClient(iter(answer.chunks)).events())
        self.assertEqual(
            [(e.event, e.id, e.data) for e in events],
            [("tick", "1", '{"n":1}'), ("message", None, "[1,2]")],
        )

    @defer.inlineCallbacks
    def test_headAtOnceAndHeartbeat(self) -> Any:
        """
        An event stream whose first event is not ready sends its head at
        once; a keep-alive comment goes out every C{heartbeat} seconds
        between the events; its timer ends with the stream.
        """
        yield self.serve()
        wire = self.open("/s/sse?hb=15")
        answer = wire.answer()
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.clock.advance(14)
        self.assertEqual(wire.answer().body, b"")
        self.clock.advance(1)
        self.assertEqual(wire.answer().body, KEEP_ALIVE)
        yield self.pulling()
        self.plugin.gates.pop(0).callback({"data": [1], "event": "e"})
        yield self.arrived(wire, b"event: e\n")
        self.clock.advance(15)
        body = wire.answer().body
        self.assertEqual(body, KEEP_ALIVE + b"event: e\ndata: [1]\n\n" + KEEP_ALIVE)
        (event,) = SSEClient(iter([body])).events()
        self.assertEqual((event.event, event.data), ("e", "[1]"))
        yield self.pulling()
        self.plugin.gates.pop(0).callback(None)
        yield self.arrived(wire, b"\r\n0\r\n\r\n")  # the last chunk
        self.assertTrue(wire.answer().complete)
        self.assertEqual(streamTimers(self.clock), [])

    @defer.inlineCallbacks
    def test_noHeartbeat(self) -> Any:
        """
        C{heartbeat=0}: no keep-alive comments, no timer.
        """
        yield self.serve()
        wire = self.open("/s/sse?hb=0")
        self.assertEqual(streamTimers(self.clock), [])
        self.clock.advance(100)
        self.assertEqual(wire.answer().body, b"")

    @defer.inlineCallbacks
    def test_keepAliveSkippedWhilePaused(self) -> Any:
        """
        A client that does not read gets no keep-alives piled up for it.
        """
        yield self.serve()
        wire = self.open("/s/sse?hb=1", bufferSize=10)
        yield self.pulling()
        self.plugin.gates.pop(0).callback({"data": "x" * 20})
        yield self.arrived(wire, b"x" * 20)
        self.assertTrue(wire.transport.full)
        before = len(wire.transport.value())
        self.clock.advance(5)
        self.assertEqual(len(wire.transport.value()), before)


# -- generations ------------------------------------------------------------------------


class ClosingTests(StreamCase):
    @defer.inlineCallbacks
    def test_aCleanUpThatAwaitsRunsWhole(self) -> Any:
        """
        A client that goes away while an async iterator waits: its pull is
        cancelled, and its clean-up, which awaits, runs to the end before
        the iterator is closed; nothing is logged as an error.
        """
        yield self.serve()
        wire = self.open("/s/slowclose")
        yield self.pulling(1)
        wire.close()
        yield until(lambda: self.plugin.closed == ["slowclose"])
        yield defer.Deferred.fromFuture(asyncio.ensure_future(asyncio.sleep(0.05)))
        self.assertEqual(self.errorsLogged(), [])


class GenerationTests(StreamCase):
    @defer.inlineCallbacks
    def test_reloadEndsTheStreams(self) -> Any:
        """
        A reload ends the old generation's open streams cleanly (body
        terminated and iterator closed before its stop() runs); new streams
        are the new generation's.
        """
        yield self.serve()
        old = self.plugin
        plain = self.open("/s/waits")
        yield self.pulling(1, old)
        old.gates.pop(0).callback(b"a")
        yield self.arrived(plain, b"\r\na\r\n")  # the chunk
        sse = self.open("/s/sse")
        ahead = self.open("/s/waits")  # no chunk yet: no head yet
        yield self.pulling(3, old)  # every stream's pull is in flight
        self.assertEqual(self.streams.count(), 3)
        self.dir.write("s", STREAMER + "\n# changed\n")
        outcome = yield self.server.registry.reload("s")
        self.assertTrue(outcome.success, outcome.error)
        # The iterators were closed before the old generation's stop() ran.
        self.assertEqual(old.closedAtStop, ["waits", "waits", "waits"])
        self.assertEqual(old.closed, ["waits", "waits", "waits"])
        answer = plain.answer()
        self.assertTrue(answer.complete)
        self.assertEqual(answer.body, b"a")
        self.assertTrue(sse.answer().complete)
        self.assertEqual(ahead.answer().status, 503)
        self.assertEqual(self.streams.count(), 0)
        self.assertEqual(streamTimers(self.clock), [])
        wire = self.open("/s/lines")
        self.assertTrue(wire.answer().complete)
        self.assertIsNot(self.plugin, old)
        self.assertEqual(self.plugin.closed, ["lines"])

    @defer.inlineCallbacks
    def test_unloadEndsTheStreams(self) -> Any:
        """
        A plugin removed by /reload/all ends its streams (its iterators
        closed).
        """
        yield self.serve()
        old = self.plugin
        wire = self.open("/s/sse")
        yield self.pulling(1, old)
        self.dir.remove("s")
        yield self.server.registry.reload_all()
        self.assertTrue(wire.answer().complete)
        yield until(lambda: len(old.closed) == 1)  # the cancelled pull ends
        self.assertEqual(old.closed, ["waits"])

    @defer.inlineCallbacks
    def test_retiredGenerationsStreamEndsAtOnce(self) -> Any:
        """
        A stream answered by a generation already replaced (its handler
        ran across the reload) ends at once.
        """
        yield self.serve()
        loaded = self.server.registry.get("s")
        self.streams.end(loaded)
        wire = self.open("/s/sse")
        self.assertTrue(wire.answer().complete)
        self.assertEqual(self.plugin.gates, [])  # closed before it ever ran
        self.assertEqual(self.open("/s/lines").answer().status, 503)
        self.assertEqual(self.plugin.pulled, 0)
        self.assertEqual(self.streams.count(), 0)

    @defer.inlineCallbacks
    def test_endAll(self) -> Any:
        """
        The server's stop ends every stream, and any answered after it.
        """
        yield self.serve()
        wire = self.open("/s/sse")
        self.streams.end_all()
        self.assertTrue(wire.answer().complete)
        self.assertTrue(self.open("/s/sse").answer().complete)
        self.assertEqual(self.streams.count(), 0)

    @defer.inlineCallbacks
    def test_nothingLeaksAcrossReloads(self) -> Any:
        """
        300 reloads, each with a stream open: every stream ends, and the
        streams' bookkeeping keeps no generation alive.
        """
        yield self.serve()
        for i in range(300):
            wire = self.open("/s/sse")
            self.dir.write("s", STREAMER + f"\n# {i}\n")
            outcome = yield self.server.registry.reload("s")
            self.assertTrue(outcome.success, outcome.error)
            self.assertTrue(wire.answer().complete)
            wire.close()
        self.wires.clear()
        self.assertEqual(self.streams.count(), 0)
        self.assertEqual(len(self.streams._open), 0)
        gc.collect()
        self.assertLessEqual(len(self.streams._retired), 2)
        self.assertEqual(streamTimers(self.clock), [])

    timeout = 240


class RetiredHookTests(TestCase):
    """
    The registry tells C{retired} of each generation that stops serving,
    before its stop(); it knows nothing of what the hook does.
    """

    @defer.inlineCallbacks
    def test_toldBeforeStop(self) -> Any:
        plugins = PluginDir(self)
        source = textwrap.dedent(
            """
            from pluginserver import Plugin


            class R(Plugin):
                stopped = False

                def stop(self):
                    self.stopped = True

                def handle(self, request):
                    return {}
            """
        )
        plugins.write("r", source)
        registry = plugins.registry(self)
        told: list[tuple[Any, bool]] = []
        registry.retired = lambda loaded: told.append((loaded, loaded.instance.stopped))
        yield registry.load_all()
        first = registry.get("r")
        plugins.write("r", source + "\n# changed\n")
        outcome = yield registry.reload("r")
        self.assertTrue(outcome.success, outcome.error)
        self.assertEqual(told, [(first, False)])  # told, then stopped
        self.assertTrue(first.instance.stopped)
        second = registry.get("r")
        plugins.remove("r")
        yield registry.reload_all()  # removed
        self.assertEqual(told[-1], (second, False))
        plugins.write("r", source)
        yield registry.reload_all()
        third = registry.get("r")
        yield registry.stop_all()  # the server stops
        self.assertEqual(told[-1], (third, False))
        self.assertEqual(len(told), 3)

    @defer.inlineCallbacks
    def test_aFailingHookIsLogged(self) -> Any:
        """
        A hook that raises is logged; the reload still succeeds and the old
        generation is still stopped.
        """
        plugins = PluginDir(self)
        plugins.write("hello", HELLO)

        def broken(loaded: Any) -> None:
            raise RuntimeError("hook")

        registry = plugins.registry(self)
        registry.retired = broken
        yield registry.load_all()
        plugins.write("hello", HELLO + "\n# changed\n")
        outcome = yield registry.reload("hello")
        self.assertTrue(outcome.success)
        self.assertEqual(outcome.generation, 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        registry.retired = lambda loaded: None


# -- for real -------------------------------------------------------------------------------

BIG = """
import os

from pluginserver import Plugin, Response

CHUNK = 65536


class Big(Plugin):
    '''
    /big: 200 MB in 64 KiB chunks; /big/count: how many were pulled, and
    whether the stream was closed.
    '''

    def start(self):
        self.pulled = 0
        self.closed = False

    def chunks(self):
        try:
            for _ in range(200 * 1000 * 1000 // CHUNK):
                self.pulled += 1
                yield os.urandom(CHUNK)  # a new object each time, freed once sent
        finally:
            self.closed = True

    def handle(self, request):
        if request.subpath == "count":
            return {"pulled": self.pulled, "closed": self.closed}
        return Response(self.chunks())
"""

TOTAL = (200 * 1000 * 1000 // 65536) * 65536

TICKS = """
from twisted.internet import defer, reactor

from pluginserver import EventStream, Plugin

MARK = {mark!r}


class Ticks(Plugin):
    '''An event every 0.1 s; writes MARK when its stream is closed.'''

    async def ticks(self):
        try:
            n = 0
            while True:
                yield {{"data": {{"n": n, "generation": {generation}}}}}
                n += 1
                d = defer.Deferred()
                reactor.callLater(0.1, d.callback, None)
                await d
        finally:
            with open(MARK, "a") as f:
                f.write("closed {generation}\\n")

    def handle(self, request):
        return EventStream(self.ticks())
"""


def _rss(pid: int) -> int:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss


def _slowReader(port: int) -> socket.socket:
    """
    A client with a small receive buffer that asks for /big and reads
    nothing.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def _readAll(sock: socket.socket, deadline: float) -> int:
    """
    Read the rest of a chunked answer; the number of bytes read (framing
    included).
    """
    total = 0
    tail = b""
    while time.monotonic() < deadline:
        data = sock.recv(262144)
        if not data:
            break
        total += len(data)
        tail = (tail + data)[-7:]
        if tail == b"\r\n0\r\n\r\n"[-7:]:
            break
    return total


class SlowReaderTests(TestCase):
    """
    A real server, a client that reads nothing while a plugin streams
    200 MB.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_slowReaderKeepsMemoryFlat(self) -> Any:
        """
        The server's memory stays flat (its RSS grows by less than 20 MB)
        while a client reads nothing of 200 MB, other clients are answered
        meanwhile, the plugin pulls only what the transport takes; the
        whole 200 MB still arrive when the client reads them.
        """
        server = Server(self)
        server.write_plugin("big", BIG)
        server.write_plugin("hello", HELLO)
        yield server.start()
        pid = server.pid()
        before = _rss(pid)
        sock = _slowReader(server.port)
        self.addCleanup(sock.close)
        peak = before
        pulled = []
        for _ in range(20):  # 2 s of not reading
            yield sleep(0.1)
            peak = max(peak, _rss(pid))
            status, body = yield server.get("/hello")
            self.assertEqual((status, body), (200, {"hello": "world"}))
            status, count = yield server.get("/big/count")
            pulled.append(count["pulled"])
        growth = peak - before
        # Only what the socket buffers and the transport's 64 KiB hold.
        self.assertLess(pulled[-1] * 65536, 16 * 1024 * 1024, pulled)
        self.assertEqual(pulled[-1], pulled[9], pulled)  # stalled: nothing more pulled
        self.assertLess(growth, 20 * 1024 * 1024)
        # Now the client reads all of it, as fast as it can.
        sampling = True

        def sample() -> None:
            nonlocal peak
            if sampling:
                peak = max(peak, _rss(pid))

        from twisted.internet import reactor, task

        loop = task.LoopingCall(sample)
        loop.clock = reactor
        loop.start(0.05)
        try:
            read = yield deferToThread(_readAll, sock, time.monotonic() + 60)
        finally:
            sampling = False
            loop.stop()
        self.assertGreater(read, TOTAL)
        self.assertLess(read, TOTAL + TOTAL // 1000)
        self.assertLess(peak - before, 20 * 1024 * 1024)
        status, count = yield server.get("/big/count")
        self.assertEqual(count["pulled"], TOTAL // 65536)
        print(
            f"\n  slow reader: RSS {before / 2**20:.1f} MiB before, peak growth "
            f"{growth / 2**20:.2f} MiB not reading, "
            f"{(peak - before) / 2**20:.2f} MiB over the whole 200 MB; "
            f"{pulled[-1]} chunks of 64 KiB pulled while not reading"
        )
        yield server.stop()

    @defer.inlineCallbacks
    def test_disconnectClosesTheIterator(self) -> Any:
        """
        A real client that goes away mid-stream closes the iterator.
        """
        server = Server(self)
        server.write_plugin("big", BIG)
        yield server.start()
        sock = _slowReader(server.port)
        yield sleep(0.3)
        sock.close()
        for _ in range(50):
            yield sleep(0.1)
            _, count = yield server.get("/big/count")
            if count["closed"]:
                break
        self.assertTrue(count["closed"])
        yield server.stop()


def _events(port: int, path: str, count: int, timeout: float = 10) -> tuple[list[Any], bool]:
    """
    Read events from C{path} with a real SSE parser until C{count} have
    come or the stream ends; also whether it ended cleanly (the last chunk
    came: http.client raises IncompleteRead on a cut body).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        assert response.status == 200, response.status
        assert response.getheader("content-type") == "text/event-stream"
        events = []
        client = SSEClient(response)
        for event in client.events():
            events.append(event)
            if len(events) == count:
                return events, False
        return events, True
    finally:
        connection.close()


class ReloadEndsStreamTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_reloadEndsTheOldGenerationsStream(self) -> Any:
        """
        A client reading an event stream when its plugin is reloaded sees
        the stream end cleanly (the old generation's iterator closed), and
        reconnects to the new generation.
        """
        server = Server(self)
        mark = os.path.join(server.dir, "closed.txt")
        server.write_plugin("ticks", TICKS.format(mark=mark, generation=1))
        yield server.start()
        reading = deferToThread(_events, server.port, "/ticks", 1000)
        yield sleep(0.5)
        server.write_plugin("ticks", TICKS.format(mark=mark, generation=2))
        status, body = yield server.get("/reload/ticks")
        self.assertEqual((status, body["generation"]), (200, 2))
        events, ended = yield reading
        self.assertTrue(ended)
        self.assertGreater(len(events), 1)
        self.assertEqual({e.data for e in events if '"generation":1' not in e.data}, set())
        with open(mark) as f:
            self.assertEqual(f.read(), "closed 1\n")
        events, _ = yield deferToThread(_events, server.port, "/ticks", 2)
        self.assertIn('"generation":2', events[0].data)
        # The server's stop ends a stream too, at once.
        reading = deferToThread(_events, server.port, "/ticks", 1000)
        yield sleep(0.3)
        began = time.monotonic()
        yield server.stop()
        events, ended = yield reading
        self.assertTrue(ended)
        self.assertLess(time.monotonic() - began, 4)
