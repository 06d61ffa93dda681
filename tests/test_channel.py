"""
The HTTP channel under the resource tree, and what it puts in the access log:

  - pipelined requests are answered one at a time, in order, and a client
    that does not read its answers is not read from either (memory does not
    grow with answers it leaves unread);
  - a client that half-closes after its request is still answered, and one
    that half-closes while idle is let go;
  - TCP listeners get a listen backlog of 511 unless they set one;
  - keys are redacted from the Referer in the access log, as from the URI.

The parsing and state are tested in memory (the channel over a
StringTransport that pushes back as a socket does, time on a Clock); what
depends on real sockets and a real process's memory, against twistd.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import time
from typing import Any

import psutil
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pluginserver.channel import MAX_HEADER, MAX_HEADERS
from pluginserver.site import PluginServerChannel, PluginServerRequest, PluginServerSite
from pluginserver.tls import DEFAULT_BACKLOG, listen_backlog, listener_problem, tls_endpoint
from tests.certs import make_certificate
from tests.helpers import HELLO, PushBackTransport, exchange, responses
from tests.process import Server, sleep

BIG = 524288  # bytes of "a" in a big answer: eight times a transport's buffer
TOO_LARGE_BODY = b'{"error":"request body too large"}'  # the 413's body

# -- in memory --------------------------------------------------------------


class _Answers(Resource):
    """
    The site's root: C{/big?n=N} answers N and L{BIG} bytes at once,
    C{/slow?n=N} answers N after 0.3 s on the site's clock, C{/stream}
    writes L{BIG} bytes and does not finish, anything else answers its
    C{n} at once.
    """

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, request: Any) -> Any:
        n = request.args.get(b"n", [b"-"])[0]
        if request.path == b"/big":
            return n + b" " + b"a" * BIG
        if request.path == b"/slow":

            def answer() -> None:
                request.setHeader(b"content-length", b"%d" % (len(n),))
                request.write(n)
                request.finish()

            self.clock.callLater(0.3, answer)
            return NOT_DONE_YET
        if request.path == b"/stream":
            request.write(b"a" * BIG)
            return NOT_DONE_YET
        return n


def get(path: bytes, close: bool = False) -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
    )


class ChannelCase(TestCase):
    """
    One connection to a site on a clock, over a L{PushBackTransport}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = PluginServerSite(_Answers(self.clock), reactor=self.clock)
        self.site.timeOut = 60
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(self.channel, PluginServerChannel)
        self.transport = PushBackTransport()
        self.channel.makeConnection(self.transport)


class IdleTimeoutTests(ChannelCase):
    """
    The idle timeout counts from the end of the last answer (or the start
    of the connection), never while a request is handled, and leaves no
    timer behind.
    """

    def channelTimers(self) -> list[Any]:
        return [
            c
            for c in self.clock.getDelayedCalls()
            if getattr(c.func, "__self__", None) is self.channel
        ]

    def test_notIdleWhileARequestIsHandled(self) -> None:
        """
        A request handled for longer than the idle timeout keeps its
        connection; the timeout counts again from its answer.
        """
        self.site.timeOut = 0.2
        self.channel.setTimeout(0.2)
        self.channel.dataReceived(get(b"/slow?n=1"))
        self.clock.advance(0.25)  # the idle timer fires while handling
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.05)  # the answer, at 0.3 s
        self.assertEqual(responses(self.transport.value()), [(200, b"1")])
        self.clock.advance(0.15)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)  # 0.25 s after the answer
        self.assertTrue(self.transport.disconnecting)

    def test_eachAnswerPushesTheTimeoutBack(self) -> None:
        """
        On a kept-alive connection each answer starts the idle time anew;
        one timer serves the whole connection.
        """
        for n in range(3):
            self.channel.dataReceived(get(b"/hello?n=%d" % (n,)))
            self.assertEqual(len(self.channelTimers()), 1)
            self.clock.advance(59)
            self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnecting)

    def test_noTimerOutlivesTheConnection(self) -> None:
        """
        A connection lost while a request is handled leaves no timer.
        """
        self.channel.dataReceived(get(b"/slow?n=1"))
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.channelTimers(), [])


class PipeliningTests(ChannelCase):
    """
    Pipelined requests and a transport that pushes back.
    """

    def test_answersWaitForTheClientToRead(self) -> None:
        """
        Pipelined requests for big answers, in one packet: one answer is
        written, then nothing more (and nothing more is read) until the
        client has read it; then the next; all in order.
        """
        self.channel.dataReceived(b"".join(get(b"/big?n=%d" % i) for i in range(10)))
        bodies = []
        for i in range(10):
            sent = self.transport.value()
            (response,) = responses(sent)
            self.assertEqual(response[0], 200)
            self.assertEqual(response[1][:8].split(b" ")[0], b"%d" % i)
            # Exactly one answer is buffered, and the connection is not read.
            self.assertEqual(len(responses(sent)), 1)
            self.assertLess(len(sent), BIG + 1024)
            self.assertEqual(self.transport.producerState, "paused")
            bodies.append(response[1])
            self.transport.drain()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(bodies), 10)
        self.assertEqual(len(self.channel.requests), 0)

    def test_smallAnswersAreAllWrittenInOrder(self) -> None:
        """
        Answers that fit the transport's buffer are all written at once, in
        order; the connection stays open and read.
        """
        self.channel.dataReceived(b"".join(get(b"/hello?n=%d" % i) for i in range(50)))
        found = responses(self.transport.value())
        self.assertEqual(found, [(200, b"%d" % i) for i in range(50)])
        self.assertEqual(self.transport.producerState, "producing")
        self.assertFalse(self.transport.disconnecting)

    def test_slowAnswersComeOneAtATimeInOrder(self) -> None:
        """
        Pipelined requests to a handler that answers later: each waits for
        the one before it.
        """
        self.channel.dataReceived(b"".join(get(b"/slow?n=%d" % i) for i in range(3)))
        self.assertEqual(self.transport.value(), b"")
        for i in range(3):
            self.clock.advance(0.3)
            self.assertEqual(responses(self.transport.value())[-1], (200, b"%d" % i))
            self.assertEqual(len(responses(self.transport.value())), i + 1)

    def test_aHeldRequestIsNotASlowHead(self) -> None:
        """
        A request that waits for the client to read the answer before it is
        not a head arriving slowly: no 408, however long the client takes.
        """
        self.channel.dataReceived(get(b"/big?n=1") + get(b"/hello?n=2"))
        self.clock.advance(self.site.header_timeout + 1)
        self.assertNotIn(b"408", self.transport.value())
        self.assertFalse(self.transport.disconnecting)
        self.transport.drain()
        self.assertEqual(responses(self.transport.value()), [(200, b"2")])

    def test_aClientThatNeverReadsIsTimedOut(self) -> None:
        """
        The idle timeout still ends a connection held for a client that does
        not read.
        """
        self.channel.dataReceived(get(b"/big?n=1") + get(b"/hello?n=2"))
        self.clock.advance(self.site.timeOut + 1)
        self.assertTrue(self.transport.disconnecting)

    def test_notReadWhileAStreamedAnswerIsUnread(self) -> None:
        """
        A handler that writes more than the transport takes, and goes on:
        the connection is not read meanwhile (twisted.web would go on
        reading what the client sends), and is again once the client reads.
        """
        self.channel.dataReceived(get(b"/stream"))
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.drain()
        self.assertEqual(self.transport.producerState, "producing")

    def test_aRefusalIsAnsweredInTurn(self) -> None:
        """
        A request refused as it arrives (here: a body over the limit,
        behind a request still being handled) is refused after the answers
        before it, never ahead of them.
        """
        self.site.max_body = 10
        self.channel.dataReceived(
            get(b"/slow?n=1")
            + b"POST /hello?n=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 400\r\n\r\n"
        )
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.3)
        sent = self.transport.value()
        self.assertEqual(responses(sent)[:2], [(200, b"1"), (413, TOO_LARGE_BODY)])
        self.assertTrue(self.transport.writeClosed)

    def test_aBodyArrivesWhileTheRequestBeforeIsHandled(self) -> None:
        self.channel.dataReceived(
            get(b"/slow?n=1")
            + b"POST /hello?n=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nab"
        )
        self.channel.dataReceived(b"cd")
        self.clock.advance(0.3)
        self.assertEqual(responses(self.transport.value()), [(200, b"1"), (200, b"2")])
        self.assertFalse(self.transport.disconnecting)

    def test_theLastAnswerBeforeCloseIsNotHeld(self) -> None:
        """
        C{Connection: close} ends the connection after its answer, even
        one the client has not read yet.
        """
        self.channel.dataReceived(get(b"/big?n=1", close=True))
        self.assertTrue(self.transport.disconnecting)


class HalfCloseTests(ChannelCase):
    """
    The client's end of data (C{readConnectionLost}): what it sent is
    answered, then the connection is closed.
    """

    def test_isHalfCloseable(self) -> None:
        self.assertTrue(IHalfCloseableProtocol.providedBy(self.channel))

    def test_requestThenHalfCloseIsAnsweredThenClosed(self) -> None:
        self.channel.dataReceived(get(b"/slow?n=1"))
        self.channel.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.3)
        self.assertEqual(responses(self.transport.value()), [(200, b"1")])
        self.assertTrue(self.transport.disconnecting)

    def test_everyPipelinedRequestIsAnswered(self) -> None:
        self.channel.dataReceived(
            get(b"/slow?n=1") + get(b"/hello?n=2") + get(b"/slow?n=3") + get(b"/hello?n=4")
        )
        self.channel.readConnectionLost()
        self.clock.advance(0.3)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.3)
        self.assertEqual(
            responses(self.transport.value()),
            [(200, b"1"), (200, b"2"), (200, b"3"), (200, b"4")],
        )
        self.assertTrue(self.transport.disconnecting)

    def test_heldAnswersAreAnsweredThenClosed(self) -> None:
        """
        Half-closed with an answer the client has not read and a request
        after it: both are answered as the client reads, then it closes.
        """
        self.channel.dataReceived(get(b"/big?n=1") + get(b"/hello?n=2"))
        self.channel.readConnectionLost()
        self.assertFalse(self.transport.disconnecting)
        self.transport.drain()
        self.assertEqual(responses(self.transport.value()), [(200, b"2")])
        self.assertTrue(self.transport.disconnecting)

    def test_idleHalfCloseCloses(self) -> None:
        self.channel.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_halfCloseAfterAnAnswerCloses(self) -> None:
        self.channel.dataReceived(get(b"/hello?n=1"))
        self.channel.readConnectionLost()
        self.assertEqual(responses(self.transport.value()), [(200, b"1")])
        self.assertTrue(self.transport.disconnecting)

    def test_halfCloseInAHeadCloses(self) -> None:
        """
        A head that can no longer complete: closed at once, with no 408
        timer left behind.
        """
        self.channel.dataReceived(b"GET /hello HTTP/1.1\r\nHost: 127.")
        self.channel.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(self.site.header_timeout + 1)
        self.assertEqual(self.transport.value(), b"")

    def test_halfCloseDuringARefusalEndsIt(self) -> None:
        """
        A refused request is answered and its connection drained for a
        moment; the client's end of data ends that at once.
        """
        self.site.max_body = 10
        self.channel.dataReceived(
            b"POST /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
        )
        self.assertIn(b"413", self.transport.value())
        self.assertTrue(self.transport.writeClosed)
        self.channel.writeConnectionLost()  # the refusal is sent: still draining
        self.assertFalse(self.transport.disconnecting)
        self.channel.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_writeConnectionLostCloses(self) -> None:
        self.channel.writeConnectionLost()
        self.assertTrue(self.transport.disconnecting)


class FramingTests(ChannelCase):
    """
    What llhttp's framing means for a connection: an Upgrade request is
    answered and ends the connection; a client that expects C{100
    Continue} gets it before it sends its body, and then its answer.
    """

    def test_upgradeIsAnsweredThenClosed(self) -> None:
        self.channel.dataReceived(
            b"GET /hello?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n" + get(b"/hello?n=2")
        )
        sent = self.transport.value()
        self.assertEqual(responses(sent), [(200, b"1")])
        self.assertIn(b"\r\nConnection: close\r\n", sent)
        self.assertTrue(self.transport.disconnecting)

    def test_continueBeforeTheBody(self) -> None:
        self.channel.dataReceived(
            b"POST /hello?n=7 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.transport.clear()
        self.channel.dataReceived(b"{}")
        self.assertEqual(responses(self.transport.value()), [(200, b"7")])
        self.assertFalse(self.transport.disconnecting)


def headed(lines: list[bytes], end: bytes = b"\r\n") -> bytes:
    """
    A GET of C{/hello?n=1} whose head holds C{Host} and then C{lines}.
    """
    return b"GET /hello?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(lines) + end


class HeadBoundsTests(ChannelCase):
    """
    A head of at most 500 header lines and 16 KiB of them (name, value,
    ": " and CRLF each) is answered, however it arrives; one past either
    bound is refused 431 and the connection closed, whether it came in one
    read or many, and whether or not it was complete.
    """

    HOST_LINE = len(b"Host: 127.0.0.1\r\n")

    def assertRefused(self) -> None:
        self.assertEqual(responses(self.transport.value())[0][0], 431)
        self.assertTrue(self.transport.writeClosed)  # the refusal's half-close

    def test_fiveHundredLinesAreAnswered(self) -> None:
        self.channel.dataReceived(headed([b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS - 1)]))
        self.assertEqual(responses(self.transport.value()), [(200, b"1")])

    def test_fiveHundredAndOneLinesAreRefused(self) -> None:
        self.channel.dataReceived(headed([b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS)]))
        self.assertRefused()

    def test_repeatedLinesCountToo(self) -> None:
        self.channel.dataReceived(headed([b"X: 1\r\n"] * MAX_HEADERS))
        self.assertRefused()

    def test_sixteenKiBAreAnswered(self) -> None:
        value = b"v" * (MAX_HEADER - self.HOST_LINE - len(b"X-Big: \r\n"))
        self.channel.dataReceived(headed([b"X-Big: " + value + b"\r\n"]))
        self.assertEqual(responses(self.transport.value()), [(200, b"1")])

    def test_aByteMoreIsRefused(self) -> None:
        value = b"v" * (MAX_HEADER - self.HOST_LINE - len(b"X-Big: \r\n") + 1)
        self.channel.dataReceived(headed([b"X-Big: " + value + b"\r\n"]))
        self.assertRefused()

    def test_aHeadInManyReadsIsMeasured(self) -> None:
        head = headed([b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS)])
        for start in range(0, len(head), 100):
            self.channel.dataReceived(head[start : start + 100])
        self.assertRefused()

    def test_anIncompleteHeadIsRefusedWhenItsReadEnds(self) -> None:
        # What it holds of the head is not kept waiting for the rest.
        self.channel.dataReceived(headed([b"X: 1\r\n"] * (MAX_HEADERS + 1), end=b""))
        self.assertRefused()

    def test_smallHeadsInOneLargeReadAreAnswered(self) -> None:
        # Each head is bounded on its own, not the read.
        requests = [
            headed([b"X-%d: %s\r\n" % (i, b"v" * 30) for i in range(20)]) for _ in range(40)
        ]
        data = b"".join(requests)
        self.assertGreater(len(data), MAX_HEADER)
        self.channel.dataReceived(data)
        self.assertEqual(responses(self.transport.value()), [(200, b"1")] * 40)

    def test_trailersCountWithTheHead(self) -> None:
        # A chunked body's trailer lines are header lines too: a client
        # cannot send them without end.
        self.channel.dataReceived(
            b"POST /hello?n=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
        )
        for i in range(MAX_HEADERS):
            self.channel.dataReceived(b"X-%d: 1\r\n" % i)
        self.assertRefused()


HUGE = 16 * 1048576  # bytes of an answer no socket buffer takes at once


class _Sizes(Resource):
    """
    C{/huge?n=N} answers N and L{HUGE} bytes, anything else its C{n}; each
    answer is written in two parts (head, then body), as Klein's are.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        n = request.args.get(b"n", [b"-"])[0]
        body = n + b" " + b"h" * HUGE if request.path == b"/huge" else n
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(b"")  # the head alone
        request.write(body)
        request.finish()
        return NOT_DONE_YET


def exchange_pipelined(port: int, data: bytes, count: int) -> list[tuple[int, bytes]]:
    """
    Send C{data} on a fresh connection and read until C{count} answers have
    arrived whole.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        return exchange(s, data, count)


class SocketTests(TestCase):
    """
    The channel over a real TCP connection: answers go straight to the
    socket while it takes them, and through the transport, in order, from
    the first it does not take whole; Nagle's algorithm is off, so that an
    answer written in parts never waits for the client's delayed ACK.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.site = PluginServerSite(_Sizes(), reactor=reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.port.stopListening)

    def tearDown(self) -> Any:
        for channel in list(self.site.channels):
            channel.transport.abortConnection()
        return sleep(0.05)

    @defer.inlineCallbacks
    def test_pipelinedAnswersPastAFullSocketStayInOrder(self) -> Any:
        port = self.port.getHost().port
        data = get(b"/small?n=1") + get(b"/huge?n=2") + get(b"/small?n=3")
        found = yield deferToThread(exchange_pipelined, port, data, 3)
        self.assertEqual(
            [(status, body[:2]) for status, body in found],
            [(200, b"1"), (200, b"2 "), (200, b"3")],
        )
        self.assertEqual(len(found[1][1]), HUGE + 2)

    @defer.inlineCallbacks
    def test_noDelay(self) -> Any:
        port = self.port.getHost().port

        client = socket.create_connection(("127.0.0.1", port), timeout=20)
        found = yield deferToThread(exchange, client, get(b"/small?n=1"))
        try:
            self.assertEqual(found, [(200, b"1")])
            (channel,) = self.site.channels
            self.assertTrue(channel.transport.getTcpNoDelay())
        finally:
            client.close()


class BacklogTests(TestCase):
    """
    The listen backlog each endpoint string gets.
    """

    def listen(self, description: str) -> MemoryReactor:
        reactor = MemoryReactor()
        endpoint, _ = tls_endpoint(reactor, description)
        endpoint.listen(Factory.forProtocol(Protocol))
        return reactor

    def test_tcpDefaultsTo511(self) -> None:
        self.assertEqual(DEFAULT_BACKLOG, 511)
        for description in (
            "tcp:8080:interface=127.0.0.1",
            "tcp:8080",
            "tcp6:8080:interface=\\:\\:1",
        ):
            ((_, _, backlog, _),) = self.listen(description).tcpServers
            self.assertEqual(backlog, 511, description)

    def test_theBacklogTheLoopListensWith(self) -> None:
        # The loop listens again when it takes a port over (aioport): with
        # the backlog the endpoint string gave, or the default.
        self.assertEqual(listen_backlog("tcp:8080:interface=127.0.0.1"), 511)
        self.assertEqual(listen_backlog("tcp:8080:backlog=7"), 7)
        self.assertEqual(listen_backlog("ssl:8443:privateKey=k.pem:certKey=c.pem"), 511)
        # A socket handed over whole: the kernel's most, as systemd asks.
        self.assertEqual(listen_backlog("systemd:domain=INET:index=0"), socket.SOMAXCONN)

    def test_explicitBacklogStays(self) -> None:
        ((port, _, backlog, interface),) = self.listen(
            "tcp:8080:backlog=7:interface=127.0.0.1"
        ).tcpServers
        self.assertEqual((port, backlog, interface), (8080, 7, "127.0.0.1"))
        self.assertIsNotNone(listener_problem(MemoryReactor(), "tcp:8080:backlog=many"))
        self.assertIsNone(listener_problem(MemoryReactor(), "tcp:8080:backlog=7"))

    def test_sslDefaultsTo511(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        key, certificate, _ = make_certificate(directory)
        tls = f"ssl:8443:interface=127.0.0.1:privateKey={key}:certKey={certificate}"
        ((_, _, _, backlog, _),) = self.listen(tls).sslServers
        self.assertEqual(backlog, 511)
        ((_, _, _, backlog, _),) = self.listen(tls + ":backlog=1024").sslServers
        self.assertEqual(backlog, 1024)

    def test_otherListenersAreLeftAlone(self) -> None:
        path = os.path.abspath(self.mktemp())
        ((_, _, backlog, _, _),) = self.listen(f"unix:{path}").unixServers
        self.assertEqual(backlog, 50)


class AccessLogRedactionTests(TestCase):
    """
    The Referer is a URL too: its key is redacted as the request's own.
    """

    STAMP = "[29/Nov/2026:18:04:01 +0000]"

    def request(self, uri: bytes, referrer: bytes | None, agent: bytes = b"curl") -> Any:
        from twisted.web.test.requesthelper import DummyChannel

        request = PluginServerRequest(DummyChannel(), False)
        request.method = b"GET"
        request.uri = uri
        request.clientproto = b"HTTP/1.1"
        request.code = 200
        request.sentLength = 17
        request.requestHeaders.setRawHeaders(b"user-agent", [agent])
        if referrer is not None:
            request.requestHeaders.setRawHeaders(b"referer", [referrer])
        return request

    def test_refererKeyIsRedactedOnBothPaths(self) -> None:
        from pluginserver.site import redacted_log_line

        # Plain fields take the fast path, a quote the escaping one.
        for agent in (b"curl", b'"quoted"'):
            for uri in (b"/h", b"/h?apikey=OTHER"):
                line = redacted_log_line(
                    self.STAMP,
                    self.request(uri, b"http://x/page?a=1&apikey=SECRET&api%6Bey=S2", agent),
                )
                self.assertIn('"http://x/page?a=1&apikey=REDACTED&api%6Bey=REDACTED"', line)
                self.assertNotIn("SECRET", line)
                self.assertNotIn("S2", line)
                self.assertNotIn("OTHER", line)

    def test_otherwiseTheSameLine(self) -> None:
        from twisted.web.http import combinedLogFormatter

        from pluginserver.site import redacted_log_line

        for referrer in (None, b"https://a.example/", b"https://a.example/p?q=1", b'"?x'):
            request = self.request(b"/h?a=1", referrer)
            self.assertEqual(
                redacted_log_line(self.STAMP, request), combinedLogFormatter(self.STAMP, request)
            )


# -- against twistd -------------------------------------------------------------

BIG_PLUGIN = """
from pluginserver import Plugin

class Big(Plugin):
    def handle(self, request):
        return {"n": request.args.get("n", ""), "x": "a" * 524288}
"""

SLOW = """
from twisted.internet import reactor, task
from pluginserver import Plugin

class Slow(Plugin):
    def handle(self, request):
        return task.deferLater(reactor, 0.3, lambda: {"slept": 0.3})
"""


def talk(
    port: int,
    data: bytes,
    halfClose: bool = False,
    pause: float = 0.0,
    timeout: float = 10.0,
    context: ssl.SSLContext | None = None,
) -> tuple[bytes, float]:
    """
    Send C{data} on one connection (then shut down our sending side, if
    C{halfClose}), wait C{pause} seconds, read until the server closes;
    return what was read and how long the reading took.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        s: socket.socket = raw
        if context is not None:
            s = context.wrap_socket(raw, server_hostname="localhost")
        s.sendall(data)
        if halfClose:
            s.shutdown(socket.SHUT_WR)
        time.sleep(pause)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                chunk = s.recv(1 << 20)
            except OSError:  # ssl.SSLError too
                break
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - started


class PipeliningProcessTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def serve(self) -> Any:
        server = Server(self)
        server.write_plugin("hello", HELLO)
        server.write_plugin("big", BIG_PLUGIN)
        yield server.start()
        return server

    @defer.inlineCallbacks
    def test_unreadPipelinedAnswersDoNotGrowMemory(self) -> Any:
        """
        200 pipelined requests for a 512 KiB answer, sent in one go by a
        client that never reads: the server's memory grows by less than
        20 MB (twisted.web alone grew by about 190 MB), and it serves others
        meanwhile.
        """
        server = yield self.serve()
        # One big answer first, so that what it allocates once is counted
        # before.
        response, _ = yield deferToThread(talk, server.port, get(b"/big", close=True))
        self.assertEqual(responses(response)[0][0], 200)
        process = psutil.Process(server.pid())
        before = process.memory_info().rss
        client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(client.close)
        client.sendall(b"".join(get(b"/big?n=%d" % i) for i in range(200)))
        peak = before
        for _ in range(20):
            yield sleep(0.1)
            peak = max(peak, process.memory_info().rss)
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))
        growth = (peak - before) / 2**20
        self.assertLess(growth, 20, f"RSS grew by {growth:.1f} MB")
        # The requests were read: the first answer is there.
        first = yield deferToThread(client.recv, 4096)
        self.assertTrue(first.startswith(b"HTTP/1.1 200 "), first[:100])

    @defer.inlineCallbacks
    def test_pipelinedAnswersComeInOrder(self) -> Any:
        """
        50 pipelined requests with distinct arguments, read as they come;
        then 20 for big answers read only after a pause (the server holds
        them meanwhile): every answer, once, in order.
        """
        server = yield self.serve()
        requests = b"".join(get(b"/hello?name=%d" % i, close=i == 49) for i in range(50))
        received, _ = yield deferToThread(talk, server.port, requests)
        found = responses(received)
        self.assertEqual(
            [(status, json.loads(body)) for status, body in found],
            [(200, {"hello": str(i)}) for i in range(50)],
        )
        requests = b"".join(get(b"/big?n=%d" % i, close=i == 19) for i in range(20))
        received, _ = yield deferToThread(talk, server.port, requests, pause=0.5)
        found = responses(received)
        self.assertEqual([status for status, _ in found], [200] * 20)
        answers = [json.loads(body) for _, body in found]
        self.assertEqual([answer["n"] for answer in answers], [str(i) for i in range(20)])
        self.assertEqual({len(answer["x"]) for answer in answers}, {524288})


class HalfCloseProcessTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def serve(self, keys: str = "") -> Any:
        server = Server(self, server=keys)
        server.write_plugin("hello", HELLO)
        server.write_plugin("slow", SLOW)
        yield server.start()
        return server

    @defer.inlineCallbacks
    def test_requestThenHalfCloseIsAnswered(self) -> Any:
        """
        C{GET} then C{shutdown(SHUT_WR)}: a 200 with its body, then the
        server closes; the same for a handler that answers 0.3 s later, and
        for pipelined requests.
        """
        server = yield self.serve()
        for _ in range(3):
            received, _ = yield deferToThread(
                talk, server.port, get(b"/hello?name=half"), halfClose=True
            )
            self.assertEqual(responses(received), [(200, b'{"hello":"half"}')], received)
            received, took = yield deferToThread(talk, server.port, get(b"/slow"), halfClose=True)
            self.assertEqual(responses(received), [(200, b'{"slept":0.3}')], received)
            self.assertLess(took, 5)
        received, _ = yield deferToThread(
            talk, server.port, get(b"/slow") + get(b"/hello") + get(b"/slow"), halfClose=True
        )
        self.assertEqual(
            responses(received),
            [(200, b'{"slept":0.3}'), (200, b'{"hello":"world"}'), (200, b'{"slept":0.3}')],
        )

    @defer.inlineCallbacks
    def test_idleHalfCloseEndsTheConnection(self) -> Any:
        """
        Connections half-closed while idle, or in the middle of a head,
        are closed at once (the idle timeout is a minute), and nothing of
        them stays open in the server.
        """
        server = yield self.serve()
        process = psutil.Process(server.pid())
        yield sleep(0.2)
        before = process.num_fds()
        for data in (b"", b"GET /hello HTTP/1.1\r\nHo") * 10:
            received, took = yield deferToThread(talk, server.port, data, halfClose=True)
            self.assertEqual(received, b"")
            self.assertLess(took, 5)
        yield sleep(0.2)
        self.assertLessEqual(process.num_fds(), before)
        status, _ = yield server.get("/hello")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_tlsHalfCloseEndsTheConnectionCleanly(self) -> Any:
        """
        Over TLS the end of the client's data ends the session (the TLS
        layer is not half-closeable): the connection ends, without an error
        in the log, and the server goes on serving.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        _, _, pem = make_certificate(directory)
        server = Server(
            self,
            listen="ssl:{port}:interface=127.0.0.1:privateKey=server.key:certKey=server.crt",
            trust=pem,
        )
        for name in ("server.key", "server.crt"):
            shutil.copy(os.path.join(directory, name), server.dir)
        server.write_plugin("hello", HELLO)
        yield server.start()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        for _ in range(3):
            _, took = yield deferToThread(
                talk, server.port, get(b"/hello"), halfClose=True, context=context
            )
            self.assertLess(took, 5)
        status, body = yield server.get("/hello")
        self.assertEqual((status, body), (200, {"hello": "world"}))
        self.assertNotIn("Traceback", server.log())

    @defer.inlineCallbacks
    def test_refererKeyIsRedactedInTheAccessLog(self) -> Any:
        server = yield self.serve("access_log = access.log\n")
        yield server.get("/hello", headers={"Referer": "http://x/page?apikey=REF-SECRET&b=1"})
        path = os.path.join(server.dir, "access.log")
        text = ""
        for _ in range(40):  # written out every second
            yield sleep(0.1)
            with open(path) as f:
                text = f.read()
            if "/page" in text:
                break
        self.assertIn('"http://x/page?apikey=REDACTED&b=1"', text)
        self.assertNotIn("REF-SECRET", text)
