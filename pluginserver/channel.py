# -*- test-case-name: tests.test_channel,tests.test_channel_web,tests.test_fuzz -*-
"""
The server's HTTP/1.1 channel: every byte of every connection is parsed
here, by llhttp (through httptools), in its strict mode.  There is no other
HTTP parser in the server: two parsers that disagree about where a request
ends is how requests are smuggled.

Each parsed message becomes a request of the site's C{requestFactory}
(L{pluginserver.site.ParsedRequest}), filled in from what llhttp parsed.
A plugin route's answer is written whole from it; where the web layer
needs twisted.web's own L{Request} (Klein, C{static.File}, streamed
answers), one is made from it and put in its place (L{replace}), and this
channel gives it what a twisted.web channel gives: C{writeHeaders},
C{write}, C{writeSequence}, C{requestDone}, producers, C{getPeer},
C{getHost}, C{isSecure} and C{loseConnection}.

Beyond parsing, the channel keeps the connection's rules:

  - Pipelined requests are answered one at a time, in order.  A client that
    does not read its answers is not read from either: when an answer is
    left unsent in the transport, the next request waits (and nothing more
    is read) until the transport has sent it.  At most one complete request
    waits behind the one being answered; then reading stops.
  - A request's head must arrive within C{header_timeout} of its first
    byte, however slowly it trickles in (slowloris): 408.  A request line
    over 16 KiB is refused 414; one header over 16 KiB, more than 16 KiB of
    headers in all, or more than 500 headers, 431.  Malformed framing of
    any kind (which llhttp's strict mode refuses: a Content-Length with a
    Transfer-Encoding, two lengths, a bad chunk size, a bare CR...) is
    refused 400.  A refusal is answered in turn (after the requests before
    it), and the connection is closed after it.
  - An idle connection closes after C{idle_timeout}; one timer per
    connection, pushed back by activity rather than remade per request.
  - A client that half-closes after its request is still answered.
  - The site knows its connections, so that a graceful stop can wait for
    the requests in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeAlias

from httptools import (
    HttpParserError,
    HttpParserInvalidURLError,
    HttpParserUpgrade,
    HttpRequestParser,
)

# twisted.web's own channel drives a pull producer (a static.File's) with
# this adapter: the same here.
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.tcp import Server
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer  # type: ignore[import-untyped]

from pluginserver.answers import (
    BAD_REQUEST,
    BAD_REQUEST_TARGET,
    HEAD_TIMEOUT,
    HEADERS_TOO_LARGE,
    SERVER_ERROR,
    URI_TOO_LONG,
)

if TYPE_CHECKING:
    from twisted.internet.base import DelayedCall

    from pluginserver.site import ParsedRequest, PluginServerRequest, PluginServerSite

    AnyRequest: TypeAlias = ParsedRequest | PluginServerRequest

LINGER = 2.0
"""
Seconds a refused connection is still read (and the data dropped) after
the answer: closing at once, with unread data, makes the kernel send a reset
that can destroy the answer before the client reads it.
"""

MAX_TARGET = 16384
"""Bytes of a request target (414 past it)."""

MAX_HEADER = 16384
"""Bytes of one header line, and of all a request's header lines (431)."""

MAX_HEADERS = 500
"""Header lines in one request (431 past it)."""

ABORT_TIMEOUT = 15.0
"""Seconds a timed-out connection may take to close before it is aborted."""

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

log = Logger()


@lru_cache(maxsize=1024)
def _canonical(name: bytes) -> bytes:
    """
    The name twisted.web's Headers keeps a header under, asked of Headers
    itself (bounded: a client cannot grow it).
    """
    probe = Headers()
    probe.addRawHeader(name, b"")
    ((key, _),) = probe.getAllRawHeaders()
    return key


_DIRECT = isinstance(getattr(Headers(), "_rawHeaders", None), dict)
"""
Whether parsed headers can go straight into twisted.web's Headers dict,
under the names Headers itself gives them (see L{_canonical}); adding them
one by one through its API cost as much as all the rest of parsing a
request.  llhttp has already refused any value Headers would have to clean
(a CR, an LF).  Through the public API if that dict ever goes away.
"""


def _parsed_headers(raw: dict[bytes, list[bytes]]) -> Headers:
    """
    twisted.web's Headers holding the parsed headers C{raw}, by canonical
    name.
    """
    if _DIRECT:
        headers = Headers.__new__(Headers)
        headers._rawHeaders = raw
        return headers
    headers = Headers()  # pragma: no cover - a future twisted.web
    for name, values in raw.items():  # pragma: no cover
        headers.setRawHeaders(name, values)
    return headers  # pragma: no cover


_CONTENT_LENGTH = _canonical(b"content-length")
_TRANSFER_ENCODING = _canonical(b"transfer-encoding")
_EXPECT = _canonical(b"expect")


def header_values(headers: Headers, name: bytes) -> list[bytes] | None:
    """
    What C{headers.getRawHeaders(name)} gives for a C{bytes} name (the
    values of header C{name}, or L{None}), at a third of its cost: the
    gate asks it of every request.
    """
    if _DIRECT:
        return headers._rawHeaders.get(_canonical(name)) or None
    values = headers.getRawHeaders(name)  # pragma: no cover - a future twisted.web
    return list(values) if values is not None else None  # pragma: no cover


def header_lines(headers: Headers, head: list[bytes] | None = None) -> list[bytes]:
    """
    The pieces of an answer's header lines (added to C{head}, when given).
    """
    if head is None:
        head = []
    for name, values in headers.getAllRawHeaders():
        for value in values:
            head += (name, b": ", value, b"\r\n")
    return head


def answer_head(version: bytes, code: bytes, reason: bytes, headers: Headers) -> list[bytes]:
    """
    The pieces of an answer's head: status line, header lines, blank line.
    """
    head = header_lines(headers, [version, b" ", code, b" ", reason, b"\r\n"])
    head.append(b"\r\n")
    return head


class _Stop(Exception):  # noqa: N818 - stops parsing, reports nothing
    """
    Raised in a parser callback to stop parsing: the channel has refused
    the connection (its reason is kept on the channel).
    """


@implementer(IHalfCloseableProtocol, IPushProducer)
class PluginServerChannel(Protocol):
    """
    One HTTP/1.1 connection, parsed by llhttp.

    @ivar requests: the requests whose head has arrived and that are not yet
        answered, in order; the first is being answered (or waits for the
        client to read the answer before it).
    @ivar persistent: whether the connection stays open after the answer
        being written (an answer may end that, as a file's does on error).
    @ivar timeOut: the idle timeout, in seconds (L{None}: none).
    """

    site: PluginServerSite  # set by Site.buildProtocol
    factory: PluginServerSite
    requestFactory: Callable[..., AnyRequest]
    callLater: Callable[..., DelayedCall]  # set by HTTPFactory.buildProtocol
    transport: Any  # an ITCPTransport or a TLS one (typed loosely for mypy)

    def __init__(self) -> None:
        # All of a connection's state is on the instance from the start:
        # CPython 3.11 specialises reads of an instance's attributes, not of
        # its class's, and these are read on every request.
        self.timeOut: float | None = None
        self.persistent = True
        # The request being answered (the first of requests), or None.
        self._current: AnyRequest | None = None
        # The request whose head has arrived and whose body is still arriving.
        self._receiving: AnyRequest | None = None
        # An answer is unsent in the transport: the next request waits.
        self._held = False
        # The transport has asked us to stop writing.
        self._waitingForTransport = False
        # A refusal waiting for the requests before it to be answered.
        self._pending: bytes | None = None
        # The refusal was sent: what the client still sends is dropped.
        self._refusing: DelayedCall | None = None
        # The client sent its end of data: answer what came, then close.
        self._readClosed = False
        # The connection is closing after an answer: answer nothing more.
        self._closing = False
        # Whether we have stopped the transport's reading.
        self._readPaused = False
        # Inside _next: a request answered meanwhile does not start another.
        self._running = False
        self._headDeadline: DelayedCall | None = None
        self._idleCall: DelayedCall | None = None
        self._abortingCall: DelayedCall | None = None
        self._lastActive = 0.0
        # An answer's producer (a file, a stream), as a push producer.
        self._answerProducer: Any = None
        self._answerStreaming = True
        # An Upgrade request was read: what follows it is not HTTP to us.
        self._upgraded = False
        # Parsing state of the message being read: whether its head is
        # arriving, began in this read, and how many bytes of it came in
        # reads after the first; its target, its headers' values by
        # canonical name, and its header lines (trailers too) so far: how
        # many, and their bytes (name, value, ": " and CRLF each).
        self._inHead = False
        self._begun = False
        self._headBytes = 0
        self._target = b""
        self._headers: dict[bytes, list[bytes]] = {}
        self._lines = 0
        self._lineBytes = 0

    # -- the connection --------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.requests: list[AnyRequest] = []
        self._parser = HttpRequestParser(self)
        self._peer = transport.getPeer()
        self._host = transport.getHost()
        self._secure = ISSLTransport.providedBy(transport)
        reactor: Any = self.site.reactor  # typed loosely: a zope Interface
        self._seconds: Callable[[], float] = reactor.seconds
        transport.registerProducer(self, True)
        self._registered = True
        # A TCP connection's socket (ISystemHandle): see write.
        self._socket: Any = None
        if isinstance(transport, Server):
            self._socket = transport.getHandle()
            # Sent at once, an answer written in parts (a head, then a
            # body) or one of several pipelined answers must not wait for
            # the client's delayed ACK (Nagle: 40 ms a time).
            transport.setTcpNoDelay(True)
        self.site.channels.add(self)
        self._lastActive = self._seconds()
        if self.timeOut is not None:
            self._idleCall = self.callLater(self.timeOut, self._idleCheck)

    def dataReceived(self, data: bytes) -> None:
        if self._refusing is not None or self._pending is not None or self._closing:
            return  # refused or closing: what comes is dropped
        if self._upgraded:
            return
        seconds = self._seconds  # a local: see requestDone
        self._lastActive = seconds()
        inHead = self._inHead
        self._begun = False
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            # An Upgrade (or CONNECT) request: it is answered as any other,
            # and the connection closed after it; nothing after it is
            # read as HTTP (llhttp has not read its body, if any).
            self._stopAfterUpgrade()
        except HttpParserError as e:
            self._parseFailed(e)
        if self._inHead and self._refusing is None and self._pending is None:
            # A head is arriving in pieces: its whole size is bounded (one
            # header may be growing in the parser's buffer), and so is the
            # time it may take.
            # Counted from the first read after the one it began in: a
            # read that holds whole requests before it is not its size.
            if inHead and not self._begun:
                self._headBytes += len(data)
            else:
                self._headBytes = 0
            if self._headBytes > MAX_TARGET + MAX_HEADER + 2048:
                self.refuse(HEADERS_TOO_LARGE if self._target else URI_TOO_LONG)
            elif self._headDeadline is None:
                self._headDeadline = self.callLater(self.site.header_timeout, self._headTimedOut)
        self._next()

    def _parseFailed(self, e: HttpParserError) -> None:
        if self._refusing is not None or self._pending is not None:
            return  # a callback refused: it said why
        cause = e.__context__
        if cause is not None and not isinstance(cause, _Stop):
            log.failure(
                "Parsing a request from {peer} failed",
                Failure(cause),
                peer=getattr(self._peer, "host", "a unix socket"),
            )
            self.refuse(SERVER_ERROR)
            return
        self.refuse(BAD_REQUEST_TARGET if isinstance(e, HttpParserInvalidURLError) else BAD_REQUEST)

    def _stopAfterUpgrade(self) -> None:
        self._upgraded = True
        if self.requests:
            request = self.requests[-1]
            request.persistent = False
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        else:
            self.refuse(BAD_REQUEST)

    # -- llhttp's callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._inHead = True
        self._begun = True
        self._target = b""
        self._headers = {}
        self._lines = self._lineBytes = 0

    def on_url(self, url: bytes) -> None:
        target = self._target = self._target + url
        if len(target) > MAX_TARGET:
            self._refuseParsing(URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called per header line, trailers too: bounded line by line, so
        # that no read keeps more than the bounds allow.  Content-Length,
        # Transfer-Encoding and Expect are read once the head is complete.
        self._headers.setdefault(_canonical(name), []).append(value)
        size = self._lineBytes = self._lineBytes + len(name) + len(value) + 4
        lines = self._lines = self._lines + 1
        if size > MAX_HEADER or lines > MAX_HEADERS:
            self._refuseParsing(HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._inHead = False
        if self._headDeadline is not None:
            self._cancelHeadDeadline()
        raw = self._headers
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            self._refuseParsing(BAD_REQUEST)
            return
        # llhttp has checked the framing: one Content-Length that is a
        # number, or a Transfer-Encoding that ends in chunked, not both.
        length: int | None = 0  # no length and not chunked: no body
        if _TRANSFER_ENCODING in raw:
            length = None
        else:
            lengths = raw.get(_CONTENT_LENGTH)
            if lengths is not None:
                length = int(lengths[-1])
        request = self.requestFactory(self)
        target = self._target
        request.method = parser.get_method()
        request.uri = target
        request.path = target.partition(b"?")[0]
        request.clientproto = version
        request.requestHeaders = _parsed_headers(raw)
        if not parser.should_keep_alive():
            request.persistent = False
            if version == b"HTTP/1.1":
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        self.requests.append(request)
        self._receiving = request
        request.gotLength(length)  # limits may refuse it here
        if self._pending is not None or self._refusing is not None:
            raise _Stop()
        if length != 0 and version == b"HTTP/1.1":
            expect = raw.get(_EXPECT)
            if expect is not None and expect[-1].lower() == b"100-continue":
                request.expectsContinue = True

    def on_body(self, body: bytes) -> None:
        request = self._receiving
        if request is not None:
            request.handleContentChunk(body)
            if self._pending is not None or self._refusing is not None:
                raise _Stop()

    def on_message_complete(self) -> None:
        request = self._receiving
        if request is not None:
            self._receiving = None
            if request.expectsContinue:
                request.expectsContinue = False
            content = request.content
            if content is not None:
                content.seek(0, 0)

    def _refuseParsing(self, response: bytes) -> None:
        self.refuse(response)
        raise _Stop()

    # -- answering in order ----------------------------------------------------

    def _next(self) -> None:
        """
        Answer the next request if its turn has come: the one before it is
        answered and sent, and it has arrived whole.  Then send a refusal
        whose turn has come, and read or stop reading as the queue says.
        """
        if self._running:
            return
        self._running = True
        try:
            requests = self.requests
            while (
                requests  # first: the test that ends the loop, nearly always
                and self._current is None
                and not self._held
                and not self._closing
                and requests[0] is not self._receiving
                and self._refusing is None
            ):
                request = self._current = requests[0]
                request.process()
            if self._current is None and not self._closing:
                if self._pending is not None and not requests:
                    self._refuseNow(self._pending)
                elif requests and requests[0].expectsContinue and not self._held:
                    requests[0].expectsContinue = False
                    self.write(_CONTINUE)
        finally:
            self._running = False
        if (
            requests
            or self._readPaused
            or self._held
            or self._waitingForTransport
            or self._pending is not None
        ):
            self._updateReading()  # else reading, with nothing to wait for: nearly always
        if self._readClosed:
            self._closeIfAnswered()

    def requestDone(self, request: AnyRequest) -> None:
        """
        A request's answer is complete (twisted.web's Request calls this).
        """
        requests = self.requests
        if requests and requests[0] is request:
            del requests[0]  # nearly always: answers go in order
        elif request in requests:
            requests.remove(request)
        if self._current is request:
            self._current = None
        # Called through a local: CPython 3.11 does not specialise a method
        # call of a callable kept on the instance.
        seconds = self._seconds
        self._lastActive = seconds()
        if not (self.persistent and request.persistent):
            self._closing = True
            self.loseConnection()
            return
        if self._waitingForTransport and self._refusing is None:
            # The client has not read this answer: the next request waits,
            # and nothing more is read, until the transport has sent it.
            self._held = True
        if not self._running:  # else _next goes on when the answer returns
            self._next()

    def replace(self, request: AnyRequest, by: AnyRequest) -> None:
        """
        Put C{by} in C{request}'s place: it answers from now on (see
        L{ParsedRequest.web_request}).
        """
        requests = self.requests
        if request in requests:
            requests[requests.index(request)] = by
        if self._current is request:
            self._current = by
        if self._receiving is request:
            self._receiving = by

    def _updateReading(self) -> None:
        """
        Read while there is nothing to do but wait for the client: not while
        a request waits its turn, an answer is unsent, or a refusal waits.
        """
        requests = self.requests
        waiting = (
            len(requests) > (1 if self._current is not None else 0)
            and requests[-1] is not self._receiving
        )
        pause = waiting or self._held or self._waitingForTransport or self._pending is not None
        if pause != self._readPaused and self._refusing is None and not self._closing:
            self._readPaused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    # -- what twisted.web's Request needs of its channel -----------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        self.write(b"".join(answer_head(version, code, reason, headers)))

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def write(self, data: bytes) -> None:
        """
        Write C{data}: straight to the socket while nothing waits in the
        transport's buffer, else through the transport.

        Twisted's TCP transport never sends in C{write}: it registers for
        writability and sends on the loop's next turn, a registration and an
        unregistration with the event loop per answer, which on the asyncio
        reactor are the dearest calls of a small request (a fifth of its
        time, profiled under wrk).  An answer the socket takes whole (nearly
        every answer) is sent here at once, as asyncio's own transports do.
        Once the socket does not take everything, the rest and everything
        after it go through the transport, in order, for the rest of the
        connection; so do TLS and every other transport from the start, and
        everything once the connection is closing (the transport may then
        close the socket, and its number be reused).  Nagle's algorithm is
        off for such a socket (see L{connectionMade}).  Measured: half the
        system calls per request (strace), 1.06x the requests per second
        (wrk, six interleaved rounds).
        """
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                # Full (EAGAIN), or failed: the transport sends it, or sees
                # the failure and ends the connection, as it would have.
                sent = 0
            if sent == len(data):
                return
            self._socket = None
            data = data[sent:]
        self.transport.write(data)

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def isSecure(self) -> bool:
        return bool(self._secure)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        An answer's producer (a file, a stream): paused and resumed with the
        transport, as twisted.web's channel does (a pull producer is pulled
        by twisted's own adapter, as there).
        """
        if self._answerProducer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer}: {self._answerProducer} "
                "was never unregistered"
            )
        if not streaming:
            producer = _PullToPush(producer, self)
        self._answerProducer = producer
        self._answerStreaming = streaming
        if not streaming:
            producer.startStreaming()

    def unregisterProducer(self) -> None:
        producer = self._answerProducer
        if producer is None:
            return
        self._answerProducer = None
        if not self._answerStreaming:
            producer.stopStreaming()

    def loseConnection(self) -> None:
        """
        Close once what is written has been sent.
        """
        self._closing = True
        self._socket = None
        transport = self.transport
        if transport is None:
            return
        if self._registered:
            self._registered = False
            transport.unregisterProducer()
        transport.loseConnection()

    # -- the transport as a consumer -------------------------------------------

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: write nothing more, read nothing
        more, until it has sent it.
        """
        self._waitingForTransport = True
        if self._answerProducer is not None:
            self._answerProducer.pauseProducing()
        self._updateReading()

    def resumeProducing(self) -> None:
        self._waitingForTransport = False
        if self._answerProducer is not None:
            self._answerProducer.resumeProducing()
        if self._held:
            self._held = False
        self._next()

    def stopProducing(self) -> None:
        if self._answerProducer is not None:
            self._answerProducer.stopProducing()

    # -- timeouts ---------------------------------------------------------------

    def setTimeout(self, period: float | None) -> float | None:
        """
        Set the idle timeout (L{None}: none); returns the one before.
        """
        previous, self.timeOut = self.timeOut, period
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        if period is not None:
            self._lastActive = self._seconds()
            self._idleCall = self.callLater(period, self._idleCheck)
        return previous

    def _idleCheck(self) -> None:
        """
        The idle timer: close the connection if nothing has happened on it
        for C{timeOut} and no request is being answered, else wait on.  One
        timer per connection, moved only when it fires: activity only
        notes the time.
        """
        self._idleCall = None
        timeOut = self.timeOut
        if timeOut is None:
            return
        remaining = timeOut - (self._seconds() - self._lastActive)
        if self._current is not None:
            remaining = timeOut  # answering a request: not idle
        if remaining > 0:
            self._idleCall = self.callLater(remaining, self._idleCheck)
            return
        self.timeoutConnection()

    def timeoutConnection(self) -> None:
        log.info("Timing out client: {peer}", peer=str(self._peer))
        self._abortingCall = self.callLater(ABORT_TIMEOUT, self._forceAbort)
        self.loseConnection()

    def _forceAbort(self) -> None:
        self._abortingCall = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _headTimedOut(self) -> None:
        self._headDeadline = None
        if not self._inHead:
            return
        if self._readPaused:
            # We are not reading: the head is late because of us.
            self._headDeadline = self.callLater(self.site.header_timeout, self._headTimedOut)
            return
        self.refuse(HEAD_TIMEOUT)
        self._next()

    def _cancelHeadDeadline(self) -> None:
        if self._headDeadline is not None:
            if self._headDeadline.active():
                self._headDeadline.cancel()
            self._headDeadline = None

    # -- refusals ----------------------------------------------------------------

    def refuse(self, response: bytes) -> None:
        """
        Answer with C{response} once the requests before it are answered,
        and close the connection; read and parse nothing more.  The request
        whose head or body is arriving, if any, is dropped.
        """
        if self._refusing is not None or self._pending is not None or self._closing:
            return
        self._inHead = False
        self._cancelHeadDeadline()
        receiving = self._receiving
        if receiving is not None:
            self._receiving = None
            if receiving in self.requests:
                self.requests.remove(receiving)
        self._pending = response
        if self._current is None and not self.requests and not self._running:
            self._refuseNow(response)

    def _refuseNow(self, response: bytes) -> None:
        """
        Send the refusal and close, reading and dropping what the client
        still sends for a moment (see L{LINGER}).
        """
        self._pending = None
        transport = self.transport
        if transport is None:
            return
        self.setTimeout(None)
        if self._readPaused:
            self._readPaused = False
            transport.resumeProducing()
        self.write(response)
        self._socket = None
        self._refusing = self.callLater(LINGER, transport.abortConnection)
        if ISSLTransport.providedBy(transport) or not hasattr(transport, "loseWriteConnection"):
            # TLS has no half-close of its own: its close_notify ends both
            # directions (and twisted's TLS transport fails on a half-close).
            transport.loseConnection()
        else:
            transport.loseWriteConnection()

    # -- half-close ----------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """
        The client will send nothing more: answer the requests it sent
        whole, then close.
        """
        self._readClosed = True
        self._cancelHeadDeadline()  # a partial head can never complete now
        self._inHead = False
        if self._refusing is not None:
            # Nothing more to drain: the refusal is said, end it here.
            self.transport.loseConnection()
            return
        self._closeIfAnswered()

    def writeConnectionLost(self) -> None:
        """
        Our sending side is shut down: only a refusal does that, and it
        keeps reading for a moment; anything else ends the connection.
        """
        if self._refusing is None:
            self.loseConnection()

    def _closeIfAnswered(self) -> None:
        """
        Close a connection whose client half-closed once nothing it sent
        whole is waiting for an answer.  What is left is an incomplete
        request, which can no longer complete.
        """
        if self._current is not None or self._held or self._running or self._closing:
            return
        if self._pending is not None:
            return  # its turn comes in _next
        if any(request is not self._receiving for request in self.requests):
            return
        transport = self.transport
        if transport is not None and not transport.disconnecting:
            self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._socket = None
        self.site.channels.discard(self)
        self._cancelHeadDeadline()
        for call in (self._idleCall, self._refusing, self._abortingCall):
            if call is not None and call.active():
                call.cancel()
        self._idleCall = self._abortingCall = None
        requests, self.requests = self.requests, []
        self._current = self._receiving = None
        for request in requests:
            request.connectionLost(reason)
