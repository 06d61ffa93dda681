"""
pluginserver.answers: every body and error the server sends, made in one
place.
"""

from __future__ import annotations

import json
import math

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from pluginserver import RawJSON
from pluginserver.answers import (
    DEFAULT_HEADERS,
    INTERNAL_ERROR,
    TOO_LARGE,
    UNENCODABLE,
    answer,
    encode_json,
    error,
    error_body,
    json_answer,
    raw_response,
)


class BodyTests(SynchronousTestCase):
    def test_errorBody(self) -> None:
        self.assertEqual(json.loads(error_body("not found")), {"error": "not found"})
        self.assertEqual(
            json.loads(error_body("host not allowed", "host 'x' is not in y")),
            {"error": "host not allowed", "detail": "host 'x' is not in y"},
        )
        self.assertEqual(INTERNAL_ERROR, b'{"error":"internal error"}')

    def test_compactUTF8JSON(self) -> None:
        self.assertEqual(encode_json({"a": [1, "\u00e9"]}), '{"a":[1,"\u00e9"]}'.encode())
        self.assertEqual(encode_json("x"), b'"x"')

    def test_rawJSONPassesThrough(self) -> None:
        raw = RawJSON(b'{"already":"encoded"}')
        self.assertIs(encode_json(raw), raw)

    def test_notJSONRaises(self) -> None:
        cyclic: list[object] = []
        cyclic.append(cyclic)
        for value in (math.nan, math.inf, object(), cyclic, {1j: 1}):
            self.assertRaises(UNENCODABLE, encode_json, value)


class RawResponseTests(SynchronousTestCase):
    def test_aCompleteClosingAnswer(self) -> None:
        raw = raw_response(b"408 Request Timeout", "request timeout")
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 408 Request Timeout")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        for name, value in DEFAULT_HEADERS:
            self.assertEqual(headers[name], value)
        self.assertEqual(headers[b"connection"], b"close")
        self.assertEqual(int(headers[b"content-length"]), len(body))
        self.assertEqual(json.loads(body), {"error": "request timeout"})
        self.assertIn(b"413 Request Entity Too Large", TOO_LARGE)


class AnswerTests(SynchronousTestCase):
    def test_bodyAndStatus(self) -> None:
        request = DummyRequest([b""])
        self.assertEqual(error(request, 404, "not found"), b'{"error":"not found"}')
        self.assertEqual(request.responseCode, 404)

    def test_headHasTheLengthAndNoBody(self) -> None:
        request = DummyRequest([b""])
        request.method = b"HEAD"
        self.assertEqual(answer(request, 200, b'{"a":1}'), b"")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"7"])

    def test_noContentHasNoBodyOrContentType(self) -> None:
        for status in (204, 304):
            request = DummyRequest([b""])
            request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
            self.assertIs(answer(request, status, b"ignored"), NOT_DONE_YET)
            self.assertEqual(request.responseCode, status)
            self.assertFalse(request.responseHeaders.hasHeader(b"content-type"))
            self.assertEqual(request.written, [])
            self.assertEqual(request.finished, 1)

    def test_jsonAnswerForKleinRoutes(self) -> None:
        request = DummyRequest([b""])
        self.assertEqual(json_answer(request, 201, {"made": True}), b'{"made":true}')
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"]
        )
