"""
Property tests of the HTTP channel: random, valid and broken request bytes
thrown at it, split at random points into several reads, in memory (the
channel over a L{PushBackTransport}, time on a L{Clock}).

Whatever arrives, and however it is split:

  - C{dataReceived} never raises, nor does C{connectionLost} after it;
    nothing is logged as an error and no timer outlives the connection;
  - what the channel writes is a sequence of complete HTTP responses and
    nothing else, with no traceback in it; every error answer has a JSON
    body C{{"error": ...}}, and an error answer (or any answer saying
    C{Connection: close}) is the last thing written on a connection that
    is being closed.

Valid requests (GET, HEAD and POST, HTTP/1.0 and 1.1, bodies framed by a
Content-Length or chunked, with extensions and trailers, C{Expect:
100-continue}, C{Connection: close}; bodies that themselves look like
requests) are answered exactly once each, in order, with the body the
client sent; an interim C{100 Continue} is not an answer.  The connection
closes after a request that asks for it, and stays open otherwise.

Malformed framing (a Content-Length with a Transfer-Encoding, two different
Content-Lengths, an invalid or overflowing length or chunk size, a chunk
longer than its size, a garbage request line, a NUL, a bare CR or LF in a
header, a header without a colon or with space before it...) is never
answered 2xx: the channel answers an error (400) and closes, or just
closes.  Requests before it on the connection may be answered, in order.

Requests mutated at random (bytes flipped, inserted, deleted, truncated; a
Content-Length duplicated, a Transfer-Encoding added, chunk sizes broken,
headers folded, CRLFs made bare) never get more successful answers than
requests were sent: no request is ever answered twice, and no body is
ever taken for a request of its own.

The examples are derandomized and no example database is kept, so a run is
the same on every machine.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from pluginserver.site import PluginServerSite
from pluginserver.testing import Answer, Reading, read_answers
from tests.helpers import PushBackTransport


def _fuzz(examples: int) -> settings:
    """
    Settings for a property: reproducible (derandomized, no database),
    bounded, and without a deadline (a slow machine is not a failure).
    """
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- the site -------------------------------------------------------------------


class _Echo(Resource):
    """
    The site's root: answers every request with its C{id} query field, its
    method and the body it read, in JSON.
    """

    isLeaf = True

    def render(self, request: Any) -> bytes:
        content = request.content.read() if request.content is not None else b""
        ident = request.args.get(b"id", [b"-"])[0]
        return json.dumps(
            {
                "id": ident.decode("latin-1"),
                "method": request.method.decode("latin-1"),
                "body": content.decode("latin-1"),
            }
        ).encode("ascii")


# -- what the client sends -------------------------------------------------------

_ALNUM = (string.ascii_letters + string.digits).encode("ascii")
_TCHAR = _ALNUM + b"!#$%&'*+-.^_`|~"
_UNRESERVED = _ALNUM + b"-._~"
_VCHAR = bytes(range(0x21, 0x7F))
_OBS_TEXT = bytes(range(0x80, 0x100))


@cache
def _bytes(alphabet: bytes, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[bytes]:
    """
    Bytes from C{alphabet} (drawn as text: one choice, not one per byte).
    """
    return st.text(alphabet.decode("latin-1"), min_size=min_size, max_size=max_size).map(
        lambda text: text.encode("latin-1")
    )


@cache
def _name(canonical: bytes) -> st.SearchStrategy[bytes]:
    """
    A header's name as clients write it: header names are case-insensitive.
    """
    return st.sampled_from([canonical, canonical.lower(), canonical.upper()])


_SEPARATOR = st.sampled_from([b": ", b":", b":\t", b":  "])
_HOST = st.sampled_from([b"127.0.0.1", b"localhost:8080", b"example.com", b"[::1]:8080"])
_SMUGGLED = [
    b"GET /?id=999 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"0\r\n\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
]
"""Bodies that look like the end of a body, a request or an answer."""


@cache
def _value(plain: bool) -> st.SearchStrategy[bytes]:
    """
    A header value: letters and digits if C{plain}, else any visible
    bytes (obs-text too), with spaces and tabs inside.
    """
    if plain:
        return _bytes(_ALNUM, max_size=16)
    edge = st.sampled_from(_VCHAR + _OBS_TEXT).map(lambda c: bytes([c]))
    inner = _bytes(_VCHAR + _OBS_TEXT + b" \t", max_size=20)
    return st.one_of(
        st.just(b""),
        edge,
        st.tuples(edge, inner, edge).map(b"".join),
    )


@cache
def _field(plain: bool) -> st.SearchStrategy[bytes]:
    """
    A header line (without its CRLF) that means nothing to HTTP.
    """
    name = _bytes(_TCHAR, min_size=1, max_size=10).map(lambda n: b"X-" + n)
    return st.tuples(name, _SEPARATOR, _value(plain)).map(b"".join)


def _percent(data: bytes) -> bytes:
    return quote_from_bytes(data, safe="").encode("ascii")


@cache
def _path(plain: bool) -> st.SearchStrategy[bytes]:
    """
    An absolute path, percent-encoded unless C{plain}.
    """
    segment = (
        _bytes(_ALNUM, max_size=8)
        if plain
        else st.one_of(_bytes(_UNRESERVED, max_size=8), st.binary(max_size=6).map(_percent))
    )
    return st.lists(segment, max_size=3).map(lambda segments: b"/" + b"/".join(segments))


@cache
def _query_fields(plain: bool) -> st.SearchStrategy[list[bytes]]:
    """
    Query fields (never named C{id}), percent-encoded unless C{plain}.
    """
    value = _bytes(_ALNUM, max_size=6) if plain else st.binary(max_size=6).map(_percent)
    field = st.tuples(_bytes(_ALNUM, max_size=5), value).map(lambda kv: b"q" + kv[0] + b"=" + kv[1])
    return st.lists(field, max_size=2)


@st.composite
def _target(draw: st.DrawFn, ident: int, plain: bool) -> bytes:
    """
    An origin-form request target whose query has C{id=ident} among other
    fields.
    """
    path = draw(_path(plain))
    before = draw(_query_fields(plain))
    after = draw(_query_fields(plain))
    return path + b"?" + b"&".join([*before, b"id=%d" % (ident,), *after])


@cache
def _content(plain: bool) -> st.SearchStrategy[bytes]:
    """
    A request body: letters and digits if C{plain} (a body that can never
    be read as a request line), else any bytes, sometimes with what looks
    like the end of a body, a request or an answer inside.
    """
    if plain:
        return _bytes(_ALNUM, max_size=40)
    return st.one_of(
        st.binary(max_size=40),
        st.tuples(st.binary(max_size=8), st.sampled_from(_SMUGGLED), st.binary(max_size=8)).map(
            b"".join
        ),
    )


_CHUNK_EXTENSION = st.one_of(
    st.just(b""),
    _bytes(_TCHAR, min_size=1, max_size=6).map(lambda name: b";" + name),
    st.tuples(_bytes(_TCHAR, min_size=1, max_size=6), _bytes(_TCHAR, min_size=1, max_size=6)).map(
        lambda nv: b";" + nv[0] + b"=" + nv[1]
    ),
)


@st.composite
def _chunked(draw: st.DrawFn, content: bytes, plain: bool) -> bytes:
    """
    C{content} in the chunked transfer coding: in chunks of random sizes,
    written in either case and sometimes with leading zeros, with chunk
    extensions, and sometimes a trailer.
    """
    cuts: list[int] = []
    if len(content) > 1:
        cuts = sorted(set(draw(st.lists(st.integers(1, len(content) - 1), max_size=4))))
    bounds = [0, *cuts, len(content)]
    encoded = b""
    for start, end in itertools.pairwise(bounds):
        if start == end:
            continue  # no content: no chunk (a 0 would end the body)
        size = b"%x" % (end - start,)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 2)) + size
        extension = draw(_CHUNK_EXTENSION)
        encoded += size + extension + b"\r\n" + content[start:end] + b"\r\n"
    trailers = draw(st.lists(_field(plain=True), max_size=1))
    last = b"0" + draw(_CHUNK_EXTENSION) + b"\r\n"
    return encoded + last + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


@dataclass(frozen=True)
class Sent:
    """
    One request as the client wrote it.

    @ivar ident: the C{id} in its query, which the site echoes.
    @ivar content: the body the site must read.
    @ivar persistent: whether the connection stays open after its answer.
    @ivar expects: whether it asks for a C{100 Continue}.
    """

    ident: int
    method: bytes
    wire: bytes
    content: bytes
    persistent: bool
    expects: bool


@st.composite
def _request(draw: st.DrawFn, ident: int, last: bool, plain: bool) -> Sent:
    """
    A valid request.  Only the C{last} on a connection may be HTTP/1.0 or
    say C{Connection: close}: the server reads nothing after it.
    """
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"])) if last else b"HTTP/1.1"
    modern = version == b"HTTP/1.1"
    headers = draw(st.lists(_field(plain), max_size=4))
    if modern or draw(st.booleans()):  # HTTP/1.1 requires a Host
        headers.append(draw(_name(b"Host")) + b": " + draw(_HOST))
    if method == b"POST":
        framing = draw(
            st.sampled_from(["none", "length", "chunked"] if modern else ["none", "length"])
        )
    else:
        framing = draw(st.sampled_from(["none", "zero"]))
    content = draw(_content(plain)) if framing in ("length", "chunked") else b""
    body = b""
    if framing in ("length", "zero"):
        headers.append(draw(_name(b"Content-Length")) + b": %d" % (len(content),))
        body = content
    elif framing == "chunked":
        headers.append(draw(_name(b"Transfer-Encoding")) + b": chunked")
        body = draw(_chunked(content, plain))
    expects = modern and framing in ("length", "chunked") and draw(st.booleans())
    if expects:
        headers.append(draw(_name(b"Expect")) + b": 100-continue")
    close = last and modern and draw(st.booleans())
    if close:
        headers.append(draw(_name(b"Connection")) + b": close")
    elif modern and draw(st.booleans()):
        headers.append(draw(_name(b"Connection")) + b": keep-alive")
    headers = list(draw(st.permutations(headers)))
    target = draw(_target(ident, plain))
    wire = (
        method
        + b" "
        + target
        + b" "
        + version
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
        + body
    )
    return Sent(ident, method, wire, content, modern and not close, expects)


@st.composite
def _pipeline(
    draw: st.DrawFn,
    min_size: int = 1,
    max_size: int = 4,
    plain: bool = False,
    first: int = 0,
    more: bool = False,
) -> list[Sent]:
    """
    Valid requests sent one after the other on a connection, their ids
    counting from C{first}; if C{more}, the last of them keeps the
    connection open for more.
    """
    count = draw(st.integers(min_size, max_size))
    return [
        draw(_request(first + i, last=i == count - 1 and not more, plain=plain))
        for i in range(count)
    ]


# -- malformed framing -------------------------------------------------------


def _head(line: bytes, headers: Sequence[bytes]) -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


_LINE = b"POST /?id=666 HTTP/1.1"
"""The request line of a malformed request (its id is never answered)."""

_MALFORMED_KINDS = [
    "length and chunked",
    "two lengths",
    "bad length",
    "huge length",
    "bad transfer-encoding",
    "bad chunk size",
    "chunk size overflow",
    "chunk overrun",
    "bad request line",
    "NUL",
    "bare CR",
    "bare LF in a header",
    "header without colon",
    "space before colon",
    "bad header name",
]


@st.composite
def _malformed(draw: st.DrawFn, kind: str) -> bytes:
    """
    A request with malformed framing (or a length the server cannot take)
    of this C{kind}, with what would be its body.
    """
    content = draw(_bytes(_ALNUM, min_size=2, max_size=20))
    n = len(content)
    host = b"Host: example.com"
    cl = draw(_name(b"Content-Length"))
    te = draw(_name(b"Transfer-Encoding"))
    chunked = b"%x\r\n" % (n,) + content + b"\r\n0\r\n\r\n"
    if kind == "length and chunked":
        fields = [
            host,
            cl + b": %d" % (draw(st.sampled_from([n, len(chunked), 0])),),
            te + b": chunked",
        ]
        return _head(_LINE, draw(st.permutations(fields))) + chunked
    if kind == "two lengths":
        other = draw(st.integers(0, 2 * n).filter(lambda m: m != n))
        fields = [host, cl + b": %d" % (n,), cl + b": %d" % (other,)]
        return _head(_LINE, draw(st.permutations(fields))) + content
    if kind == "bad length":
        value = draw(
            st.sampled_from([b"-1", b"+%d" % (n,), b"abc", b"0x10", b"%d %d" % (n, n), b"1.5"])
        )
        return _head(_LINE, [host, cl + b": " + value]) + content
    if kind == "huge length":
        value = draw(st.sampled_from([b"1" + b"0" * 12, b"9" * 30, b"18446744073709551616"]))
        return _head(_LINE, [host, cl + b": " + value]) + content
    if kind == "bad transfer-encoding":
        value = draw(st.sampled_from([b"gzip", b"chunked, gzip", b"chunkedx", b"chunked;x"]))
        return _head(_LINE, [host, te + b": " + value]) + chunked
    if kind in ("bad chunk size", "chunk size overflow"):
        sizes = (
            [b"zz", b"-1", b"0x5", b"", b"+5", b"5 5", b"g"]
            if kind == "bad chunk size"
            else [b"1" + b"0" * 16, b"f" * 20, b"F" * 64]
        )
        size = draw(st.sampled_from(sizes))
        body = size + b"\r\n" + content + b"\r\n0\r\n\r\n"
        return _head(_LINE, [host, te + b": chunked"]) + body
    if kind == "chunk overrun":
        short = draw(st.integers(1, n - 1))
        body = b"%x\r\n" % (n - short,) + content + b"\r\n0\r\n\r\n"
        return _head(_LINE, [host, te + b": chunked"]) + body
    if kind == "bad request line":
        line = draw(
            st.one_of(
                _bytes(_ALNUM, min_size=1, max_size=20),
                st.sampled_from(
                    [
                        b"GET /?id=666",
                        b"GET /?id=666 HTTP/1.1 extra",
                        b"GET /?id=666 HTTP/1.2",
                        b"GET /?id=666 HTTP/2",
                        b"GET /?id=666 HTTX/1.1",
                        b"GET /?id=666 http/1.1",
                        b"GE(T /?id=666 HTTP/1.1",
                        b"GET /?id=666 HTTP/1.1x",
                    ]
                ),
            )
        )
        return _head(line, [host])
    if kind == "NUL":
        return draw(
            st.sampled_from(
                [
                    _head(b"GET /?id=666\x00 HTTP/1.1", [host]),
                    _head(_LINE, [host, b"X-A: a\x00b", cl + b": 0"]),
                    _head(_LINE, [host, b"X-\x00A: b", cl + b": 0"]),
                    _head(_LINE, [host, cl + b": \x00%d" % (n,)]) + content,
                ]
            )
        )
    if kind == "bare CR":
        return draw(
            st.sampled_from(
                [
                    _head(_LINE, [host, b"X-A: a\rb", cl + b": %d" % (n,)]) + content,
                    _head(_LINE, [host, b"X-A: a\r" + cl + b": %d" % (n,)]) + content,
                    _head(b"GET /?id=666\r HTTP/1.1", [host]),
                ]
            )
        )
    if kind == "bare LF in a header":
        # Whether a bare LF ends the line or not, this head is malformed.
        return _head(_LINE, [host, b"X-A: a\nb c d", cl + b": %d" % (n,)]) + content
    if kind == "header without colon":
        return _head(_LINE, [host, b"X-A b", cl + b": %d" % (n,)]) + content
    if kind == "space before colon":
        name = draw(st.sampled_from([b"Host", b"Content-Length", b"X-A"]))
        return _head(_LINE, [host, name + b" : %d" % (n,), cl + b": %d" % (n,)]) + content
    assert kind == "bad header name", kind
    name = draw(st.sampled_from([b"X(A)", b"X/A", b"X\xffA", b"X@A", b"X=A", b'"X"']))
    return _head(_LINE, [host, name + b": b", cl + b": %d" % (n,)]) + content


# -- mutations ---------------------------------------------------------------

_SNIPPETS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b"0",
    b"\xff",
    b"\r\n\r\n",
    b"\r\n \t",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"9" * 30,
]
_MUTATIONS = [
    "flip",
    "insert",
    "delete",
    "truncate",
    "bare LF",
    "bare CR",
    "obs-fold",
    "duplicate length",
    "add length",
    "add chunked",
    "chunk size",
    "huge length",
]


def _where(draw: st.DrawFn, pattern: bytes, data: bytes) -> re.Match[bytes] | None:
    """
    One of the places in C{data} that C{pattern} matches, if any.
    """
    found = list(re.finditer(pattern, data))
    return draw(st.sampled_from(found)) if found else None


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """
    C{data} mutated once: a byte flipped, bytes inserted or deleted, the
    rest cut off, or a change in the framing.
    """
    kind = draw(st.sampled_from(_MUTATIONS))
    at = draw(st.integers(0, len(data)))
    snippet = draw(st.one_of(st.sampled_from(_SNIPPETS), st.binary(min_size=1, max_size=1)))
    if kind == "flip" and data:
        i = min(at, len(data) - 1)
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 8)) :]
    if kind == "truncate":
        return data[:at]
    if kind in ("bare LF", "bare CR"):
        match = _where(draw, rb"\r\n", data)
        if match is not None:
            bare = b"\n" if kind == "bare LF" else b"\r"
            return data[: match.start()] + bare + data[match.end() :]
    if kind == "obs-fold":
        match = _where(draw, rb"\r\n(?!\r\n)", data)
        if match is not None:
            fold = draw(st.sampled_from([b"\r\n ", b"\r\n\t", b"\r\n  x"]))
            return data[: match.start()] + fold + data[match.start() :]
    if kind == "duplicate length":
        match = _where(draw, rb"(?i)content-length:[^\r\n]*\r\n", data)
        if match is not None:
            line = draw(st.sampled_from([match.group(), b"Content-Length: 1\r\n"]))
            return data[: match.end()] + line + data[match.end() :]
    if kind in ("add length", "add chunked"):
        match = _where(draw, rb" HTTP/1\.[01]\r\n", data)
        if match is not None:
            length = draw(st.sampled_from([b"0", b"1", b"5", b"1" + b"0" * 12, b"9" * 30]))
            line = (
                b"Content-Length: " + length + b"\r\n"
                if kind == "add length"
                else b"Transfer-Encoding: chunked\r\n"
            )
            return data[: match.end()] + line + data[match.end() :]
    if kind == "chunk size":
        match = _where(draw, rb"\r\n([0-9a-fA-F]+)(?=[;\r])", data)
        if match is not None:
            size = draw(st.sampled_from([b"zz", b"-1", b"0x1", b"", b"f" * 20, b"fffffff", b"0"]))
            return data[: match.start(1)] + size + data[match.end(1) :]
    if kind == "huge length":
        match = _where(draw, rb"(?i)content-length: *(\d+)", data)
        if match is not None:
            huge = draw(st.sampled_from([b"1" + b"0" * 12, b"9" * 30, b"4294967296"]))
            return data[: match.start(1)] + huge + data[match.end(1) :]
    # An insertion (also where the change above found no place to happen).
    return data[:at] + snippet + data[at:]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[list[Sent], bytes]:
    """
    Valid requests (plain: no body or header value can be read as a
    request of its own) with one to three mutations.
    """
    sent = draw(_pipeline(max_size=3, plain=True))
    data = b"".join(s.wire for s in sent)
    for _ in range(draw(st.integers(1, 3))):
        data = draw(_mutation(data))
    return sent, data


# -- delivery ----------------------------------------------------------------


@st.composite
def _reads(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """
    C{data} as the server reads it: at once, a byte at a time, or split at
    random points.
    """
    how = draw(st.sampled_from(["whole", "split", "bytes"]))
    if len(data) < 2 or how == "whole":
        return [data] if data else []
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), min_size=1, max_size=6))))
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


_BUFFER = st.sampled_from([65536, 1])
"""The transport's send buffer: ample, or full after every write."""


# -- what the server answers ------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """
    What came of one connection.

    @ivar reading: the complete responses written, interim ones included,
        and what was written after them, as L{read_answers} reads them
        (the requests' methods unknown, the connection closed).
    @ivar closing: whether the server closed (or half-closed, or aborted)
        the connection.
    @ivar stalled: whether the server stopped reading for good before all
        the data was delivered.
    """

    output: bytes
    reading: Reading
    closing: bool
    stalled: bool


def _closing(transport: PushBackTransport) -> bool:
    return bool(transport.disconnecting or transport.aborted or transport.writeClosed)


class FuzzCase(TestCase):
    """
    Conversations with a fresh channel, and the properties every one of
    them has.
    """

    def converse(self, reads: Sequence[bytes], bufferSize: int = 65536) -> Exchange:
        """
        Deliver C{reads} to a new connection as a socket would (not while
        the server has stopped reading, until the client reads what it was
        sent), read all it answers, then lose the connection.  Nothing may
        raise, be logged as an error, or be left on the clock.
        """
        clock = Clock()
        site = PluginServerSite(_Echo(), reactor=clock)
        site.timeOut = 60
        site.startFactory()
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert channel is not None
        transport = PushBackTransport(bufferSize)
        stalled = False
        try:
            channel.makeConnection(transport)
            for data in reads:
                while transport.producerState == "paused" and transport.drain():
                    pass
                if transport.producerState == "paused":
                    stalled = True
                    break
                channel.dataReceived(data)
            while transport.drain():
                pass
            closing = _closing(transport)
            channel.connectionLost(Failure(ConnectionDone()))
        finally:
            site.stopFactory()
        # A logged error fails this example (not only the test at its end,
        # as trial would), so that hypothesis shrinks the bytes that made it.
        errors = self.flushLoggedErrors()
        self.assertEqual([error.getTraceback() for error in errors], [])
        self.assertEqual(clock.getDelayedCalls(), [])
        reading = read_answers(transport.received, methods=None, closed=True)
        exchange = Exchange(transport.received, reading, closing, stalled)
        self.assertSound(exchange)
        return exchange

    def assertSound(self, exchange: Exchange) -> None:
        """
        What the server wrote is complete responses and nothing else: 100
        Continue, 200 with an echo, or an error with a JSON body; no
        traceback.  An error, or an answer that says it closes, is the last
        one, and the connection is closing.
        """
        self.assertEqual(exchange.reading.leftover, b"", exchange.output)
        self.assertNotIn(b"Traceback", exchange.output)
        self.assertNotIn(b'File "', exchange.output)
        for answer in exchange.reading.interim:
            self.assertEqual(answer.status, 100, exchange.output)
        final = exchange.reading.final
        for i, answer in enumerate(final):
            if answer.status >= 400:
                body = json.loads(answer.body)
                self.assertIsInstance(body, dict, answer)
                self.assertIsInstance(body.get("error"), str, answer)
            else:
                self.assertEqual(answer.status, 200, exchange.output)
                if answer.body:
                    self.assertEqual(
                        sorted(json.loads(answer.body)), ["body", "id", "method"], answer
                    )
            closes = b"close" in (answer.header(b"connection") or b"").lower()
            if answer.status >= 400 or closes:
                self.assertEqual(i, len(final) - 1, exchange.output)
                self.assertTrue(exchange.closing, exchange.output)

    def assertEchoes(self, answer: Answer, sent: Sent) -> None:
        """
        C{answer} is the site's answer to C{sent}.
        """
        self.assertEqual(answer.status, 200, answer)
        if sent.method == b"HEAD":
            self.assertEqual(answer.body, b"")
            return
        self.assertEqual(
            json.loads(answer.body),
            {
                "id": str(sent.ident),
                "method": sent.method.decode("ascii"),
                "body": sent.content.decode("latin-1"),
            },
        )


class AnyBytesTests(FuzzCase):
    """
    Bytes that mostly make no request at all.
    """

    @_fuzz(200)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.tuples(
                st.sampled_from([b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\n", b"GET "]),
                st.binary(max_size=200),
            ).map(b"".join),
        ).flatmap(_reads),
        _BUFFER,
    )
    def test_anyBytes(self, reads: list[bytes], bufferSize: int) -> None:
        """
        Random bytes, after a request line or not, split anywhere: the
        server neither raises nor writes anything but complete responses.
        """
        self.converse(reads, bufferSize)


class ValidRequestTests(FuzzCase):
    """
    Valid requests are answered exactly once each, in order.
    """

    def assertAnswered(self, sent: list[Sent], exchange: Exchange) -> None:
        self.assertFalse(exchange.stalled)
        self.assertEqual(len(exchange.reading.final), len(sent), exchange.output)
        for answer, request in zip(exchange.reading.final, sent, strict=True):
            self.assertEchoes(answer, request)
        self.assertLessEqual(len(exchange.reading.interim), sum(s.expects for s in sent))
        self.assertEqual(exchange.closing, not sent[-1].persistent, exchange.output)

    @_fuzz(200)
    @given(st.data(), _pipeline(max_size=1), _BUFFER)
    def test_oneRequest(self, data: st.DataObject, sent: list[Sent], bufferSize: int) -> None:
        """
        One valid request, split anywhere, gets exactly one answer, with
        the body it sent.
        """
        reads = data.draw(_reads(sent[0].wire), label="reads")
        self.assertAnswered(sent, self.converse(reads, bufferSize))

    @_fuzz(150)
    @given(st.data(), _pipeline(min_size=2, max_size=5), _BUFFER)
    def test_pipelined(self, data: st.DataObject, sent: list[Sent], bufferSize: int) -> None:
        """
        N valid requests sent at once, split anywhere, get exactly N
        answers, in order.
        """
        reads = data.draw(_reads(b"".join(s.wire for s in sent)), label="reads")
        self.assertAnswered(sent, self.converse(reads, bufferSize))


class MalformedTests(FuzzCase):
    """
    Malformed framing is answered 400 (or another error) and the connection
    closed, or just closed; never answered 2xx.
    """

    @_fuzz(250)
    @given(
        st.data(),
        _pipeline(min_size=0, max_size=2, more=True),
        st.sampled_from(_MALFORMED_KINDS),
        _pipeline(min_size=0, max_size=1, first=100),
        _BUFFER,
    )
    def test_malformed(
        self,
        data: st.DataObject,
        before: list[Sent],
        kind: str,
        after: list[Sent],
        bufferSize: int,
    ) -> None:
        """
        Valid requests, a malformed one, maybe a valid one after it, split
        anywhere: those before may be answered, in order; the malformed one
        gets an error or nothing, and the connection is closed; nothing
        after it is answered.
        """
        bad = data.draw(_malformed(kind), label="malformed")
        wire = b"".join(s.wire for s in before) + bad + b"".join(s.wire for s in after)
        reads = data.draw(_reads(wire), label="reads")
        exchange = self.converse(reads, bufferSize)
        answered = [answer for answer in exchange.reading.final if answer.status < 400]
        self.assertLessEqual(len(answered), len(before), exchange.output)
        for answer, request in zip(answered, before, strict=False):
            self.assertEchoes(answer, request)
        self.assertLessEqual(len(exchange.reading.final), len(answered) + 1, exchange.output)
        self.assertTrue(exchange.closing, (kind, exchange.output))


class MutationTests(FuzzCase):
    """
    Mutated requests are answered at most once each.
    """

    @_fuzz(250)
    @given(st.data(), _mutated(), _BUFFER)
    def test_mutated(
        self, data: st.DataObject, mutated: tuple[list[Sent], bytes], bufferSize: int
    ) -> None:
        """
        Valid requests with bytes flipped, inserted or deleted, cut short,
        or their framing broken, split anywhere: no more successful answers
        than requests sent.
        """
        sent, wire = mutated
        reads = data.draw(_reads(wire), label="reads")
        exchange = self.converse(reads, bufferSize)
        answered = [answer for answer in exchange.reading.final if answer.status < 400]
        self.assertLessEqual(len(answered), len(sent), exchange.output)
