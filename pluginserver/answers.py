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
from collections.abc import Callable
from typing import Any

from twisted.web.http import Request
from twisted.web.server import NOT_DONE_YET

from pluginserver.plugin import RawJSON

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


def raw_response(status: bytes, message: str) -> bytes:
    """
    A complete error answer, written straight to the transport, for what is
    refused before there is a request to answer through; the connection is
    closed after it.
    """
    body = error_body(message)
    head = b"".join(b"%s: %s\r\n" % (name.title(), value) for name, value in DEFAULT_HEADERS)
    return (
        b"HTTP/1.1 " + status + b"\r\n" + head + b"Connection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % (len(body),)
    ) + body


TOO_LARGE = raw_response(b"413 Request Entity Too Large", "request body too large")
HEAD_TIMEOUT = raw_response(b"408 Request Timeout", "request timeout")
BAD_REQUEST = raw_response(b"400 Bad Request", "bad request")
URI_TOO_LONG = raw_response(b"414 URI Too Long", "request line too long")
HEADERS_TOO_LARGE = raw_response(
    b"431 Request Header Fields Too Large", "request headers too large"
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
