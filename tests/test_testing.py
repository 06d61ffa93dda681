"""
pluginserver.testing: plugins served in memory through the server's own
registry, resource, site and channel, answers read off the wire as they are
written, however late.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.trial.unittest import TestCase

from pluginserver.testing import Answer, Server, read_answers, serve
from tests.helpers import HELLO, PluginDir, plugin_source

ECHO = """
from pluginserver import Plugin

class Echo(Plugin):
    methods = ("GET", "HEAD", "POST", "PUT")

    def handle(self, request):
        return {"method": request.method, "args": request.args, "json": request.json,
                "host": request.headers.get("host"), "body": request.body.decode("latin-1"),
                "tags": request.headers.get("x-tag")}
"""

LATER = """
from twisted.internet import reactor
from twisted.internet.task import deferLater
from pluginserver import Plugin

class Later(Plugin):
    async def handle(self, request):
        await deferLater(reactor, float(request.args.get("delay", "0")))
        return {"waited": True}
"""

# Its handle runs in the thread pool and waits there for the test's word.
BLOCKING = """
import threading
from pluginserver import Plugin

GO = threading.Event()

class Blocking(Plugin):
    blocking = True

    def handle(self, request):
        GO.wait(10)
        return {"thread": threading.current_thread().name}
"""

FOREVER = """
from twisted.internet import defer
from pluginserver import Plugin

CANCELLED = []

class Forever(Plugin):
    def handle(self, request):
        return defer.Deferred(lambda d: CANCELLED.append(True))
"""


def raw(method: str, target: str, *headers: str, version: str = "HTTP/1.1") -> bytes:
    """
    A request's bytes, C{Host: localhost} first unless told otherwise.
    """
    lines = [f"{method} {target} {version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ServeTests(TestCase):
    """
    What L{serve} serves, and with which settings.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)

    @defer.inlineCallbacks
    def test_aPluginFile(self) -> Any:
        path = self.dir.write("hello", HELLO)
        server: Server = yield serve(self, path)
        answer: Answer = yield server.get("/hello?name=you")
        self.assertEqual((answer.status, answer.json()), (200, {"hello": "you"}))
        # The headers of every answer, from the server's own site.
        self.assertEqual(answer.headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(answer.headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(answer.headers.getRawHeaders("content-length"), [str(len(answer.body))])
        # A copy is served, not the file itself.
        self.assertNotEqual(server.directory, self.dir.path)
        self.assertEqual(sorted(os.listdir(server.directory)), ["hello.py"])

    @defer.inlineCallbacks
    def test_helpersAreCopiedWithTheirPlugin(self) -> Any:
        self.dir.write("_text", "def shout(text):\n    return text.upper()\n")
        path = self.dir.write(
            "shout", plugin_source("shout(request.args['t'])", extra="from ._text import shout\n")
        )
        self.dir.write("other", plugin_source("'other'"))
        server = yield serve(self, path)
        self.assertEqual(sorted(os.listdir(server.directory)), ["_text.py", "shout.py"])
        answer = yield server.get("/shout?t=hi")
        self.assertEqual(answer.json(), "HI")

    @defer.inlineCallbacks
    def test_aDirectoryIsServedInPlace(self) -> Any:
        self.dir.write("p", plugin_source("'v1'"))
        server = yield serve(self, self.dir.path)
        self.assertEqual(server.directory, os.path.abspath(self.dir.path))
        self.dir.write("p", plugin_source("'v2'"))
        answer = yield server.get("/reload/p")
        self.assertEqual(answer.json(), {"reloaded": "p", "success": True, "generation": 2})
        answer = yield server.get("/p")
        self.assertEqual(answer.json(), "v2")

    @defer.inlineCallbacks
    def test_settingsAndParams(self) -> Any:
        self.dir.write(
            "conf",
            plugin_source(
                "{'params': dict(self.params), 'section': dict(self.config.sections['conf'])}"
            ),
        )
        server = yield serve(
            self,
            self.dir.path,
            params={"conf": {"auth": "plugin", "apikey": "own", "n": 3}},
            sections={"conf": {"x": "y"}},
        )
        answer = yield server.get("/conf")
        self.assertEqual(answer.status, 401)
        answer = yield server.get("/conf", headers={"X-API-Key": "own"})
        self.assertEqual(
            answer.json(),
            {"params": {"auth": "plugin", "apikey": "own", "n": 3}, "section": {"x": "y"}},
        )

    @defer.inlineCallbacks
    def test_aConfigFileIsReadAgainOnReloadAll(self) -> Any:
        self.dir.write("conf", plugin_source("self.params['word']"))
        ini = os.path.abspath(self.mktemp())
        plugins = os.path.abspath(self.dir.path)
        with open(ini, "w") as f:
            f.write(f"[paths]\nplugins = {plugins}\n[plugin_parms]\nconf = word=one\n")
        # No plugin given: the config's plugins directory is served.
        server = yield serve(self, config=ini)
        self.assertEqual(server.directory, plugins)
        answer = yield server.get("/conf")
        self.assertEqual(answer.json(), "one")
        with open(ini, "w") as f:
            f.write(f"[paths]\nplugins = {plugins}\n[plugin_parms]\nconf = word=two\n")
        answer = yield server.get("/reload/all")
        self.assertEqual(answer.status, 200)
        answer = yield server.get("/conf")
        self.assertEqual(answer.json(), "two")
        with open(ini, "w") as f:
            f.write("[server]\nmax_body = int:lots\n")
        answer = yield server.get("/reload/all")
        self.assertEqual(answer.status, 500)
        self.assertIn("max_body", answer.json()["failed"]["config"])
        answer = yield server.get("/conf")
        self.assertEqual(answer.json(), "two")

    @defer.inlineCallbacks
    def test_aLoadFailureFailsTheTest(self) -> Any:
        self.dir.write("good", plugin_source("'good'"))
        self.dir.write("bad", "x = (\n")
        failure = yield self.assertFailure(serve(self, self.dir.path), self.failureException)
        self.assertIn("bad: SyntaxError: '(' was never closed (bad.py, line 1)", str(failure))

    @defer.inlineCallbacks
    def test_loadFailuresAllowed(self) -> Any:
        self.dir.write("good", plugin_source("'good'"))
        self.dir.write("bad", "x = (\n")
        server = yield serve(self, self.dir.path, allow_load_errors=True)
        self.assertEqual(list(server.report.failed), ["bad"])
        self.assertEqual(server.report.loaded, ["good"])
        answer = yield server.get("/good")
        self.assertEqual(answer.json(), "good")

    def test_notAPluginFile(self) -> None:
        self.assertRaises(ValueError, serve, self, os.path.join(self.dir.path, "nope.py"))


class AnswerTests(TestCase):
    """
    Answers as a client reads them off the wire: whenever they are written,
    however they are framed.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        for name, source in [
            ("echo", ECHO),
            ("later", LATER),
            ("blocking", BLOCKING),
            ("forever", FOREVER),
            ("nothing", plugin_source("(204, None)")),
        ]:
            self.dir.write(name, source)
        self.server: Server = yield serve(self, self.dir.path, request_timeout=5.0)

    def module(self, name: str) -> Any:
        """
        The module of the plugin serving C{name}.
        """
        loaded = self.server.registry.get(name)
        assert loaded is not None
        return sys.modules[loaded.module]

    def test_anAnswerGivenAtOnceIsThereAtOnce(self) -> None:
        answer = self.successResultOf(self.server.get("/echo"))
        self.assertEqual(answer.json()["method"], "GET")

    @defer.inlineCallbacks
    def test_anAsynchronousAnswerArrivesByItself(self) -> Any:
        d = self.server.get("/later?delay=0.05")
        self.assertNoResult(d)
        answer = yield d
        self.assertEqual((answer.status, answer.json()), (200, {"waited": True}))

    @defer.inlineCallbacks
    def test_anAnswerFromAThreadArrivesByItself(self) -> Any:
        d = self.server.get("/blocking")
        self.assertNoResult(d)
        self.module("blocking").GO.set()
        answer = yield d
        self.assertEqual(answer.status, 200)
        self.assertNotEqual(answer.json()["thread"], threading.current_thread().name)

    @defer.inlineCallbacks
    def test_theRequestIsCountedBeforeItsAnswerArrives(self) -> Any:
        """
        An answer is delivered once the server has finished with its
        request (logged and counted it), as a real client would see it.
        """
        for path in ("/echo", "/later"):
            yield self.server.get(path)
            metrics = yield self.server.get("/metrics")
            route = path[1:]
            self.assertIn(
                f'pluginserver_requests_total{{route="{route}",status="200"}} 1.0',
                metrics.body.decode(),
            )

    @defer.inlineCallbacks
    def test_head(self) -> Any:
        answer = yield self.server.request("HEAD", "/echo")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.body, b"")
        self.assertEqual(
            answer.headers.getRawHeaders("content-length"),
            [
                str(
                    len(
                        b'{"method":"HEAD","args":{},"json":null,"host":"localhost","body":"","tags":null}'
                    )
                )
            ],
        )

    @defer.inlineCallbacks
    def test_noContent(self) -> Any:
        answer = yield self.server.post("/nothing")
        self.assertEqual((answer.status, answer.body), (204, b""))

    @defer.inlineCallbacks
    def test_aChunkedAnswer(self) -> Any:
        answer = yield self.server.get("/reload/all")
        self.assertEqual(answer.headers.getRawHeaders("transfer-encoding"), ["chunked"])
        self.assertEqual(answer.json()["loaded_plugins"], self.server.report.loaded)

    @defer.inlineCallbacks
    def test_anAnswerThatEndsWhenTheServerCloses(self) -> Any:
        # HTTP/1.0 has no chunks: a body of unknown length ends with the
        # connection.
        answer = yield self.server.request("GET", "/reload/all", version="HTTP/1.0")
        self.assertIsNone(answer.headers.getRawHeaders("transfer-encoding"))
        self.assertIsNone(answer.headers.getRawHeaders("content-length"))
        self.assertEqual(answer.json()["status"], "All plugins reloaded")

    @defer.inlineCallbacks
    def test_anInterimAnswerIsSkipped(self) -> Any:
        answer = yield self.server.post("/echo", data=b"body", headers={"Expect": "100-continue"})
        self.assertEqual((answer.status, answer.json()["body"]), (200, "body"))

    @defer.inlineCallbacks
    def test_timeoutsRunOnTheClock(self) -> Any:
        d = self.server.get("/forever")
        self.server.clock.advance(4.9)
        self.assertNoResult(d)
        self.server.clock.advance(0.1)
        answer = yield d
        self.assertEqual((answer.status, answer.json()), (504, {"error": "timeout"}))
        self.assertEqual(self.module("forever").CANCELLED, [True])

    @defer.inlineCallbacks
    def test_anIncompleteHeadTimesOutOnTheClock(self) -> Any:
        d = self.server.send(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n")
        self.assertNoResult(d)
        self.server.clock.advance(self.server.settings.header_timeout)
        answer = yield d
        self.assertEqual(answer.status, 408)

    @defer.inlineCallbacks
    def test_closedWithoutAnAnswer(self) -> Any:
        d = self.server.send(b"")
        self.server.clock.advance(self.server.settings.idle_timeout)
        yield self.assertFailure(d, ConnectionLost)

    def test_closeCancelsWhatIsRunning(self) -> None:
        d = self.server.get("/forever")
        self.server.close()
        self.assertEqual(self.module("forever").CANCELLED, [True])
        self.assertNoResult(d)


class RequestTests(TestCase):
    """
    The requests L{Server.request} writes.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = PluginDir(self)
        self.dir.write("echo", ECHO)
        self.server: Server = yield serve(self, self.dir.path)

    @defer.inlineCallbacks
    def test_form(self) -> Any:
        answer = yield self.server.post("/echo?q=1", data={"a": "1", "b": ["2", "3"]})
        self.assertEqual(answer.json()["args"], {"q": "1", "a": "1", "b": "3"})
        self.assertEqual(answer.json()["body"], "a=1&b=2&b=3")

    @defer.inlineCallbacks
    def test_json(self) -> Any:
        answer = yield self.server.request("PUT", "/echo", json={"a": [1, None]})
        self.assertEqual(answer.json()["json"], {"a": [1, None]})

    @defer.inlineCallbacks
    def test_bytesWithTheirOwnContentType(self) -> Any:
        answer = yield self.server.post(
            "/echo", data=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )
        self.assertEqual(answer.json()["json"], {"a": 1})

    def test_dataOrJSON(self) -> None:
        self.assertRaises(ValueError, self.server.post, "/echo", data=b"x", json={})

    def test_headers(self) -> None:
        answer = self.successResultOf(
            self.server.get("/echo", headers={"X-Tag": ["a", "b"], "Host": "example.com"})
        )
        self.assertEqual((answer.json()["tags"], answer.json()["host"]), ("a, b", "example.com"))

    def test_aURLGivesTheHost(self) -> None:
        answer = self.successResultOf(self.server.get("http://example.com:8080/echo?x=1"))
        self.assertEqual(answer.json()["host"], "example.com:8080")
        self.assertEqual(answer.json()["args"], {"x": "1"})

    def test_theTargetIsPercentEncoded(self) -> None:
        answer = self.successResultOf(self.server.get("/echo?name=a b&city=Zürich"))
        self.assertEqual(answer.json()["args"], {"name": "a b", "city": "Zürich"})

    def test_rawBytes(self) -> None:
        answer = self.successResultOf(
            self.server.send(raw("GET", "/echo", "Host: a.example", "Host: b.example"))
        )
        self.assertEqual(
            (answer.status, answer.json()), (400, {"error": "more than one Host header"})
        )
        answer = self.successResultOf(self.server.send(raw("GET", "/echo")))
        self.assertEqual((answer.status, answer.json()), (400, {"error": "missing Host header"}))

    @defer.inlineCallbacks
    def test_aBodyOverTheLimitIsRefusedBeforeItIsSent(self) -> Any:
        server = yield serve(self, self.dir.path, max_body=10)
        answer = self.successResultOf(
            server.send(raw("POST", "/echo", "Host: localhost", "Content-Length: 11"))
        )
        self.assertEqual(answer.status, 413)


def answer(status: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """
    An answer's bytes: C{b"200 OK"}, its header fields, then C{body}.
    """
    return b"HTTP/1.1 " + status + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


OK = answer(b"200 OK", b"Content-Length: 2", body=b"ok")
CHUNKED = answer(
    b"200 OK",
    b"Transfer-Encoding: chunked",
    body=b"5\r\nHello\r\n8;name=value\r\n, chunky\r\n0\r\nX-Trailer: yes\r\n\r\n",
)


class ReadAnswersTests(TestCase):
    """
    L{read_answers} reads the answers in the bytes a server wrote, and
    leaves over what is not yet, or not at all, an answer.
    """

    def test_contentLength(self) -> None:
        reading = read_answers(
            answer(b"201 Created", b"Content-Length: 4", b"X-Two: a", b"x-two: b", body=b"made")
        )
        (made,) = reading.answers
        self.assertEqual((made.version, made.status, made.body), (b"HTTP/1.1", 201, b"made"))
        self.assertIsNone(made.chunks)
        self.assertEqual(made.headers.getRawHeaders(b"x-two"), [b"a", b"b"])
        self.assertEqual((made.header(b"X-TWO"), made.header("x-two")), (b"a, b", "a, b"))
        self.assertIsNone(made.header("missing"))
        self.assertEqual((reading.leftover, reading.error), (b"", None))

    def test_chunkedWithTrailers(self) -> None:
        """
        A chunked body is de-chunked (its chunks kept too), with its chunk
        extensions and trailer section read past.
        """
        (chunked, after) = read_answers(CHUNKED + OK).answers
        self.assertEqual(chunked.body, b"Hello, chunky")
        self.assertEqual(chunked.chunks, (b"Hello", b", chunky"))
        self.assertIsNone(chunked.headers.getRawHeaders(b"x-trailer"))
        self.assertEqual(after.body, b"ok")

    def test_head(self) -> None:
        """
        An answer to HEAD has no body, whatever its length says.
        """
        head = answer(b"200 OK", b"Content-Length: 10")
        reading = read_answers(head + OK, [b"HEAD", b"GET"])
        self.assertEqual([(a.status, a.body) for a in reading.answers], [(200, b""), (200, b"ok")])
        self.assertEqual(reading.leftover, b"")
        # Taken for a GET's, its body would be the next answer's start.
        self.assertEqual(read_answers(head + OK).answers[0].body, OK[:10])

    def test_headGuessed(self) -> None:
        """
        With the methods unknown, an answer with a length is one to HEAD
        when nothing, or the next answer, follows its head.
        """
        head = answer(b"200 OK", b"Content-Length: 10")
        for data in (head, head + OK):
            reading = read_answers(data, None)
            self.assertEqual(reading.answers[0].body, b"", data)
            self.assertEqual(reading.leftover, b"")
        reading = read_answers(head + b"0123456789", None)
        self.assertEqual(reading.answers[0].body, b"0123456789")

    def test_noContent(self) -> None:
        """
        Nor have 204 and 304 a body: the next answer follows the head.
        """
        empty = answer(b"204 No Content", b"Content-Length: 0")
        cached = answer(b"304 Not Modified", b"Content-Length: 10")
        reading = read_answers(empty + cached + OK)
        statuses = [(a.status, a.body) for a in reading.answers]
        self.assertEqual(statuses, [(204, b""), (304, b""), (200, b"ok")])

    def test_closeDelimited(self) -> None:
        """
        A body framed by neither chunks nor a length ends with the
        connection.
        """
        data = answer(b"200 OK", b"Connection: close", body=b"to the end")
        reading = read_answers(data)
        self.assertEqual((reading.answers, reading.leftover), ((), data))
        (closed,) = read_answers(data, closed=True).answers
        self.assertEqual(closed.body, b"to the end")

    def test_incomplete(self) -> None:
        """
        An answer cut anywhere is not read, and is left over, without an
        error; what came before it is read.
        """
        for whole in (OK, CHUNKED):
            for cut in range(1, len(whole)):
                reading = read_answers(OK + whole[:cut], closed=True)
                self.assertEqual(len(reading.answers), 1, whole[:cut])
                self.assertEqual((reading.leftover, reading.error), (whole[:cut], None))

    def test_pipelined(self) -> None:
        second = answer(b"404 Not Found", b"Content-Length: 4", body=b"none")
        reading = read_answers(OK + second)
        self.assertEqual(
            [(a.status, a.body) for a in reading.answers], [(200, b"ok"), (404, b"none")]
        )
        self.assertEqual(reading.final, reading.answers)

    def test_interim(self) -> None:
        """
        A C{100 Continue} is an answer, interim: it answers no request (the
        HEAD after it is the second request's).
        """
        interim = b"HTTP/1.1 100 Continue\r\n\r\n"
        head = answer(b"200 OK", b"Content-Length: 10")
        reading = read_answers(interim + OK + head, [b"POST", b"HEAD"])
        self.assertEqual([a.status for a in reading.answers], [100, 200, 200])
        self.assertEqual([a.status for a in reading.interim], [100])
        self.assertEqual([a.body for a in reading.final], [b"ok", b""])

    def test_switchingProtocols(self) -> None:
        """
        A C{101} is a final answer, after which the connection is no longer
        HTTP's: what follows is left over, and no error.
        """
        switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"
        reading = read_answers(switched + b"\x00\x00\x12")
        self.assertEqual([a.status for a in reading.final], [101])
        self.assertEqual((reading.leftover, reading.error), (b"\x00\x00\x12", None))

    def test_malformed(self) -> None:
        """
        Bytes that are no answer stop the reading, with an error: the
        answers before them are read, the rest is left over.
        """
        for bad in (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"<html>\r\n",
            answer(b"200 OK", b"No colon", b"Content-Length: 0"),
            answer(b"200 OK", b"Space : before", b"Content-Length: 0"),
            answer(b"200 OK", b"Content-Length: 2", b"Content-Length: 3", body=b"abc"),
            answer(b"200 OK", b"Content-Length: -1"),
            answer(b"200 OK", b"Content-Length: 2", b"Transfer-Encoding: chunked", body=b"ok"),
            answer(b"200 OK", b"Transfer-Encoding: chunked", body=b"0x2\r\nok\r\n0\r\n\r\n"),
            answer(b"200 OK", b"Transfer-Encoding: chunked", body=b"2\r\nokay\r\n0\r\n\r\n"),
            answer(b"200 OK", b"Transfer-Encoding: chunked", body=b"0\r\nbad trailer\r\n\r\n"),
        ):
            reading = read_answers(OK + bad + OK, closed=True)
            self.assertEqual([a.body for a in reading.answers], [b"ok"], bad)
            self.assertEqual(reading.leftover, bad + OK)
            self.assertIsNotNone(reading.error, bad)
