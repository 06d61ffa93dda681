"""
Plugins answer with anything: every form of L{Response}, the tuple forms,
uploads, and what a mistake in an answer gets.  In memory, through the
server's own channel (pluginserver.testing).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from pluginserver import testing
from tests.helpers import PluginDir

ANSWERS = """
from pluginserver import Plugin, Response, redirect


class Answers(Plugin):
    methods = ("GET", "HEAD", "POST")

    def handle(self, request):
        kind = request.subpath
        if kind == "html":
            return Response("<h1>hi</h1>", content_type="text/html; charset=utf-8")
        if kind == "html-own-csp":
            return Response(
                "<p>x</p>",
                content_type="text/html",
                headers={"Content-Security-Policy": "default-src 'none'"},
            )
        if kind == "text":
            return Response("caf\\u00e9")
        if kind == "bytes":
            return Response(b"\\x00\\x01", headers={"Cache-Control": "max-age=60"})
        if kind == "csv":
            return Response(
                "a,b\\n1,2\\n",
                content_type="text/csv",
                headers={"Content-Disposition": 'attachment; filename="x.csv"'},
            )
        if kind == "json":
            return Response({"made": True}, status=201, headers={"Location": "/answers/1"})
        if kind == "none":
            return Response(None, status=204)
        if kind == "not-modified":
            return Response(b"ignored", status=304, headers={"ETag": '"v1"'})
        if kind == "redirect":
            return redirect("/answers/text")
        if kind == "moved":
            return redirect("https://example.com/", status=301)
        if kind == "cookies":
            return Response("ok", headers={"Set-Cookie": ["a=1", "b=2"]})
        if kind == "tuple3":
            return (202, {"queued": 1}, {"Retry-After": "5"})
        if kind == "tuple3-text":
            return (200, "json string", {"X-Kind": "str"})
        if kind == "tuple4":
            return (200, {}, {}, "extra")
        if kind == "tuple-not-int":
            return ("a", "b")
        if kind == "nosniff":
            return Response("x", headers={"X-Content-Type-Options": "sniff-away"})
        if kind == "bad-framing":
            return Response("x", headers={"Content-Length": "99"})
        if kind == "bad-connection":
            return Response("x", headers={"Connection": "close"})
        if kind == "bad-value":
            return Response("x", headers={"X-Number": 5})
        if kind == "bad-newline":
            return Response("x", headers={"X-Evil": "a\\r\\nSet-Cookie: owned=1"})
        if kind == "bad-status":
            return Response("x", status=99)
        if kind == "bad-status-1xx":
            return Response("x", status=101)
        if kind == "bad-json":
            return Response({"x": object()})
        if kind == "async":
            return self.later()
        return Response("unknown kind", status=404)

    async def later(self):
        return Response("later", status=202)
"""

UPLOAD = """
from pluginserver import Plugin


class Upload(Plugin):
    def handle(self, request):
        return {
            name: {"filename": f.filename, "type": f.content_type, "size": len(f.data),
                   "head": f.data[:4].hex()}
            for name, f in request.files.items()
        } | {"args": sorted(request.args)}
"""


class ResponseTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        plugins = PluginDir(self)
        plugins.write("answers", ANSWERS)
        plugins.write("upload", UPLOAD)
        self.server = yield testing.serve(self, plugins.path)

    def get(self, kind: str, method: str = "GET", **kwargs: Any) -> defer.Deferred[testing.Answer]:
        return self.server.request(method, "/answers/" + kind, **kwargs)

    def header(self, answer: testing.Answer, name: str) -> list[str] | None:
        values: list[str] | None = answer.headers.getRawHeaders(name)
        return values

    def assertSecurityHeaders(self, answer: testing.Answer) -> None:
        self.assertEqual(self.header(answer, "x-content-type-options"), ["nosniff"])

    @defer.inlineCallbacks
    def test_htmlCarriesTheHTMLSecurityHeaders(self) -> Any:
        answer = yield self.get("html")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"<h1>hi</h1>")
        self.assertEqual(self.header(answer, "content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(
            self.header(answer, "content-security-policy"),
            ["default-src 'self'; frame-ancestors 'none'"],
        )
        self.assertEqual(self.header(answer, "x-frame-options"), ["DENY"])
        self.assertEqual(self.header(answer, "referrer-policy"), ["no-referrer"])
        self.assertEqual(self.header(answer, "cache-control"), ["no-store"])
        self.assertSecurityHeaders(answer)
        answer = yield self.get("html-own-csp")
        self.assertEqual(self.header(answer, "content-security-policy"), ["default-src 'none'"])
        self.assertEqual(self.header(answer, "x-frame-options"), ["DENY"])

    @defer.inlineCallbacks
    def test_textAndBytesDefaults(self) -> Any:
        answer = yield self.get("text")
        self.assertEqual(answer.body, "caf\u00e9".encode())
        self.assertEqual(self.header(answer, "content-type"), ["text/plain; charset=utf-8"])
        self.assertIsNone(self.header(answer, "content-security-policy"))
        answer = yield self.get("bytes")
        self.assertEqual(answer.body, b"\x00\x01")
        self.assertEqual(self.header(answer, "content-type"), ["application/octet-stream"])
        # The plugin's Cache-Control replaces no-store; nosniff stays.
        self.assertEqual(self.header(answer, "cache-control"), ["max-age=60"])
        self.assertSecurityHeaders(answer)
        answer = yield self.get("nosniff")
        self.assertEqual(self.header(answer, "x-content-type-options"), ["nosniff"])

    @defer.inlineCallbacks
    def test_downloadsAndRepeatedHeaders(self) -> Any:
        answer = yield self.get("csv")
        self.assertEqual(answer.body, b"a,b\n1,2\n")
        self.assertEqual(self.header(answer, "content-type"), ["text/csv"])
        self.assertEqual(
            self.header(answer, "content-disposition"), ['attachment; filename="x.csv"']
        )
        answer = yield self.get("cookies")
        self.assertEqual(self.header(answer, "set-cookie"), ["a=1", "b=2"])

    @defer.inlineCallbacks
    def test_jsonWithStatusAndLocation(self) -> Any:
        answer = yield self.get("json")
        self.assertEqual((answer.status, answer.json()), (201, {"made": True}))
        self.assertEqual(self.header(answer, "content-type"), ["application/json"])
        self.assertEqual(self.header(answer, "location"), ["/answers/1"])

    @defer.inlineCallbacks
    def test_noBodyStatuses(self) -> Any:
        for kind, status in (("none", 204), ("not-modified", 304)):
            answer = yield self.get(kind)
            self.assertEqual(answer.status, status)
            self.assertEqual(answer.body, b"")
            self.assertIsNone(self.header(answer, "content-type"), kind)
            self.assertIsNone(self.header(answer, "content-length"), kind)
        answer = yield self.get("not-modified")
        self.assertEqual(self.header(answer, "etag"), ['"v1"'])

    @defer.inlineCallbacks
    def test_redirects(self) -> Any:
        answer = yield self.get("redirect")
        self.assertEqual(answer.status, 302)
        self.assertEqual(self.header(answer, "location"), ["/answers/text"])
        self.assertEqual(answer.body, b"")
        self.assertIsNone(self.header(answer, "content-type"))
        answer = yield self.get("moved")
        self.assertEqual(
            (answer.status, self.header(answer, "location")), (301, ["https://example.com/"])
        )

    @defer.inlineCallbacks
    def test_headSendsGETsHeadersWithoutBody(self) -> Any:
        get = yield self.get("csv")
        head = yield self.get("csv", method="HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        for name in ("content-type", "content-disposition", "content-length"):
            self.assertEqual(self.header(head, name), self.header(get, name), name)
        self.assertEqual(self.header(head, "content-length"), [str(len(get.body))])

    @defer.inlineCallbacks
    def test_tuplesWithHeaders(self) -> Any:
        answer = yield self.get("tuple3")
        self.assertEqual((answer.status, answer.json()), (202, {"queued": 1}))
        self.assertEqual(self.header(answer, "retry-after"), ["5"])
        self.assertEqual(self.header(answer, "content-type"), ["application/json"])
        answer = yield self.get("tuple3-text")
        self.assertEqual(answer.json(), "json string")
        self.assertEqual(self.header(answer, "x-kind"), ["str"])

    @defer.inlineCallbacks
    def test_asyncResponse(self) -> Any:
        answer = yield self.get("async")
        self.assertEqual((answer.status, answer.body), (202, b"later"))

    @defer.inlineCallbacks
    def test_mistakesAreLogged500s(self) -> Any:
        for kind in (
            "tuple4",
            "tuple-not-int",
            "bad-framing",
            "bad-connection",
            "bad-value",
            "bad-newline",
            "bad-status",
            "bad-status-1xx",
            "bad-json",
        ):
            answer = yield self.get(kind)
            self.assertEqual(answer.status, 500, kind)
            self.assertEqual(answer.json(), {"error": "internal error"}, kind)
            self.assertEqual(self.header(answer, "content-type"), ["application/json"], kind)
            self.assertIsNone(self.header(answer, "set-cookie"), kind)
            self.assertIsNone(self.header(answer, "x-evil"), kind)
        # The server keeps serving.
        answer = yield self.get("text")
        self.assertEqual(answer.status, 200)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_uploadedFiles(self) -> Any:
        body = (
            b"--B\r\n"
            b'Content-Disposition: form-data; name="doc"; filename="report.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
            b"\x89PNG\x00\xff\r\n"
            b"--B\r\n"
            b'Content-Disposition: form-data; name="note"\r\n\r\n'
            b"hello\r\n"
            b"--B--\r\n"
        )
        answer = yield self.server.request(
            "POST",
            "/upload",
            data=body,
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(
            answer.json(),
            {
                "doc": {
                    "filename": "report.bin",
                    "type": "application/octet-stream",
                    "size": 6,
                    "head": "89504e47",
                },
                "args": ["doc", "note"],
            },
        )
        answer = yield self.server.request(
            "POST",
            "/upload",
            data=b"not multipart at all",
            headers={"Content-Type": "multipart/form-data; boundary=B"},
        )
        # POST and PUT alike: the web layer parses forms, and says what is
        # wrong (twisted.web's channel refused a POST's before, saying only
        # "bad request").
        self.assertEqual(
            (answer.status, answer.json()), (400, {"error": "malformed multipart body"})
        )
