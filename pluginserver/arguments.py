# -*- test-case-name: tests.test_arguments -*-
"""
A request's arguments, parsed once: the query string, form fields
(urlencoded or multipart), a JSON body, and where an API key was presented
in them.

The key check and the plugin's C{request.args} both read the one
L{Arguments} made here, so the query is never parsed twice and the key a
check accepted is the one removed from what the plugin sees.
"""

from __future__ import annotations

import json
import math
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import attr
from twisted.web.http import (
    Request,
    parse_qs,  # bytes in, bytes out: any octets
)

from pluginserver.plugin import UploadedFile

_JSON = b"application/json"
_FORM = b"application/x-www-form-urlencoded"
_KEY = b"apikey"


class BadRequest(Exception):  # noqa: N818 - named after the 400 status it answers
    """
    The request's arguments cannot be parsed; answered 400 with this
    message.
    """


@attr.s(auto_attribs=True, slots=True)
class Arguments:
    """
    What a request carries besides its path and headers.

    @ivar args: the query's fields, then the form's, then the top-level
        fields of a JSON object body (later sources win, and so does the
        last of repeated fields); the C{apikey} field removed.
    @ivar document: the parsed JSON body, or L{None}.
    @ivar body: the raw body.
    @ivar query_key: the first C{apikey} of the query string, or L{None}.
    @ivar body_key: the C{apikey} of the body (a JSON object's string field,
        else the form's first), or L{None}.
    @ivar files: the file fields of a multipart form, by field name.
    """

    args: dict[str, Any]
    document: Any = None
    body: bytes = b""
    query_key: str | None = None
    body_key: str | None = None
    files: dict[str, UploadedFile] = attr.Factory(dict)


def read_body(request: Request) -> bytes:
    """
    The request body, whether Twisted kept it in memory or in a file.
    """
    content = request.content
    if content is None:
        return b""
    try:
        value: bytes = content.getvalue()  # BytesIO: no seeking needed
        return value
    except AttributeError:
        pass  # a temporary file, for a large body
    content.seek(0)
    body: bytes = content.read()
    content.seek(0)
    return body


def _mime(contentType: bytes) -> bytes:
    return contentType.split(b";", 1)[0].strip().lower()


def _is_json_type(contentType: bytes) -> bool:
    mime = _mime(contentType)
    return mime == _JSON or mime.endswith(b"+json")


Fields = dict[bytes, list[bytes]]
"""Parsed fields as twisted.web gives them: each name's values, in order."""


def _form(request: Request, body: bytes) -> tuple[Fields, dict[str, UploadedFile]]:
    """
    The form fields of the body, urlencoded or multipart, whatever the
    method, and the files of a multipart form.  (twisted.web parses the form
    of a POST into C{request.args} too, but there the form's fields replace
    the query's of the same name, so the two sources could not be told
    apart, and a file's name and type are lost.)
    """
    if not body:
        return {}, {}
    contentType = request.getHeader(b"content-type") or b""
    mime = _mime(contentType)
    if mime == _FORM:
        if body.lstrip()[:1] in (b"{", b"["):
            return {}, {}  # JSON sent the curl -d way: read as JSON below
        parsed: Fields = parse_qs(body, 1)
        return parsed, {}
    if mime == b"multipart/form-data":
        return _multipart(contentType, body)
    return {}, {}


def _multipart(contentType: bytes, body: bytes) -> tuple[Fields, dict[str, UploadedFile]]:
    """
    Parse a C{multipart/form-data} body (RFC 7578) with the standard
    library's MIME parser: every part is a field; a part with a filename is
    a file as well.
    """
    try:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + contentType + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise BadRequest("malformed multipart body")
        fields: Fields = {}
        files: dict[str, UploadedFile] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue  # not a form field
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            fields.setdefault(name.encode("utf-8"), []).append(data)
            filename = part.get_filename()
            if filename is not None:
                files[name] = UploadedFile(filename, part.get_content_type(), data)
    except BadRequest:
        raise
    except Exception:
        raise BadRequest("malformed multipart body") from None
    return fields, files


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"invalid UTF-8 in {what}") from None


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number out of range: {text}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(body: bytes) -> Any:
    """
    Parse a JSON body strictly: NaN, Infinity and numbers too large for a
    float are not JSON, and could not be answered as JSON either.
    """
    return json.loads(body, parse_float=_finite, parse_constant=_no_constant)


def _json_document(contentType: bytes, body: bytes) -> Any:
    """
    The body parsed as JSON when it is JSON: declared so, or sent the curl
    C{-d} way (no type, or the form type, and a body that starts like JSON).
    """
    declared = _is_json_type(contentType)
    if not declared and not (
        (not contentType or contentType.lower().startswith(_FORM))
        and body.lstrip()[:1] in (b"{", b"[")
    ):
        return None
    try:
        return _loads(body)
    except RecursionError:
        raise BadRequest("JSON body nested too deeply") from None
    except ValueError:
        if declared:
            raise BadRequest("malformed JSON body") from None
        return None  # a form that happens to start with a brace


def parse_request(request: Request) -> Arguments:
    """
    Parse the query string, the form and a JSON body of C{request} into one
    L{Arguments}.

    @raise BadRequest: a name or value is not UTF-8, a declared JSON body is
        malformed or too deep, or a multipart body is malformed.
    """
    query_string = request.uri.partition(b"?")[2]
    body = read_body(request) if request.content is not None else b""
    if not query_string and not body:
        # Most GETs: fresh ones, plugins may keep them (by position: a
        # default made by attr.Factory costs a call).
        return Arguments({}, None, b"", None, None, {})
    query: Fields = parse_qs(query_string, 1) if query_string else {}
    form, files = _form(request, body)
    contentType = request.getHeader(b"content-type") or b""
    document = _json_document(contentType, body) if body else None
    if document is not None and not _is_json_type(contentType):
        # The body was JSON, not the form twisted.web took it for.
        form = {}
    args: dict[str, Any] = {}
    for key, values in query.items():
        if values:
            name = _decode(key, "argument name")
            args[name] = _decode(values[-1], f"argument {name!r}")
    binary = _mime(contentType) == b"multipart/form-data"
    for key, values in form.items():
        name = _decode(key, "argument name")
        value = values[-1]
        if binary:
            # A file field may well be binary: hand over the bytes.
            try:
                args[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                args[name] = value
        else:
            args[name] = _decode(value, f"argument {name!r}")
    if isinstance(document, dict):
        args.update(document)
    # Blank values count: a blank key is a wrong key, not a missing one.
    fromQuery = query.get(_KEY)
    fromForm = form.get(_KEY)
    bodyKey = fromForm[0].decode("utf-8", "replace") if fromForm else None
    if isinstance(document, dict) and isinstance(document.get("apikey"), str):
        bodyKey = document["apikey"]
    args.pop("apikey", None)
    return Arguments(
        args,
        document,
        body,
        fromQuery[0].decode("utf-8", "replace") if fromQuery else None,
        bodyKey,
        files,
    )
