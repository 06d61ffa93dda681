# -*- test-case-name: tests.test_openapi -*-
"""
C{/openapi.json}: the description of every route served now, valid by
openapi-spec-validator, following reloads, built once per change.
"""

from __future__ import annotations

import json
import os
from typing import Any

from openapi_spec_validator import validate
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from pluginserver.openapi import OpenAPI, encode
from tests.helpers import HELLO, ServerCase, plugin_source

KEY = "openapi-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}

COUNT = '''
from pluginserver import Plugin

class Count(Plugin):
    """
    Count to n.

    Answers the numbers from 1 to C{n}, loudly if asked.
    """

    methods = ("GET", "POST")
    args = {
        "n": {"type": "integer", "required": True, "description": "how far"},
        "loud": {"type": "boolean", "default": False},
        "step": {"type": "number", "default": 1.5},
        "label": {"type": "string"},
    }

    def handle(self, request):
        return list(range(1, request.args["n"] + 1))
'''

HANDLE_DOC = '''
from pluginserver import Plugin

class Quiet(Plugin):
    methods = ("DELETE",)

    def handle(self, request):
        """Forget everything.

        Really everything."""
        return {}
'''

ODD = 'Quotes " back\\slash \x00\x1f\x7f \u2028 sep </script> \U0001f600 é'
"""A docstring line with every kind of character JSON must escape.  (A lone
surrogate cannot be in a docstring: Python 3.11 refuses to make the class.)"""


class DocumentCase(ServerCase):
    @defer.inlineCallbacks
    def document(self, headers: dict[str, str] | None = None) -> Any:
        """
        GET /openapi.json: the status, the raw body, and the parsed
        document, checked to be valid OpenAPI.
        """
        answer = yield self.server.request(
            "GET", "/openapi.json", headers=AUTH if headers is None else headers
        )
        self.assertEqual(answer.status, 200, answer.body)
        self.assertEqual(answer.headers.getRawHeaders("content-type"), ["application/json"])
        document = json.loads(answer.body)
        validate(document)
        return answer.body, document


class OpenAPITests(DocumentCase):
    @defer.inlineCallbacks
    def test_pluginsAndServerRoutes(self) -> Any:
        """
        Every plugin (both of its paths) with its methods, summary,
        description and declared arguments; the documents trees; the
        server's own routes; all valid OpenAPI 3.1.
        """
        self.dir.write("count", COUNT)
        self.dir.write("quiet", HANDLE_DOC)
        self.dir.write("hello", HELLO)
        html = self.mktemp()
        os.makedirs(html)
        yield self.serve(apikey=KEY, documents=(("html", os.path.abspath(html)),))
        _, document = yield self.document()
        self.assertEqual(document["openapi"], "3.1.0")
        paths = document["paths"]
        for path in (
            "/count",
            "/count/{subpath}",
            "/hello",
            "/quiet",
            "/html/",
            "/html/{path}",
            "/plugins",
            "/reload/all",
            "/reload/{name}",
            "/metrics",
            "/health",
            "/openapi.json",
        ):
            self.assertIn(path, paths)
        self.assertEqual(set(paths["/count"]), {"get", "head", "post"})
        self.assertEqual(set(paths["/hello"]), {"get", "head", "post"})
        self.assertEqual(set(paths["/quiet"]), {"delete"})
        self.assertEqual(set(paths["/reload/{name}"]), {"get", "post"})
        get = paths["/count"]["get"]
        self.assertEqual(get["summary"], "Count to n.")
        self.assertEqual(
            get["description"],
            "Count to n.\n\nAnswers the numbers from 1 to C{n}, loudly if asked.",
        )
        self.assertEqual(
            get["parameters"],
            [
                {
                    "name": "n",
                    "in": "query",
                    "required": True,
                    "description": "how far",
                    "schema": {"type": "integer"},
                },
                {
                    "name": "loud",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                },
                {
                    "name": "step",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "default": 1.5},
                },
                {"name": "label", "in": "query", "required": False, "schema": {"type": "string"}},
            ],
        )
        # POST: n may come in the query or the body, so neither requires it
        # alone; the body's schema does.
        post = paths["/count"]["post"]
        self.assertEqual([p["required"] for p in post["parameters"]], [False] * 4)
        body = post["requestBody"]["content"]["application/json"]["schema"]
        self.assertEqual(body["required"], ["n"])
        self.assertEqual(body["properties"]["n"], {"type": "integer", "description": "how far"})
        sub = paths["/count/{subpath}"]["get"]
        self.assertEqual(sub["parameters"][0]["name"], "subpath")
        self.assertEqual(sub["parameters"][0]["in"], "path")
        self.assertEqual(paths["/quiet"]["delete"]["summary"], "Forget everything.")
        self.assertEqual(paths["/hello"]["get"]["summary"], "The hello plugin")
        ids = [operation["operationId"] for item in paths.values() for operation in item.values()]
        self.assertEqual(len(ids), len(set(ids)))

    @defer.inlineCallbacks
    def test_securityFromAuthMode(self) -> Any:
        """
        The bearer and X-API-Key schemes; each operation requires either,
        none, or a client certificate, as its auth mode says.
        """
        for name in ("open", "own", "keyed"):
            self.dir.write(name, plugin_source("1", cls=name.title()))
        yield self.serve(
            apikey=KEY,
            params={"open": {"auth": "none"}, "own": {"auth": "plugin", "apikey": "mine"}},
        )
        _, document = yield self.document()
        schemes = document["components"]["securitySchemes"]
        self.assertEqual(schemes["bearer"]["type"], "http")
        self.assertEqual(schemes["bearer"]["scheme"], "bearer")
        self.assertEqual(
            {k: schemes["apiKey"][k] for k in ("type", "in", "name")},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        )
        paths = document["paths"]
        key = [{"bearer": []}, {"apiKey": []}]
        self.assertEqual(paths["/open"]["get"]["security"], [])
        self.assertEqual(paths["/own"]["get"]["security"], key)
        self.assertEqual(paths["/keyed"]["get"]["security"], key)
        self.assertEqual(paths["/plugins"]["get"]["security"], key)
        self.assertEqual(paths["/health"]["get"]["security"], [])

    @defer.inlineCallbacks
    def test_noKeyConfigured(self) -> Any:
        """
        Without a global key, global-mode routes need nothing, and neither
        does the document.
        """
        self.dir.write("hello", HELLO)
        yield self.serve()
        _, document = yield self.document(headers={})
        self.assertEqual(document["paths"]["/hello"]["get"]["security"], [])
        self.assertEqual(document["paths"]["/openapi.json"]["get"]["security"], [])

    @defer.inlineCallbacks
    def test_keyRuleOfPlugins(self) -> Any:
        """
        The key rule of C{/plugins}: none or a wrong key is 401; HEAD
        answers the length GET would send, and no body.
        """
        yield self.serve(apikey=KEY)
        for headers in ({}, {"X-API-Key": "wrong"}):
            status, _, body = yield self.call("GET", "/openapi.json", headers=headers)
            self.assertEqual((status, body), (401, {"error": "unauthorized"}))
        raw, _ = yield self.document(headers={"X-API-Key": KEY})
        answer = yield self.server.request("HEAD", "/openapi.json", headers=AUTH)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"")
        self.assertEqual(answer.headers.getRawHeaders("content-length"), [str(len(raw))])

    @defer.inlineCallbacks
    def test_followsReloadsBuiltOncePerChange(self) -> Any:
        """
        A reload that adds a plugin shows it in the next answer; one that
        removes it takes it out; a reload that changes a docstring changes
        the summary.  Between changes, requests are answered from the same
        build.
        """
        self.dir.write("hello", HELLO)
        yield self.serve()
        openapi = self.server.resource.openapi
        first, document = yield self.document()
        builds = openapi.builds
        self.assertNotIn("/count", document["paths"])
        for _ in range(3):
            again, _ = yield self.document()
            self.assertEqual(again, first)
        self.assertEqual(openapi.builds, builds)  # no request rebuilt it
        self.assertIs(openapi.document(), openapi.document())

        self.dir.write("count", COUNT)
        status, _, body = yield self.call("GET", "/reload/all")
        self.assertEqual((status, body["added"]), (200, ["count"]))
        _, document = yield self.document()
        self.assertEqual(document["paths"]["/count"]["get"]["summary"], "Count to n.")
        self.assertEqual(openapi.builds, builds + 1)

        self.dir.write("count", COUNT.replace("Count to n.", "Count up to n."))
        yield self.call("GET", "/reload/count")
        _, document = yield self.document()
        self.assertEqual(document["paths"]["/count"]["get"]["summary"], "Count up to n.")
        yield self.document()
        self.assertEqual(openapi.builds, builds + 2)

        self.dir.remove("count")
        yield self.call("GET", "/reload/all")
        _, document = yield self.document()
        self.assertNotIn("/count", document["paths"])
        self.assertEqual(openapi.builds, builds + 3)

    @defer.inlineCallbacks
    def test_anyCharacterEscaped(self) -> Any:
        """
        A docstring with quotes, backslashes, control characters, a line
        separator and characters beyond ASCII is escaped:
        the body is ASCII JSON, valid, and reads back as written.
        """
        source = (
            "from pluginserver import Plugin\n\n"
            "class Odd(Plugin):\n"
            f"    {(ODD + chr(10) + chr(10) + 'More.')!r}\n"
            "    def handle(self, request):\n"
            "        return 1\n"
        )
        self.dir.write("odd", source)
        yield self.serve()
        raw, document = yield self.document()
        raw.decode("ascii")  # every other character escaped
        self.assertNotIn(b"\n", raw)
        operation = document["paths"]["/odd"]["get"]
        self.assertEqual(operation["summary"], ODD)
        self.assertEqual(operation["description"], ODD + "\n\nMore.")

    @defer.inlineCallbacks
    def test_malformedArgsRefusedAndLogged(self) -> Any:
        """
        A plugin whose C{args} is not a dict, or names an unknown type, is
        refused at load with a logged error naming it and the fault; on a
        reload the generation serving keeps serving, and the document keeps
        describing it.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.dir.write("count", COUNT)
        self.dir.write("bad", plugin_source("1", extra="") + "    args = 'n'\n")
        yield self.serve()
        self.assertIsNone(self.registry.get("bad"))
        errors = [e for e in events if e.get("plugin") == "bad" and "error" in e]
        self.assertEqual(
            [e["error"] for e in errors], ["args: args must be a dict of parameter specs, not str"]
        )
        self.dir.write("count", COUNT.replace('"type": "integer"', '"type": "int"'))
        status, _, body = yield self.call("GET", "/reload/count")
        self.assertEqual(status, 500)
        self.assertEqual(
            body["error"],
            "args: parameter 'n': unknown type 'int' (one of boolean, integer, number, string)",
        )
        last = [e for e in events if "error" in e][-1]  # the audit event follows
        self.assertIn("unknown type 'int'", last["error"])
        self.assertEqual(last["generation"], 1)  # the one that keeps serving
        status, _, body = yield self.call("GET", "/count?n=3")
        self.assertEqual((status, body), (200, [1, 2, 3]))
        _, document = yield self.document()
        self.assertNotIn("/bad", document["paths"])
        parameters = document["paths"]["/count"]["get"]["parameters"]
        self.assertEqual(parameters[0]["schema"], {"type": "integer"})

    @defer.inlineCallbacks
    def test_reservedName(self) -> Any:
        """
        No plugin may serve /openapi.json.
        """
        self.dir.write("thief", plugin_source("1", extra="") + "    name = 'openapi.json'\n")
        yield self.serve()
        self.assertIsNone(self.registry.get("openapi.json"))
        self.assertIn("thief", self.server.report.failed)
        _, document = yield self.document(headers={})
        self.assertEqual(document["paths"]["/openapi.json"]["get"]["summary"], "This document")


class EncodeTests(ServerCase):
    @defer.inlineCallbacks
    def test_unchangedSourceBuildsOnce(self) -> Any:
        """
        L{OpenAPI.document} builds on its first call and gives the same
        bytes after, as long as nothing changed.
        """
        self.dir.write("hello", HELLO)
        yield self.serve()
        openapi = OpenAPI(self.server)
        self.assertEqual(openapi.builds, 0)
        first = openapi.document()
        self.assertIs(openapi.document(), first)
        self.assertEqual(openapi.builds, 1)
        validate(json.loads(first))

    def test_encodeIsASCII(self) -> None:
        """
        L{encode} escapes everything beyond ASCII, lone surrogates included.
        """
        odd = ODD + chr(0xD800) + " lone"
        raw = encode({"s": odd})
        self.assertEqual(json.loads(raw), {"s": odd})
        raw.decode("ascii")


class DocstringTests(DocumentCase):
    @defer.inlineCallbacks
    def test_frameworkDocstringsNotUsed(self) -> Any:
        """
        A plugin's summary is its author's docstring: one inherited from
        the author's own base class counts, the plugin API's never does;
        an old server's plugin is described by its C{request_handler}.
        """
        self.dir.write(
            "_base",
            '''
            from pluginserver import Plugin

            class Documented(Plugin):
                """From the author's base."""
            ''',
        )
        self.dir.write(
            "child",
            """
            from ._base import Documented

            class Child(Documented):
                pass
            """,
        )
        self.dir.write(
            "old",
            '''
            from plugincore.baseplugin import BasePlugin

            class Old(BasePlugin):
                def request_handler(self, **data):
                    """Answer the old way."""
                    return 200, {"old": True}
            ''',
        )
        self.dir.write("bare", plugin_source("1", cls="Bare"))
        yield self.serve()
        _, document = yield self.document(headers={})
        paths = document["paths"]
        self.assertEqual(paths["/child"]["get"]["summary"], "From the author's base.")
        self.assertEqual(paths["/old"]["get"]["summary"], "Answer the old way.")
        self.assertEqual(paths["/bare"]["get"]["summary"], "The bare plugin")
