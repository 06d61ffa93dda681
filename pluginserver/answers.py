# -*- test-case-name: tests.test_answers -*-
"""
One place that turns results and errors into bytes on the wire.

Every JSON body, every error body (C{{"error": message}}), the headers every
answer carries, the complete answers written before there is a request to
answer through (413, 408, 400, 414, 431) and the 500 of a failure no layer
caught are made here, so that a change to any of them is one edit.  Like
twisted.web's C{errorPage}, L{error} is the one way an error is answered.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.web.http import Request
from twisted.web.server import NOT_DONE_YET

from pluginserver.plugin import RawJSON
from pluginserver.target import BAD_TARGET

JSON = b"application/json"


def _make_encoder() -> Callable[[Any], str]:
    """
    A compact JSON encoder made once: json.dumps builds its C encoder anew
    on every call, which costs more than encoding a small answer.  Without
    the circular-reference check a cyclic value raises RecursionError, which
    is answered like any unencodable value.
    """
    try:
        from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - CPython always has them
        c_make_encoder = None
    if c_make_encoder is None or c_encode_basestring is None:  # pragma: no cover
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    # allow_nan off: NaN and Infinity are not JSON; such a value is
    # answered like any other that cannot be encoded (500, logged).
    encoder = c_make_encoder(
        None, fallback.default, c_encode_basestring, None, ":", ",", False, False, False
    )

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return c_encode_basestring(value)  # type: ignore[no-any-return]
        return "".join(encoder(value, 0))

    return encode


encode = _make_encoder()
"""Encode a value as compact JSON text; raises TypeError, ValueError or
RecursionError for a value that is not JSON."""

UNENCODABLE = (TypeError, ValueError, RecursionError)
"""What L{encode} and L{encode_json} raise for a value that is not JSON."""


def encode_json(value: Any) -> bytes:
    """
    Encode a plugin's result as a JSON body; L{RawJSON} passes through
    unchanged.
    """
    if isinstance(value, RawJSON):
        return value
    return encode(value).encode("utf-8")


def error_body(message: str, detail: str | None = None) -> bytes:
    """
    The JSON body of an error answer: C{{"error": message}}, and
    C{"detail"} when there is more a user can act on.
    """
    if detail is None:
        return encode({"error": message}).encode("utf-8")
    return encode({"error": message, "detail": detail}).encode("utf-8")


INTERNAL_ERROR = error_body("internal error")
"""The body of every 500: nothing of the failure reaches the client."""

DEFAULT_HEADERS = (
    (b"content-type", JSON),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
)
"""Headers every answer carries (a plugin's, an error's, a utility route's)."""

NO_BODY = frozenset({204, 304})
"""Statuses whose answers carry no body, so no Content-Length or Content-Type."""


def raw_response(status: bytes, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """
    A complete error answer, written straight to the transport, for what is
    refused before there is a request to answer through; the connection is
    closed after it.

    @param extra: headers beyond L{DEFAULT_HEADERS}.
    """
    body = error_body(message)
    head = b"".join(
        b"%s: %s\r\n" % (name.title(), value) for name, value in (*DEFAULT_HEADERS, *extra)
    )
    return (
        b"HTTP/1.1 " + status + b"\r\n" + head + b"Connection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body),)
    ) + body


TOO_LARGE = raw_response(b"413 Request Entity Too Large", "request body too large")
HEAD_TIMEOUT = raw_response(b"408 Request Timeout", "request timeout")
BAD_REQUEST = raw_response(b"400 Bad Request", "bad request")
BAD_REQUEST_TARGET = raw_response(b"400 Bad Request", BAD_TARGET)
SERVER_ERROR = raw_response(b"500 Internal Server Error", "internal error")
URI_TOO_LONG = raw_response(b"414 URI Too Long", "request line too long")
HEADERS_TOO_LARGE = raw_response(
    b"431 Request Header Fields Too Large", "request headers too large"
)

TOO_MANY_REQUESTS = "too many requests"
"""The message of every 429 (rate limits, failed key checks)."""


def too_many_requests(retry_after: int) -> bytes:
    """
    The complete 429 answer to a request refused before its body is read,
    with C{Retry-After} in whole seconds.
    """
    return raw_response(
        b"429 Too Many Requests", TOO_MANY_REQUESTS, ((b"retry-after", b"%d" % retry_after),)
    )


def answer(request: Request, status: int, body: bytes) -> Any:
    """
    Answer C{request} with C{status} and the JSON C{body}: what a resource's
    render returns.  HEAD gets the length GET would have, and no body; 204
    and 304 get neither.
    """
    request.setResponseCode(status)
    if status in NO_BODY:
        return empty(request)
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % (len(body),))
        return b""
    return body


def error(request: Request, status: int, message: str, detail: str | None = None) -> Any:
    """
    Answer C{request} with an error: C{status} and C{{"error": message}}
    (and C{detail}, see L{error_body}).
    """
    return answer(request, status, error_body(message, detail))


def json_answer(request: Request, status: int, value: Any) -> bytes:
    """
    Set C{status} and the JSON content type, and give back C{value}
    encoded: for Klein routes, which write what they return.
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    return encode_json(value)


def empty(request: Request) -> Any:
    """
    Finish an answer that has no body and so no Content-Length or
    Content-Type either (204, 304): twisted.web would send a length for the
    body it then drops.
    """
    request.responseHeaders.removeHeader(b"content-type")
    request.finish()
    return NOT_DONE_YET


# -- a plugin's Response --------------------------------------------------------


class BadResponse(Exception):  # noqa: N818 - named after what it reports
    """
    A plugin's answer cannot be sent as it is; the message says why.  The
    web layer logs it with the plugin's name and answers 500.
    """


FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
"""Headers the server sets to frame an answer; a plugin may not."""

HTML_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
"""What an HTML answer carries besides the default headers, unless the
plugin set its own."""

TEXT = b"text/plain; charset=utf-8"
BINARY = b"application/octet-stream"

HeaderPairs = list[tuple[bytes, list[bytes]]]


def check_status(status: Any) -> int:
    """
    A plugin's status, checked: an C{int} from 200 to 599 (1xx would leave
    the client waiting for the real answer; anything else is not HTTP).

    @raise BadResponse: it is not.
    """
    if type(status) is not int or not 200 <= status <= 599:
        raise BadResponse(f"status {status!r} is outside 200-599")
    return status


def header_value(name: str, value: Any) -> bytes:
    """
    One header value as bytes: C{str} (Latin-1) or C{bytes}, without line
    breaks or NUL.

    @raise BadResponse: it is neither, or holds them.
    """
    if isinstance(value, str):
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            raise BadResponse(f"header {name}: {value!r} is not Latin-1 text") from None
    if not isinstance(value, bytes):
        raise BadResponse(f"header {name}: value {value!r} is not str or bytes")
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        raise BadResponse(f"header {name}: value holds a line break or NUL")
    return value


def header_pairs(headers: Any) -> tuple[HeaderPairs, bytes | None]:
    """
    A plugin's headers, checked and encoded; the C{Content-Type} among them
    is given back apart.

    @raise BadResponse: a name is not a token, a value is not text, or a
        framing header is set.
    """
    if headers is None:
        return [], None
    if not isinstance(headers, Mapping):
        raise BadResponse(f"headers must be a mapping, not {type(headers).__name__}")
    pairs: HeaderPairs = []
    contentType = None
    for name, value in headers.items():
        if not isinstance(name, str) or not name or not _TOKEN.fullmatch(name):
            raise BadResponse(f"header name {name!r} is not a valid token")
        lower = name.lower().encode("ascii")
        if lower in FRAMING:
            raise BadResponse(f"header {name} frames the answer: the server sets it")
        if isinstance(value, (str, bytes)):
            values = [header_value(name, value)]
        elif isinstance(value, (list, tuple)):
            values = [header_value(name, item) for item in value]
        else:
            raise BadResponse(f"header {name}: value {value!r} is not str or bytes")
        if lower == b"content-type":
            contentType = values[-1]
        else:
            pairs.append((lower, values))
    return pairs, contentType


def set_headers(request: Request, pairs: HeaderPairs, content_type: bytes | None) -> None:
    """
    Put a plugin's checked headers on the answer, over the defaults: its
    own replace them (C{Cache-Control} too) but for C{nosniff}, which
    always stays; HTML gets the headers of L{HTML_HEADERS} it did not set.
    """
    headers = request.responseHeaders
    for name, values in pairs:
        headers.setRawHeaders(name, values)
    headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
    if content_type is None:
        headers.removeHeader(b"content-type")
        return
    headers.setRawHeaders(b"content-type", [content_type])
    if content_type[:9].lower() == b"text/html":
        for name, value in HTML_HEADERS:
            if not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])


def is_stream(body: Any) -> bool:
    """
    Whether a Response body is streamed: an iterator or async iterator (a
    generator, typically), not a value.
    """
    return hasattr(body, "__anext__") or (
        hasattr(body, "__next__") and not isinstance(body, (str, bytes, Mapping))
    )


def encode_body(body: Any) -> tuple[bytes | None, bytes | None]:
    """
    A Response's body as bytes and the content type it implies: C{str} as
    UTF-8 text, C{bytes} as they are, L{None} as no body, any other value
    as JSON.

    @raise BadResponse: the value cannot be encoded as JSON.
    """
    if body is None:
        return None, None
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), JSON if isinstance(body, RawJSON) else BINARY
    try:
        return encode_json(body), JSON
    except UNENCODABLE as e:
        raise BadResponse(f"body is not JSON: {e}") from None


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
