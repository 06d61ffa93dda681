# -*- test-case-name: tests.test_plugincore -*-
"""
The old server's answers as pluginserver's: what an old plugin's
C{request_handler} gives, turned into what a L{Plugin<pluginserver.Plugin>}'s
C{handle} may return.

The old server answered C{(code, value)}: a dict or list as JSON, a str as
HTML, and an aiohttp C{web.Response} (C{web.json_response},
C{web.FileResponse}, a C{web.HTTPException}) as it was.  aiohttp is never
imported here (it is an optional extra, C{[compat]}): its classes are
looked up in C{sys.modules}, so they are recognised exactly when the plugin
itself has imported them, and cost nothing when it has not.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from pluginserver.plugin import FileResponse, RawJSON, Response

__all__ = ["HTML", "AnswerError", "from_aiohttp", "http_exception", "is_aiohttp", "old_answer"]

HTML = "text/html; charset=utf-8"
"""What the old server sent a C{str} answer as."""

_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
"""Headers the server frames answers with: an aiohttp response's own values
for them (computed by aiohttp for its own framing) are left out."""


class AnswerError(TypeError):
    """
    An old plugin's answer cannot be sent: not a C{(code, value)} tuple, or
    a value that is none of the old answers.  The web layer logs it with the
    plugin's name and answers 500 C{{"error": "internal error"}}.
    """


def _instance(value: object, module: str, name: str) -> bool:
    """
    Whether C{value} is an instance of the class C{name} of the aiohttp
    module C{module}; false when that module is not imported.
    """
    found = getattr(sys.modules.get(module), name, None)
    return isinstance(found, type) and isinstance(value, found)


def is_aiohttp(value: object) -> bool:
    """
    Whether C{value} is an aiohttp response (a C{web.StreamResponse}: a
    C{Response}, C{json_response}, C{FileResponse} or C{HTTPException}).
    """
    return _instance(value, "aiohttp.web_response", "StreamResponse")


def http_exception(value: object) -> bool:
    """
    Whether C{value} is an aiohttp C{web.HTTPException}.
    """
    return _instance(value, "aiohttp.web_exceptions", "HTTPException")


def _headers(response: Any) -> dict[str, list[str]]:
    """
    An aiohttp response's headers but C{Content-Type} and the framing
    ones, with its cookies (C{set_cookie}) as C{Set-Cookie} headers; a
    header given several times keeps each value.
    """
    headers: dict[str, list[str]] = {}
    spelling: dict[str, str] = {}
    for name, value in response.headers.items():
        lower = name.lower()
        if lower == "content-type" or lower in _FRAMING:
            continue
        headers.setdefault(spelling.setdefault(lower, name), []).append(value)
    for morsel in getattr(response, "cookies", {}).values():
        headers.setdefault(spelling.setdefault("set-cookie", "Set-Cookie"), []).append(
            morsel.OutputString()
        )
    return headers


def _body(response: Any) -> bytes | None:
    """
    An aiohttp C{web.Response}'s body as bytes: its C{body} is bytes, or a
    bytes payload (C{body=} given a C{str}).
    """
    body = response.body
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    value = getattr(body, "_value", None)  # aiohttp's BytesPayload and StringPayload
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise AnswerError(f"an aiohttp body of type {type(body).__name__} cannot be sent")


def from_aiohttp(response: Any) -> Response:
    """
    An aiohttp response as a L{Response}: the same status, headers,
    content type and body.  A C{FileResponse} is served by the server's own
    L{FileResponse} (conditional and range requests included); an
    C{HTTPException} of 400 or more is an error answer, JSON like every
    error of the server, C{{"error": text}} (its reason, lower case, unless
    it was given a text of its own), with its headers.

    @raise AnswerError: a bare C{web.StreamResponse} (a streaming answer,
        written by the old server's handler itself) or a body that is not
        bytes.
    """
    headers = _headers(response)
    contentType = response.headers.get("Content-Type")
    if _instance(response, "aiohttp.web_fileresponse", "FileResponse"):
        path = getattr(response, "_path", None)
        if path is None:
            raise AnswerError("an aiohttp FileResponse without a path")
        return FileResponse(path, content_type=contentType, headers=headers or None)
    if http_exception(response) and response.status >= 400:
        text = response.text
        reason = str(response.reason or "error")
        if text is None or text == f"{response.status}: {reason}":
            text = reason.lower()
        return Response({"error": text}, response.status, headers or None)
    if not _instance(response, "aiohttp.web_response", "Response"):
        raise AnswerError(
            f"an aiohttp {type(response).__name__} cannot be answered: return a "
            "web.Response, web.json_response, web.FileResponse or web.HTTPException"
        )
    body = _body(response)
    if body is None:
        body = b""
    return Response(body, response.status, headers or None, contentType)


def old_answer(result: Any) -> Any:
    """
    What an old plugin's C{request_handler} gave, as a C{handle} result.

    A C{(code, value)} tuple: a dict, list or other JSON value is JSON with
    that status; a C{str} is C{text/html; charset=utf-8}; C{bytes} are
    C{application/octet-stream}; an aiohttp response or a pluginserver
    L{Response} is sent as it is, with its own status.  An aiohttp
    response or L{Response} returned alone, outside a tuple, is sent too.

    @raise AnswerError: anything else (a tuple of another length, a value
        that is none of these).
    """
    if type(result) is tuple:
        if len(result) != 2:
            raise AnswerError(
                f"request_handler returned a tuple of {len(result)} items, not (code, value)"
            )
        code, value = result
        if value is None or isinstance(value, (dict, list, tuple, int, float, RawJSON)):
            return (code, value)
        if isinstance(value, str):
            return Response(value, code, content_type=HTML)
        if isinstance(value, (bytes, bytearray)):
            return Response(bytes(value), code)
        if isinstance(value, Response):
            return value
        if is_aiohttp(value):
            return from_aiohttp(value)
        if isinstance(value, Mapping):
            return (code, dict(value))
        raise AnswerError(
            f"request_handler answered ({code!r}, a {type(value).__name__}): expected "
            "a dict, a list, a str or an aiohttp response"
        )
    if isinstance(result, Response):
        return result
    if is_aiohttp(result):
        return from_aiohttp(result)
    raise AnswerError(
        f"request_handler returned a {type(result).__name__}, not a (code, value) tuple"
    )
