# -*- test-case-name: tests.test_streams -*-
"""
Streamed answers: a L{Response} whose body is an iterator or an async
iterator of C{str}/C{bytes} chunks, and server-sent events (L{EventStream}).

Back-pressure.  Each stream is an C{IPushProducer} registered on its
request.  It pulls the next chunk only while the transport is not paused
and writes it at once, so a client that reads slowly (or not at all) holds
the server to the transport's own buffer plus about one chunk: the TCP
transport pauses its producer past 64 KiB unsent, and a paused stream pulls
nothing until the transport has sent what it holds.  An async iterator has
at most one C{__anext__} in flight.  A stream that is never paused (an
in-memory transport, or chunks that are all empty) yields the reactor
after L{CHUNKS_PER_TURN} chunks, so that it cannot starve other clients.

Framing.  HTTP/1.1 clients get chunked transfer encoding; HTTP/1.0 clients
get the body as it comes and the connection closes at its end
(twisted.web frames both).  The head goes out with the first chunk, whose
type gives the default C{Content-Type} (C{str}: C{text/plain;
charset=utf-8}, C{bytes}: C{application/octet-stream}) unless the plugin
gave one; so until the first chunk the answer can still be an error:
  - the iterator raises, or gives a chunk that is neither C{str} nor
    C{bytes}: 500 JSON, logged;
  - the first chunk takes longer than C{request_timeout}: 504 JSON;
  - the generation is replaced or stopped: 503 JSON.
After the head the status is said, and an ending is told by the framing:
  - the iterator ends, or the generation is replaced or stopped (reload,
    unload, server stop): the body is terminated cleanly (the last chunk),
    so that a client reconnects, to the new generation;
  - the iterator raises or gives a bad chunk: the error is logged with the
    plugin's name and generation, and the connection is closed without the
    last chunk, so the client sees a cut body and knows the answer is
    incomplete (an HTTP/1.0 client cannot tell: its body ends at the close
    either way).
In every case the iterator is closed (C{close()} / C{aclose()}) at once,
and so it is when the client goes away.

An L{EventStream} sends its head as soon as its first event is not ready
at once (an event source usually waits for its first event, and a browser's
EventSource reports the stream open only once the head has come), so
C{request_timeout} does not apply to it; it then sends a C{: keep-alive}
comment every C{heartbeat} seconds.

Time.  twisted.web turns the connection's C{idle_timeout} off while a
request is answered, so a stream that sends is never cut by it; a stream
whose client reads nothing for C{idle_timeout} (its transport stays paused
that long) is aborted instead of being held open for ever.  Every timer a
stream starts (the first-chunk deadline, the heartbeat, the stall timer,
the next turn) is cancelled when it ends.

Access log and metrics.  A stream that ends with C{request.finish()} is
logged and counted by the site as any answer is (status, bytes sent); one
that ends with the connection (client gone, cut after an error, stalled)
is logged and counted when it ends, if its head had been sent (a client
that leaves before any answer is not logged, as for any request).
"""

from __future__ import annotations

import math
import re
import weakref
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer  # type: ignore[import-untyped]

from pluginserver import coroutines
from pluginserver.answers import (
    BINARY,
    NO_BODY,
    TEXT,
    UNENCODABLE,
    BadResponse,
    HeaderPairs,
    encode,
    error,
    set_headers,
)
from pluginserver.plugin import EventStream, RawJSON, Response

__all__ = ["CHUNKS_PER_TURN", "KEEP_ALIVE", "Streams", "encode_event"]

log = Logger()

CHUNKS_PER_TURN = 256
"""Chunks a stream may pull in one turn of the reactor before it lets
others run (only a transport that never pushes back lets it get there)."""

KEEP_ALIVE = b": keep-alive\n\n"
"""The comment an L{EventStream} sends every C{heartbeat} seconds."""

EVENT_STREAM_HEADERS = ((b"x-accel-buffering", b"no"),)
"""What an event stream carries unless the plugin set it: a reverse proxy
(nginx) must not buffer it."""

_FIELDS = frozenset({"data", "event", "id", "retry"})
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


# -- server-sent events --------------------------------------------------------


def _field(name: str, value: Any) -> str:
    """
    The value of an C{event} or C{id} field: text on one line.

    @raise BadResponse: it is not text, or it would break the line.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadResponse(f"event field {name}: {value!r} is not str")
    text = str(value)
    if "\n" in text or "\r" in text or "\x00" in text:
        raise BadResponse(f"event field {name}: {text!r} holds a line break or NUL")
    return text


def _data_lines(value: Any, lines: list[str]) -> None:
    """
    Add the C{data:} lines of C{value}, JSON-encoded (a L{RawJSON} as it
    is), one line per line of the text, as the event-stream format says a
    multi-line value is sent.

    @raise BadResponse: the value is not JSON.
    """
    if isinstance(value, RawJSON):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadResponse("event data: RawJSON that is not UTF-8") from None
    else:
        try:
            text = encode(value)
        except UNENCODABLE as e:
            raise BadResponse(f"event data is not JSON: {e}") from None
    lines.extend("data: " + line for line in _LINE_BREAK.split(text))


def encode_event(item: Any) -> bytes:
    """
    One server-sent event, as the bytes that carry it.

    A dict with a C{data} key and no keys but C{data}, C{event}, C{id} and
    C{retry} is sent as those fields (C{data} JSON-encoded, C{retry} a
    whole number of milliseconds); any other item is sent whole as
    C{data: <json>}.

    @raise BadResponse: a field cannot be sent (not JSON, a line break in
        an C{event} or C{id}, a C{retry} that is not a whole number).
    """
    lines: list[str] = []
    if isinstance(item, dict) and "data" in item and item.keys() <= _FIELDS:
        event = item.get("event")
        if event is not None:
            lines.append("event: " + _field("event", event))
        ident = item.get("id")
        if ident is not None:
            lines.append("id: " + _field("id", ident))
        retry = item.get("retry")
        if retry is not None:
            if type(retry) is not int or retry < 0:
                raise BadResponse(f"event field retry: {retry!r} is not a whole number")
            lines.append(f"retry: {retry}")
        _data_lines(item["data"], lines)
    else:
        _data_lines(item, lines)
    lines.append("\n")
    return "\n".join(lines).encode("utf-8")


# -- pulling from iterators ------------------------------------------------------

_END = object()
"""What a pull gives when the iterator is exhausted."""

_PENDING = object()
"""What a pull gives when its chunk is not ready yet."""


class _Raised:
    """
    What a pull gives when the iterator raised.
    """

    __slots__ = ("failure",)

    def __init__(self, failure: Failure) -> None:
        self.failure = failure


async def _anext(iterator: Any) -> Any:
    """
    The next item of an async iterator, or L{_END}.  (A coroutine, so
    that it can be driven as one: C{__anext__()} may give any awaitable.)
    """
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


async def _aclose(iterator: Any) -> None:
    await iterator.aclose()


# -- one stream ---------------------------------------------------------------------


@implementer(IPushProducer)
class _Stream:
    """
    One streamed answer: the producer registered on its request.

    @ivar request: the request it answers.
    @ivar loaded: the generation that answered.
    """

    def __init__(
        self,
        streams: Streams,
        request: Any,
        loaded: Any,
        iterator: Any,
        status: int,
        pairs: HeaderPairs,
        contentType: bytes | None,
        heartbeat: float | None,
    ) -> None:
        """
        @param heartbeat: L{None} for a plain stream; for an event stream,
            the seconds between keep-alive comments (0: none).
        """
        self._streams = streams
        self._reactor = streams._reactor
        self.request = request
        self.loaded = loaded
        self._iterator: Any = iterator
        self._async = hasattr(iterator, "__anext__")
        self._status = status
        self._pairs = pairs
        self._contentType = contentType
        self._events = heartbeat is not None
        self._heartbeat = heartbeat or None
        self._headOnly = request.method == b"HEAD" or status in NO_BODY
        self._head = False  # the head has been sent
        self._paused = False
        self._done = False
        self._exhausted = False
        self._pumping = False
        self._pulling = False  # inside next(): closing waits until it returns
        self._pending: defer.Deferred[Any] | None = None  # an __anext__ in flight
        self._deadline: Any = None  # request_timeout, until the head
        self._ticker: Any = None  # the next keep-alive
        self._stall: Any = None  # the client has read nothing for idle_timeout
        self._later: Any = None  # the next turn of a stream never paused

    # -- IPushProducer -----------------------------------------------------

    def pauseProducing(self) -> None:
        """
        The transport is full: pull nothing until it has room.
        """
        if self._done or self._paused:
            return
        self._paused = True
        idle = getattr(getattr(self.request.channel, "factory", None), "timeOut", None)
        if idle and self._stall is None:
            self._stall = self._reactor.callLater(idle, self._stalled)

    def resumeProducing(self) -> None:
        """
        The transport has room again: pull on.
        """
        if self._done:
            return
        self._paused = False
        self._stall = _cancel(self._stall)
        self._pump()

    def stopProducing(self) -> None:
        """
        The connection is going away.
        """
        self._gone(None)

    # -- the life of a stream ------------------------------------------------

    def start(self, timeout: float | None, retired: bool) -> None:
        """
        Begin: pull the first chunk (HEAD with a known type: send the head
        and end), with C{timeout} seconds for it; a stream of a C{retired}
        generation ends at once.
        """
        request = self.request
        if retired:
            self.retire()
            return
        if self._headOnly and (self._contentType is not None or self._events):
            self._sendHead(self._contentType)
            self._complete()
            return
        request.notifyFinish().addErrback(self._gone)
        request.registerProducer(self, True)
        if getattr(request.channel, "_waitingForTransport", False):
            self.pauseProducing()  # registered on a full transport
        if timeout is not None and timeout > 0 and math.isfinite(timeout):
            self._deadline = self._reactor.callLater(timeout, self._timedOut)
        self._pump()

    def _pump(self) -> None:
        """
        Pull and send chunks while the transport has room and they come at
        once; an async pull that waits picks up here when it has come.
        """
        if self._pumping:
            return  # resumed from inside a write: the loop below goes on
        self._pumping = True
        try:
            pulled = 0
            while not self._done and not self._paused and self._pending is None:
                if pulled == CHUNKS_PER_TURN:
                    if self._later is None:
                        self._later = self._reactor.callLater(0, self._nextTurn)
                    return
                pulled += 1
                outcome = self._pull()
                if outcome is _PENDING:
                    self._waiting()
                    return
                self._settle(outcome)
        finally:
            self._pumping = False

    def _nextTurn(self) -> None:
        self._later = None
        self._pump()

    def _pull(self) -> Any:
        """
        Ask the iterator for its next item: the item, L{_END}, a
        L{_Raised}, or L{_PENDING} when an async item is not ready yet (it
        is settled when it comes).
        """
        iterator = self._iterator
        if not self._async:
            self._pulling = True
            try:
                return next(iterator)
            except StopIteration:
                return _END
            except BaseException:
                # Plugin code: whatever it raises fails this stream alone.
                return _Raised(Failure())
            finally:
                self._pulling = False
                if self._done:
                    self._closeIterator()  # ended from inside next()
        came: list[Any] = []
        waiting = False

        def settled(result: Any) -> None:
            outcome = _Raised(result) if isinstance(result, Failure) else result
            if not waiting:
                came.append(outcome)
                return
            self._pending = None
            if self._done:
                return  # cancelled, or ended meanwhile: nothing to send
            self._settle(outcome)
            self._pump()

        pending = coroutines.run(_anext(iterator))
        pending.addBoth(settled)
        if came:
            return came[0]
        waiting = True
        self._pending = pending
        return _PENDING

    def _waiting(self) -> None:
        """
        The next item is not ready: an event stream sends its head now.
        """
        if self._events and not self._head and not self._headOnly:
            self._sendHead(self._contentType)

    def _settle(self, outcome: Any) -> None:
        if self._done:
            return
        if outcome is _END:
            self._exhausted = True
            self._complete()
        elif isinstance(outcome, _Raised):
            self._broken("raised", outcome.failure)
        else:
            self._deliver(outcome)

    def _deliver(self, item: Any) -> None:
        """
        Send one item: the head first if it has not gone yet.
        """
        implied = None
        if self._events:
            try:
                data = encode_event(item)
            except BadResponse as e:
                self._broken(f"sent an event that cannot be sent: {e}", None)
                return
        elif isinstance(item, str):
            data, implied = item.encode("utf-8"), TEXT
        elif isinstance(item, (bytes, bytearray, memoryview)):
            data, implied = bytes(item), BINARY
        else:
            self._broken(f"sent a chunk of type {type(item).__name__}, not str or bytes", None)
            return
        if not self._head:
            self._sendHead(self._contentType if self._contentType is not None else implied)
        if self._headOnly:
            self._complete()
        elif data:
            self.request.write(data)

    def _sendHead(self, contentType: bytes | None) -> None:
        """
        Send the status and headers (twisted.web sends them on the first
        write); from now on the answer can no longer become an error.
        """
        self._head = True
        self._deadline = _cancel(self._deadline)
        request = self.request
        request.setResponseCode(self._status)
        set_headers(request, self._pairs, contentType)
        if contentType is None:
            request.defaultContentType = None  # no chunk, no type: not even JSON
        if self._events:
            for name, value in EVENT_STREAM_HEADERS:
                if not request.responseHeaders.hasHeader(name):
                    request.responseHeaders.setRawHeaders(name, [value])
            if self._heartbeat is not None and not self._headOnly:
                self._ticker = self._reactor.callLater(self._heartbeat, self._beat)
        if self._status in NO_BODY:
            request.responseHeaders.removeHeader(b"content-type")
        request.write(b"")

    def _beat(self) -> None:
        """
        Keep an idle event stream's connection (and the proxies on its
        way) open; skipped while the client is not reading anyway.
        """
        self._ticker = None
        if self._done:
            return
        if not self._paused:
            self.request.write(KEEP_ALIVE)
        if not self._done and self._heartbeat is not None:
            self._ticker = self._reactor.callLater(self._heartbeat, self._beat)

    # -- endings ---------------------------------------------------------------

    def _end(self) -> bool:
        """
        Stop everything this stream runs; L{False} when it had ended.
        """
        if self._done:
            return False
        self._done = True
        for name in ("_deadline", "_ticker", "_stall", "_later"):
            setattr(self, name, _cancel(getattr(self, name)))
        self._streams._forget(self)
        request = self.request
        if request.producer is self:
            if request.channel is not None:
                request.unregisterProducer()
            else:
                request.producer = None  # the connection is gone, and its channel
        return True

    def _complete(self) -> defer.Deferred[None]:
        """
        End cleanly: the iterator is closed (unless it ended itself) and
        the body terminated.  Gives the closing of the iterator (see
        L{_closeIterator}).
        """
        if not self._end():
            return defer.succeed(None)
        closed = defer.succeed(None)
        if not self._exhausted:
            closed = self._closeIterator()
        if not self._head:
            self._sendHead(self._contentType)  # an empty stream
        self._finish()
        return closed

    def retire(self) -> defer.Deferred[None]:
        """
        The generation that answered is replaced or stopped: end cleanly
        (an event stream that has not sent its head yet sends it, empty,
        so that an EventSource reconnects; any other stream that has not
        sent its first chunk is answered 503).  Gives the closing of the
        iterator (see L{_closeIterator}).
        """
        if self._done:
            return defer.succeed(None)
        if self._head or self._events or self._headOnly:
            return self._complete()
        self._end()
        closed = self._closeIterator()
        self._answerError(503, "service unavailable")
        return closed

    def _timedOut(self) -> None:
        self._deadline = None
        if self._done or self._head:
            return
        log.warn(
            "Plugin {plugin} generation {generation} sent no chunk of its stream on "
            "{method} {path} within {timeout} s",
            plugin=self.loaded.name,
            generation=self.loaded.generation,
            method=self.request.method.decode("latin-1"),
            path=self.request.path.decode("latin-1"),
            timeout=self._streams.request_timeout,
        )
        self._end()
        self._closeIterator()
        self._answerError(504, "timeout")

    def _broken(self, what: str, failure: Failure | None) -> None:
        """
        The iterator raised, or gave what cannot be sent: log it; answer
        500 before the head, cut the body after it.
        """
        if not self._end():
            return
        request = self.request
        fields = {
            "plugin": self.loaded.name,
            "generation": self.loaded.generation,
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "what": what,
            "when": "after its head was sent: the body is cut" if self._head else "",
        }
        message = "Plugin {plugin} generation {generation} stream {what} on {method} {path} {when}"
        if failure is not None:
            log.failure(message, failure, **fields)
        else:
            log.error(message, **fields)
        metrics = getattr(getattr(request, "site", None), "metrics", None)
        if metrics is not None:
            metrics.plugin_error(self.loaded.name)
        if failure is None:
            self._closeIterator()  # it raised: it has ended itself
        if not self._head:
            self._answerError(500, "internal error")
            return
        channel = request.channel
        transport = getattr(channel, "transport", None)
        self._count()
        if transport is None:
            return
        if self._paused:
            transport.abortConnection()  # the client is not reading: do not wait for it
        else:
            channel.loseConnection()  # what was written goes out, the last chunk never

    def _gone(self, reason: Failure | None) -> None:
        """
        The client went away: close the iterator at once.
        """
        if not self._end():
            return
        self._closeIterator()
        self._count()

    def _stalled(self) -> None:
        """
        The client has read nothing for C{idle_timeout}: let it go.
        """
        self._stall = None
        if self._done:
            return
        log.info(
            "Plugin {plugin} generation {generation}: the client of {path} read nothing "
            "for {timeout} s; closing its stream",
            plugin=self.loaded.name,
            generation=self.loaded.generation,
            path=self.request.path.decode("latin-1"),
            timeout=getattr(self.request.channel.factory, "timeOut", None),
        )
        transport = self.request.channel.transport
        self._gone(None)
        if transport is not None:
            transport.abortConnection()

    def _finish(self) -> None:
        request = self.request
        if not getattr(request, "_disconnected", False) and not request.finished:
            request.finish()

    def _answerError(self, status: int, message: str) -> None:
        """
        Answer JSON, as any error is, while no head has been sent.
        """
        request = self.request
        if getattr(request, "_disconnected", False):
            return
        body = error(request, status, message)
        if body is NOT_DONE_YET:
            return
        if request.method != b"HEAD":
            request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    def _count(self) -> None:
        """
        Log and count an answer that ends with its connection rather than
        with C{finish()} (which would log it), once its head was sent: a
        client that leaves before is not answered, as for any request.
        """
        request = self.request
        if request.finished or not self._head:
            return
        site = getattr(request, "site", None)  # the channel may be gone already
        if site is not None:
            site.log(request)

    def _closeIterator(self) -> defer.Deferred[None]:
        """
        Close the iterator (C{close()} / C{aclose()}), once, cancelling an
        async pull in flight first; what closing raises is logged.

        @return: a Deferred that fires when the iterator is closed: an
            async one once the cancelled pull has ended (C{aclose()} while
            it still runs would fail: "asynchronous generator is already
            running") and its C{aclose()} has run.  It never fails.
        """
        iterator = self._iterator
        if iterator is None or self._pulling:
            return defer.succeed(None)  # closed, or closed by _pull when next() returns
        self._iterator = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._exhausted:
            return defer.succeed(None)
        if self._async:
            if not hasattr(iterator, "aclose"):
                return defer.succeed(None)
            pulled = coroutines.ended(pending) if pending is not None else defer.succeed(None)
            closing = pulled.addCallback(lambda _: coroutines.run(_aclose(iterator)))
            return closing.addErrback(self._closeFailed)
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except BaseException:
                self._closeFailed(Failure())
        return defer.succeed(None)

    def _closeFailed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return
        log.failure(
            "Plugin {plugin} generation {generation}: closing its stream failed",
            failure,
            plugin=self.loaded.name,
            generation=self.loaded.generation,
        )


def _cancel(call: Any) -> Any:
    """
    Cancel a delayed call if it is still to come; always L{None}, to be
    stored in its place.
    """
    if call is not None and call.active():
        call.cancel()
    return None


# -- every stream of a server ---------------------------------------------------------


class Streams:
    """
    The open streamed answers of one server, by the generation that
    answered them, so that a generation that stops serving ends its own.

    Nothing here keeps a generation alive: the streams are held by
    generation in a weak dictionary, and a generation with no open stream
    has no entry.

    @ivar request_timeout: seconds a stream may take to its first chunk.
    """

    def __init__(self, reactor: Any, request_timeout: float = 30.0) -> None:
        """
        @param reactor: what times the streams (C{callLater}).
        """
        self._reactor = reactor
        self.request_timeout = request_timeout
        self._open: weakref.WeakKeyDictionary[Any, set[_Stream]] = weakref.WeakKeyDictionary()
        self._retired: weakref.WeakSet[Any] = weakref.WeakSet()
        self._stopping = False

    def configure(self, settings: Any) -> None:
        """
        Take new settings into use: their C{request_timeout}.
        """
        self.request_timeout = settings.request_timeout

    def serve(
        self,
        request: Any,
        loaded: Any,
        response: Response,
        status: int,
        pairs: HeaderPairs,
        content_type: bytes | None,
    ) -> Any:
        """
        Answer C{request} with the streamed body of C{response} (checked
        by the caller: C{status}, C{pairs} and C{content_type} are its
        status, headers and content type, encoded).  Returns
        C{NOT_DONE_YET}: the stream finishes the request.

        @raise BadResponse: the response cannot be streamed (nothing has
            been sent).
        """
        body = response.body
        if not hasattr(body, "__anext__") and not hasattr(body, "__next__"):
            if not isinstance(body, (list, tuple)):  # EventStream([...]) is fine
                raise BadResponse(f"body {type(body).__name__} is not an iterator")
            body = iter(body)
        heartbeat: float | None = None
        if isinstance(response, EventStream):
            heartbeat = _heartbeat(response.heartbeat)
        stream = _Stream(self, request, loaded, body, status, pairs, content_type, heartbeat)
        retired = self._stopping or loaded in self._retired
        if not retired:
            self._open.setdefault(loaded, set()).add(stream)
        stream.start(self.request_timeout, retired)
        return NOT_DONE_YET

    def end(self, loaded: Any) -> defer.Deferred[None]:
        """
        The generation C{loaded} stops serving (replaced, removed, or the
        server stops): end its open streams cleanly, and any it is still
        to answer with.

        @return: a Deferred that fires when their iterators are closed (an
            async iterator's C{aclose()} runs on a later turn of the loop),
            so that the plugin's C{stop()} can wait for that.
        """
        self._retired.add(loaded)
        closings = [stream.retire() for stream in list(self._open.pop(loaded, ()))]
        return defer.gatherResults(closings).addCallback(lambda _: None)

    def end_all(self) -> None:
        """
        The server stops: end every open stream cleanly, and every stream
        answered from now on.
        """
        self._stopping = True
        for loaded in list(self._open.keys()):
            for stream in list(self._open.pop(loaded, ())):
                stream.retire()

    def count(self, loaded: Any = None) -> int:
        """
        How many streams are open (of C{loaded}, when given).
        """
        if loaded is not None:
            return len(self._open.get(loaded, ()))
        return sum(len(streams) for streams in self._open.values())

    def _forget(self, stream: _Stream) -> None:
        streams = self._open.get(stream.loaded)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._open[stream.loaded]


def _heartbeat(value: Any) -> float:
    """
    An L{EventStream}'s heartbeat, checked: seconds (0 when none: it was
    0 or L{None}).

    @raise BadResponse: it is not a number of seconds.
    """
    if value is None or value == 0:
        return 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise BadResponse(f"heartbeat {value!r} is not a number of seconds")
    return float(value)
