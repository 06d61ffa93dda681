"""
Files and static document trees: a plugin's L{FileResponse} and the
C{[paths] documents} trees, in memory through the server's own site and
channel, and over TCP against a real twistd.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.http import datetimeToString

from pluginserver import files
from pluginserver.config import ConfigError, load_settings
from pluginserver.testing import Answer
from tests.helpers import ServerCase
from tests.process import Server, sleep

FILES = """
import os

from pluginserver import FileResponse, Plugin


class Files(Plugin):
    def handle(self, request):
        args = request.args
        return FileResponse(
            os.path.join(self.params["root"], request.subpath),
            content_type=args.get("type"),
            download_name=args.get("as"),
            headers={"Cache-Control": args["cache"]} if "cache" in args else None,
        )
"""
"""Serves the files of its C{root} parameter; the query chooses the rest."""

LATER = """
import asyncio
import os

from pluginserver import FileResponse, Plugin


class Later(Plugin):
    async def handle(self, request):
        await asyncio.sleep(0)
        return FileResponse(os.path.join(self.params["root"], request.subpath))
"""
"""The same, from an asynchronous handler."""

DATA = bytes(range(256)) * 1000
"""256,000 bytes: several of the producer's 64 KiB reads."""

STRONG_ETAG = re.compile(r'^"[0-9a-f]+-[0-9a-f]+"$')
HTML_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def write(path: str, content: bytes | str) -> str:
    """
    Write a file (and the directories it needs); give back its path.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def header(answer: Answer, name: str) -> str | None:
    """
    The one value of a header of C{answer}, or L{None}.
    """
    values = answer.headers.getRawHeaders(name)
    if values is None:
        return None
    assert len(values) == 1, (name, values)
    value: str = values[0]
    return value


class LogCapture:
    """
    The log events emitted while a test runs, formatted.
    """

    def __init__(self, case: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, containing: str) -> list[str]:
        return [formatEvent(e) for e in self.events if containing in (formatEvent(e) or "")]


# ---------------------------------------------------------------------------
# FileResponse, in memory


class FileResponseTests(ServerCase):
    """
    A plugin's L{FileResponse}: headers, validators, conditional and range
    requests, HEAD, downloads and the files that cannot be served.
    """

    def setUp(self) -> None:
        super().setUp()
        self.root = os.path.abspath(self.mktemp())
        self.data = write(os.path.join(self.root, "data.bin"), DATA)
        self.dir.write("files", FILES)
        self.dir.write("later", LATER)
        self.log = LogCapture(self)

    def serveFiles(self, **settings: Any) -> defer.Deferred[Any]:
        params = {"files": {"root": self.root}, "later": {"root": self.root}}
        return self.serve(params=params, **settings)

    def get(self, path: str, method: str = "GET", **headers: str) -> defer.Deferred[Answer]:
        return self.server.request(
            method, path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )

    @defer.inlineCallbacks
    def test_wholeFile(self) -> Any:
        """
        A file is sent whole with its length, type, validators and the
        headers every answer carries.
        """
        yield self.serveFiles()
        for route in ("files", "later"):
            answer = yield self.get(f"/{route}/data.bin")
            self.assertEqual(answer.status, 200, route)
            self.assertEqual(answer.body, DATA, route)
            self.assertEqual(header(answer, "content-length"), str(len(DATA)))
            self.assertEqual(header(answer, "content-type"), "application/octet-stream")
            self.assertEqual(header(answer, "accept-ranges"), "bytes")
            self.assertRegex(header(answer, "etag") or "", STRONG_ETAG)
            modified = datetimeToString(int(os.stat(self.data).st_mtime)).decode()
            self.assertEqual(header(answer, "last-modified"), modified)
            self.assertEqual(header(answer, "x-content-type-options"), "nosniff")
            self.assertEqual(header(answer, "cache-control"), "no-store")
            self.assertIsNone(header(answer, "transfer-encoding"))

    @defer.inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD sends the headers GET sends, the length included, and no body.
        """
        yield self.serveFiles()
        got = yield self.get("/files/data.bin")
        head = yield self.get("/files/data.bin", "HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        for name in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
            self.assertEqual(header(head, name), header(got, name), name)
        ranged = yield self.get("/files/data.bin", "HEAD", Range="bytes=0-9")
        self.assertEqual(ranged.status, 200, "Range means nothing to HEAD")
        self.assertEqual(header(ranged, "content-length"), str(len(DATA)))

    @defer.inlineCallbacks
    def test_contentTypes(self) -> Any:
        """
        Types come from the mimetypes module; text is UTF-8; HTML carries
        the HTML security headers; a compressed file is what it is; an
        unknown one is octet-stream; the plugin's own type wins.
        """
        for name in ("notes.txt", "page.html", "logs.tar.gz", "blob.zz9", "style.css"):
            write(os.path.join(self.root, name), "x")
        yield self.serveFiles()
        expected = {
            "notes.txt": "text/plain; charset=utf-8",
            "page.html": "text/html; charset=utf-8",
            "logs.tar.gz": "application/gzip",
            "blob.zz9": "application/octet-stream",
            "style.css": "text/css; charset=utf-8",
        }
        for name, kind in expected.items():
            answer = yield self.get(f"/files/{name}")
            self.assertEqual(header(answer, "content-type"), kind, name)
            self.assertIsNone(header(answer, "content-encoding"), name)
            for html, value in HTML_HEADERS.items():
                wanted = value if name == "page.html" else None
                self.assertEqual(header(answer, html), wanted, f"{name}: {html}")
        answer = yield self.get("/files/notes.txt?type=text/csv")
        self.assertEqual(header(answer, "content-type"), "text/csv")

    @defer.inlineCallbacks
    def test_ifNoneMatch(self) -> Any:
        """
        A request naming the current tag, alone, in a list, weak or as C{*},
        gets 304 with no body and no content type; another tag gets 200.
        """
        yield self.serveFiles()
        first = yield self.get("/files/data.bin")
        etag = header(first, "etag")
        assert etag is not None
        for condition in (etag, f'"other", {etag}', f"W/{etag}", "*"):
            answer = yield self.get("/files/data.bin", If_None_Match=condition)
            self.assertEqual(answer.status, 304, condition)
            self.assertEqual(answer.body, b"")
            self.assertEqual(header(answer, "etag"), etag)
            self.assertIsNone(header(answer, "content-type"))
            self.assertIsNone(header(answer, "content-length"))
            self.assertEqual(header(answer, "cache-control"), "no-store")
        answer = yield self.get("/files/data.bin", If_None_Match='"other"')
        self.assertEqual((answer.status, answer.body), (200, DATA))

    @defer.inlineCallbacks
    def test_ifModifiedSince(self) -> Any:
        """
        C{If-Modified-Since} at or after the file's time is 304, before it
        200; it is not looked at when C{If-None-Match} is sent.
        """
        yield self.serveFiles()
        first = yield self.get("/files/data.bin")
        modified = header(first, "last-modified")
        assert modified is not None
        answer = yield self.get("/files/data.bin", If_Modified_Since=modified)
        self.assertEqual((answer.status, answer.body), (304, b""))
        later = datetimeToString(int(os.stat(self.data).st_mtime) + 3600).decode()
        answer = yield self.get("/files/data.bin", If_Modified_Since=later)
        self.assertEqual(answer.status, 304)
        earlier = datetimeToString(int(os.stat(self.data).st_mtime) - 3600).decode()
        answer = yield self.get("/files/data.bin", If_Modified_Since=earlier)
        self.assertEqual((answer.status, answer.body), (200, DATA))
        answer = yield self.get("/files/data.bin", If_Modified_Since="yesterday")
        self.assertEqual(answer.status, 200)
        answer = yield self.get(
            "/files/data.bin", If_Modified_Since=modified, If_None_Match='"other"'
        )
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_range(self) -> Any:
        """
        One range is answered 206 with C{Content-Range}: first-last,
        first- and the suffix form; a last byte past the end is clamped.
        """
        yield self.serveFiles()
        size = len(DATA)
        cases = {
            "bytes=10-19": (10, 20),
            "bytes=100000-": (100000, size),
            "bytes=-5": (size - 5, size),
            f"bytes=-{size * 2}": (0, size),
            f"bytes={size - 3}-{size * 9}": (size - 3, size),
            "bytes=70000-200000": (70000, 200001),
        }
        for value, (start, end) in cases.items():
            answer = yield self.get("/files/data.bin", Range=value)
            self.assertEqual(answer.status, 206, value)
            self.assertEqual(answer.body, DATA[start:end], value)
            self.assertEqual(header(answer, "content-length"), str(end - start), value)
            self.assertEqual(
                header(answer, "content-range"), f"bytes {start}-{end - 1}/{size}", value
            )

    @defer.inlineCallbacks
    def test_rangeNotSatisfiable(self) -> Any:
        """
        A range beyond the end is 416 JSON, with the size in
        C{Content-Range}.
        """
        yield self.serveFiles()
        for value in (f"bytes={len(DATA)}-", "bytes=999999999-", "bytes=-0"):
            answer = yield self.get("/files/data.bin", Range=value)
            self.assertEqual(answer.status, 416, value)
            self.assertEqual(answer.json(), {"error": "range not satisfiable"})
            self.assertEqual(header(answer, "content-type"), "application/json")
            self.assertEqual(header(answer, "content-range"), f"bytes */{len(DATA)}")

    @defer.inlineCallbacks
    def test_rangesIgnored(self) -> Any:
        """
        Several ranges, another unit or a malformed range get the whole
        file (RFC 9110 lets a server ignore Range; multipart answers are
        not made).
        """
        yield self.serveFiles()
        for value in ("bytes=0-1,5-6", "bytes=0-1, 0-1, 0-1", "items=0-1", "bytes=5-1", "bytes=x"):
            answer = yield self.get("/files/data.bin", Range=value)
            self.assertEqual((answer.status, answer.body), (200, DATA), value)
            self.assertIsNone(header(answer, "content-range"), value)

    @defer.inlineCallbacks
    def test_ifRange(self) -> Any:
        """
        C{If-Range} with the current tag or date lets the range apply; an
        old one gets the whole file.
        """
        yield self.serveFiles()
        first = yield self.get("/files/data.bin")
        etag, modified = header(first, "etag"), header(first, "last-modified")
        assert etag is not None and modified is not None
        for condition, status in ((etag, 206), (modified, 206), ('"old"', 200), (f"W/{etag}", 200)):
            answer = yield self.get("/files/data.bin", Range="bytes=0-9", If_Range=condition)
            self.assertEqual(answer.status, status, condition)

    @defer.inlineCallbacks
    def test_downloadName(self) -> Any:
        """
        C{download_name} makes the file an attachment (RFC 6266): plain
        ASCII in C{filename}, the real name in C{filename*}; never a path.
        """
        yield self.serveFiles()
        cases = {
            "report.csv": 'attachment; filename="report.csv"',
            "résumé 2.pdf": (
                "attachment; filename=\"r_sum_ 2.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%202.pdf"
            ),
            "../../etc/passwd": 'attachment; filename="passwd"',
            'say "hi".txt': (
                "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt"
            ),
        }
        for name, value in cases.items():
            answer = yield self.server.request(
                "GET", "/files/data.bin", data={"as": name}, headers={}
            )
            self.assertEqual(answer.status, 200, name)
            self.assertEqual(header(answer, "content-disposition"), value, name)

    @defer.inlineCallbacks
    def test_pluginCacheControl(self) -> Any:
        """
        A plugin's C{Cache-Control} replaces C{no-store}; C{nosniff} stays.
        """
        yield self.serveFiles()
        answer = yield self.get("/files/data.bin?cache=max-age=60")
        self.assertEqual(header(answer, "cache-control"), "max-age=60")
        self.assertEqual(header(answer, "x-content-type-options"), "nosniff")

    @defer.inlineCallbacks
    def test_unservable(self) -> Any:
        """
        A missing file, a directory or a FIFO (which must not hang the
        reactor) is a 404 JSON, and the log says which file and why.
        """
        os.makedirs(os.path.join(self.root, "adir"))
        os.mkfifo(os.path.join(self.root, "fifo"))
        yield self.serveFiles()
        for name in ("missing.txt", "adir", "fifo", "data.bin/inside"):
            answer = yield self.get(f"/files/{name}")
            self.assertEqual(answer.status, 404, name)
            self.assertEqual(answer.json(), {"error": "not found"}, name)
            self.assertEqual(header(answer, "content-type"), "application/json")
            logged = self.log.lines("cannot be served")
            self.assertTrue(any(name in line for line in logged), (name, logged))

    @defer.inlineCallbacks
    def test_emptyFile(self) -> Any:
        """
        An empty file is a 200 with no body; any range of it is 416.
        """
        write(os.path.join(self.root, "empty"), b"")
        yield self.serveFiles()
        answer = yield self.get("/files/empty")
        self.assertEqual((answer.status, answer.body), (200, b""))
        self.assertEqual(header(answer, "content-length"), "0")
        answer = yield self.get("/files/empty", Range="bytes=0-")
        self.assertEqual(answer.status, 416)

    @defer.inlineCallbacks
    def test_shrunkBeforeTheFirstByte(self) -> Any:
        """
        A file that shrinks between the plugin's answer and the first read
        is a logged 500 JSON: nothing of the file was sent yet.
        """
        yield self.serveFiles()
        pending = self.get("/files/data.bin")
        # The body is read when the transport asks for it, in a later turn
        # of the reactor: the file is emptied before that.
        os.truncate(self.data, 0)
        answer = yield pending
        self.assertEqual(answer.status, 500)
        self.assertEqual(answer.json(), {"error": "internal error"})
        self.assertEqual(header(answer, "content-type"), "application/json")
        self.assertIsNone(header(answer, "etag"))
        self.assertTrue(self.log.lines("could not be sent whole"))

    @defer.inlineCallbacks
    def test_badDownloadName(self) -> Any:
        """
        A C{download_name} that is not a string is the plugin's mistake: a
        logged 500.
        """
        self.dir.write(
            "bad",
            "from pluginserver import FileResponse, Plugin\n"
            "class Bad(Plugin):\n"
            "    def handle(self, request):\n"
            f"        return FileResponse({self.data!r}, download_name=3)\n",
        )
        yield self.serveFiles()
        answer = yield self.get("/bad")
        self.assertEqual((answer.status, answer.json()), (500, {"error": "internal error"}))
        self.assertTrue(self.log.lines("download_name 3"))

    @defer.inlineCallbacks
    def test_countedInMetrics(self) -> Any:
        """
        File answers are counted like any other, by route and status.
        """
        yield self.serveFiles()
        yield self.get("/files/data.bin")
        yield self.get("/files/data.bin", Range="bytes=0-0")
        yield self.get("/files/missing")
        text = self.server.metrics.exposition().decode()
        for status in ("200", "206", "404"):
            self.assertIn(
                f'pluginserver_requests_total{{route="files",status="{status}"}} 1.0', text
            )


class FakeChannel:
    persistent = True
    unregistered = 0

    def unregisterProducer(self) -> None:
        self.unregistered += 1


class FakeRequest:
    """
    Just what L{files.FileProducer} uses of a request, recording it.
    """

    method = b"GET"

    def __init__(self) -> None:
        from twisted.web.http_headers import Headers

        self.channel = FakeChannel()
        self.responseHeaders = Headers()
        self.written: list[bytes] = []
        self.producer: Any = None
        self.finished = False
        self.startedWriting = False
        self.code = 200
        self.finish_d: defer.Deferred[None] = defer.Deferred()

    def notifyFinish(self) -> defer.Deferred[None]:
        return self.finish_d

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def write(self, data: bytes) -> None:
        self.startedWriting = True
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True


class FileProducerTests(SynchronousTestCase):
    """
    twisted.web.static's range producer, made safe for files that change
    while they are sent.
    """

    def producer(self, content: bytes, offset: int, size: int) -> tuple[Any, FakeRequest]:
        path = write(os.path.join(self.mktemp(), "f"), content)
        request = FakeRequest()
        stream = open(path, "rb")  # noqa: SIM115 - the producer closes it
        producer = files.FileProducer(request, stream, offset, size)
        producer.path = path
        producer.start()
        return producer, request

    def test_sendsTheRangeInChunks(self) -> None:
        producer, request = self.producer(DATA, 1000, 200000)
        while request.producer is not None:
            producer.resumeProducing()
        self.assertEqual(b"".join(request.written), DATA[1000:201000])
        self.assertEqual(max(map(len, request.written)), producer.bufferSize)
        self.assertTrue(request.finished)
        self.assertTrue(producer.fileObject.closed)

    def test_shortFileCutsTheConnection(self) -> None:
        """
        A file that ends before its promised length, after bytes were sent:
        the request ends and the channel will close the connection (the
        client sees fewer bytes than C{Content-Length}, and no other
        answer's), with an error in the log.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        producer, request = self.producer(DATA, 0, len(DATA) + 10)
        while request.producer is not None:
            producer.resumeProducing()
        self.assertEqual(b"".join(request.written), DATA)
        self.assertTrue(request.finished)
        self.assertFalse(request.channel.persistent)
        self.assertEqual(request.code, 200)
        self.assertTrue(producer.fileObject.closed)
        self.assertTrue(any("could not be sent whole" in formatEvent(e) for e in events))

    def test_failedReadBeforeTheFirstByteIs500(self) -> None:
        producer, request = self.producer(DATA, 0, len(DATA))

        def broken(size: int) -> bytes:
            raise OSError(5, "Input/output error")

        producer.fileObject.read = broken
        producer.resumeProducing()
        self.assertEqual(request.code, 500)
        self.assertEqual(b"".join(request.written), b'{"error":"internal error"}')
        self.assertTrue(request.finished)
        self.assertIsNone(request.producer)

    def test_clientGoneStopsIt(self) -> None:
        """
        A client that goes away stops the producer and closes the file, even
        over a transport that does not stop producers itself.
        """
        producer, request = self.producer(DATA, 0, len(DATA))
        producer.resumeProducing()
        request.finish_d.errback(ConnectionError("gone"))
        self.assertTrue(producer.fileObject.closed)
        self.assertEqual(request.channel.unregistered, 1)
        producer.resumeProducing()  # nothing more happens
        self.assertEqual(len(request.written), 1)


class HelperTests(SynchronousTestCase):
    """
    The pieces: range parsing, tags, types and download names.
    """

    def test_byteRange(self) -> None:
        cases: dict[bytes, tuple[int, int] | None] = {
            b"bytes=0-0": (0, 1),
            b"bytes=0-": (0, 100),
            b"bytes=-1": (99, 1),
            b"bytes=-100": (0, 100),
            b"bytes=-200": (0, 100),
            b"bytes=99-": (99, 1),
            b"bytes=100-": files.UNSATISFIABLE,
            b"bytes=-0": files.UNSATISFIABLE,
            b"Bytes = 5-9": (5, 5),
            b"bytes=5-9,": (5, 5),
            b"bytes=9-5": None,
            b"bytes=-": None,
            b"bytes=a-b": None,
            b"bytes=1-2,3-4": None,
            b"bytes=+1-2": None,
            b"lines=1-2": None,
            b"bytes=" + b"9" * 5000 + b"-": None,
        }
        for value, expected in cases.items():
            self.assertEqual(files.byte_range(value, 100), expected, value[:40])
        self.assertEqual(files.byte_range(b"bytes=-5", 0), files.UNSATISFIABLE)

    def test_guessType(self) -> None:
        self.assertEqual(files.guess_type("a.json"), b"application/json")
        self.assertEqual(files.guess_type("a.svg"), b"image/svg+xml; charset=utf-8")
        self.assertEqual(files.guess_type("a.md"), b"text/markdown; charset=utf-8")
        self.assertEqual(files.guess_type("a.gz"), b"application/gzip")
        self.assertEqual(files.guess_type("noext"), b"application/octet-stream")

    def test_contentDisposition(self) -> None:
        self.assertEqual(
            files.content_disposition("a\r\nSet-Cookie: x.txt"),
            b'attachment; filename="aSet-Cookie: x.txt"',
        )
        self.assertEqual(files.content_disposition("/"), b'attachment; filename="download"')
        self.assertEqual(
            files.content_disposition("100%.txt"),
            b"attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt",
        )


# ---------------------------------------------------------------------------
# [paths] documents, in the configuration


class DocumentsConfigTests(SynchronousTestCase):
    """
    C{[paths] documents}: the old server's forms, relative to the config
    file, checked at load.
    """

    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        for name in ("plugins", "www", "site/manual", "a:b"):
            os.makedirs(os.path.join(self.base, name))

    def load(self, documents: str) -> Any:
        path = os.path.join(self.base, "ps.ini")
        with open(path, "w") as f:
            f.write(f"[paths]\nplugins = plugins\ndocuments = {documents}\n")
        return load_settings(path, environ={})

    def error(self, documents: str) -> ConfigError:
        with self.assertRaises(ConfigError) as raised:
            self.load(documents)
        self.assertEqual((raised.exception.section, raised.exception.key), ("paths", "documents"))
        self.assertIn("ps.ini: [paths] documents:", str(raised.exception))
        return raised.exception

    def test_default(self) -> None:
        path = os.path.join(self.base, "ps.ini")
        with open(path, "w") as f:
            f.write("[paths]\nplugins = plugins\n")
        self.assertEqual(load_settings(path, environ={}).documents, ())

    def test_routeAndDirectory(self) -> None:
        self.assertEqual(
            self.load("html:site/manual").documents,
            (("html", os.path.join(self.base, "site", "manual")),),
        )

    def test_directoryAlone(self) -> None:
        """
        A directory alone is served at its basename, as the old server did.
        """
        self.assertEqual(self.load("www").documents, (("www", os.path.join(self.base, "www")),))
        self.assertEqual(
            self.load(f"{self.base}/site/manual/").documents,
            (("manual", os.path.join(self.base, "site", "manual")),),
        )

    def test_several(self) -> None:
        self.assertEqual(
            self.load("list:www html:site/manual").documents,
            (
                ("www", os.path.join(self.base, "www")),
                ("html", os.path.join(self.base, "site", "manual")),
            ),
        )

    def test_colonInADirectory(self) -> None:
        """
        The colon separates a route only when what comes before it is a
        route name, so a directory may hold one.
        """
        self.assertEqual(
            self.load(f"odd:{self.base}/a:b").documents,
            (("odd", os.path.join(self.base, "a:b")),),
        )
        # Alone, its basename is no route name: the message says what to do.
        self.assertIn("write ROUTE:DIR", str(self.error(f"{self.base}/a:b")))

    def test_missingDirectory(self) -> None:
        error = self.error("html:nowhere")
        self.assertIn(os.path.join(self.base, "nowhere") + " does not exist", str(error))
        with open(os.path.join(self.base, "file"), "w"):
            pass
        self.assertIn("is not a directory", str(self.error("file")))

    def test_badRoutes(self) -> None:
        self.assertIn("not a valid route name", str(self.error("we+b:www")))
        self.assertIn("reserved", str(self.error("plugins:www")))
        self.assertIn("reserved", str(self.error("list:reload:www")))
        self.assertIn("given twice", str(self.error("list:www www")))
        self.assertIn("no directory", str(self.error("html:")))


# ---------------------------------------------------------------------------
# Documents trees, in memory


class DocumentTreeTests(ServerCase):
    """
    A C{[paths] documents} tree: files, index pages, no listings, nothing
    outside the tree, markdown, and the same gate as any route.
    """

    def setUp(self) -> None:
        super().setUp()
        base = os.path.abspath(self.mktemp())
        self.tree = os.path.join(base, "tree")
        self.outside = os.path.join(base, "outside")
        write(os.path.join(self.tree, "index.html"), "<h1>home</h1>")
        write(os.path.join(self.tree, "notes.txt"), "notes\n")
        write(os.path.join(self.tree, "sub", "index.html"), "<h1>sub</h1>")
        write(os.path.join(self.tree, "bare", "file.txt"), "in a directory without index\n")
        write(os.path.join(self.tree, ".secret"), "hidden")
        write(os.path.join(self.tree, "readme.md"), "# The Title\n\nSome *text*.\n")
        write(os.path.join(self.outside, "secret.txt"), "outside the tree")
        write(os.path.join(self.outside, "other.html"), "outside the tree")
        os.symlink(os.path.join(self.outside, "secret.txt"), os.path.join(self.tree, "out.txt"))
        os.symlink(self.outside, os.path.join(self.tree, "outdir"))
        os.symlink("notes.txt", os.path.join(self.tree, "in.txt"))
        os.symlink(".secret", os.path.join(self.tree, "dot.txt"))
        os.makedirs(os.path.join(self.tree, "trap"))
        os.symlink(
            os.path.join(self.outside, "other.html"), os.path.join(self.tree, "trap", "index.html")
        )
        self.log = LogCapture(self)

    def serveTree(self, **settings: Any) -> defer.Deferred[Any]:
        settings.setdefault("documents", (("docs", self.tree),))
        return self.serve(**settings)

    def get(self, path: str, method: str = "GET", **headers: str) -> defer.Deferred[Answer]:
        return self.server.request(
            method, path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )

    @defer.inlineCallbacks
    def test_files(self) -> Any:
        """
        A file of the tree is served as a plugin's FileResponse is, and a
        public tree may be cached and revalidated (no-cache).
        """
        yield self.serveTree()
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual((answer.status, answer.body), (200, b"notes\n"))
        self.assertEqual(header(answer, "content-type"), "text/plain; charset=utf-8")
        self.assertEqual(header(answer, "cache-control"), "no-cache")
        self.assertEqual(header(answer, "x-content-type-options"), "nosniff")
        self.assertRegex(header(answer, "etag") or "", STRONG_ETAG)
        again = yield self.get("/docs/notes.txt", If_None_Match=header(answer, "etag") or "")
        self.assertEqual(again.status, 304)
        ranged = yield self.get("/docs/notes.txt", Range="bytes=1-2")
        self.assertEqual((ranged.status, ranged.body), (206, b"ot"))
        head = yield self.get("/docs/notes.txt", "HEAD")
        self.assertEqual((head.status, head.body, header(head, "content-length")), (200, b"", "6"))

    @defer.inlineCallbacks
    def test_indexPages(self) -> Any:
        """
        A directory answers its index.html, with the HTML headers; asked
        for without its slash, it redirects to the spelling with one.
        """
        yield self.serveTree()
        for path, body in (("/docs/", b"<h1>home</h1>"), ("/docs/sub/", b"<h1>sub</h1>")):
            answer = yield self.get(path)
            self.assertEqual((answer.status, answer.body), (200, body), path)
            self.assertEqual(header(answer, "content-type"), "text/html; charset=utf-8")
            for name, value in HTML_HEADERS.items():
                self.assertEqual(header(answer, name), value, name)
        for path, location in (
            ("/docs", "/docs/"),
            ("/docs/sub", "/docs/sub/"),
            ("/docs/sub?apikey=k", "/docs/sub/"),
            ("/%64ocs/s%75b", "/docs/sub/"),
        ):
            answer = yield self.get(path)
            self.assertEqual(answer.status, 302, path)
            self.assertEqual(header(answer, "location"), location, path)
            self.assertEqual(answer.body, b"")
            self.assertIsNone(header(answer, "content-type"))

    @defer.inlineCallbacks
    def test_noListing(self) -> Any:
        """
        A directory without index.html is a 404, never a listing; a file
        is no directory; dot files are not served.
        """
        yield self.serveTree()
        for path in (
            "/docs/bare/",
            "/docs/notes.txt/",
            "/docs/nothere",
            "/docs/.secret",
            "/docs/dot.txt",
        ):
            answer = yield self.get(path)
            self.assertEqual((answer.status, answer.json()), (404, {"error": "not found"}), path)
        answer = yield self.get("/docs/bare/file.txt")
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_directoryReplacedByAFile(self) -> Any:
        """
        A tree whose directory became a file serves nothing, that file
        included.
        """
        single = write(os.path.join(self.mktemp(), "single.txt"), "a file")
        yield self.serveTree(documents=(("docs", single),))
        for path in ("/docs/", "/docs", "/docs/single.txt"):
            answer = yield self.get(path)
            self.assertEqual(answer.status, 404, path)

    @defer.inlineCallbacks
    def test_traversal(self) -> Any:
        """
        No spelling of a path leads out of the tree: dot segments, encoded
        or not, encoded slashes, backslashes and NUL are 404.
        """
        yield self.serveTree()
        targets = [
            b"/docs/../outside/secret.txt",
            b"/docs/..%2f..%2fetc/passwd",
            b"/docs/%2e%2e/outside/secret.txt",
            b"/docs/%2E%2E%2Foutside%2Fsecret.txt",
            b"/docs/sub/../../outside/secret.txt",
            b"/docs/..\\outside\\secret.txt",
            b"/docs/%5c..%5coutside",
            b"/docs/notes.txt%00.html",
            b"/docs//etc/passwd",
            b"/docs/./notes.txt",
        ]
        for target in targets:
            answer = yield self.server.send(
                b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
            )
            self.assertEqual(answer.status, 404, target)
            self.assertEqual(answer.json(), {"error": "not found"}, target)

    @defer.inlineCallbacks
    def test_symlinks(self) -> Any:
        """
        A symlink that stays in the tree is followed; one that leads out
        (a file, a directory, an index page) is a 404, and logged.
        """
        yield self.serveTree()
        answer = yield self.get("/docs/in.txt")
        self.assertEqual((answer.status, answer.body), (200, b"notes\n"))
        for path in ("/docs/out.txt", "/docs/outdir/secret.txt", "/docs/outdir/", "/docs/trap/"):
            answer = yield self.get(path)
            self.assertEqual((answer.status, answer.json()), (404, {"error": "not found"}), path)
            self.assertNotIn(b"outside the tree", answer.body)
        logged = self.log.lines("outside the documents tree /docs")
        # Once a minute for each place outside: outdir/secret.txt is where
        # out.txt leads, so it is not logged again.
        self.assertEqual(len(logged), 3, logged)
        self.assertTrue(any("127.0.0.1 /docs/out.txt" in line for line in logged), logged)

    @defer.inlineCallbacks
    def test_methods(self) -> Any:
        yield self.serveTree()
        answer = yield self.get("/docs/notes.txt", "POST")
        self.assertEqual(answer.status, 405)
        self.assertEqual(header(answer, "allow"), "GET, HEAD")

    @defer.inlineCallbacks
    def test_markdownRendered(self) -> Any:
        """
        A .md file is rendered to an HTML page, titled by its first
        heading, in a thread; its own weak tag revalidates it.
        """
        if files.markdown_module() is None:
            raise SkipTest("the markdown package is not installed (pip install .[markdown])")
        yield self.serveTree()
        answer = yield self.get("/docs/readme.md")
        self.assertEqual(answer.status, 200)
        self.assertEqual(header(answer, "content-type"), "text/html; charset=utf-8")
        for name, value in HTML_HEADERS.items():
            self.assertEqual(header(answer, name), value, name)
        page = answer.body.decode("utf-8")
        self.assertIn("<title>The Title</title>", page)
        self.assertIn("<h1>The Title</h1>", page)
        self.assertIn("<em>text</em>", page)
        self.assertEqual(header(answer, "content-length"), str(len(answer.body)))
        etag = header(answer, "etag") or ""
        self.assertTrue(etag.startswith("W/"), etag)
        again = yield self.get("/docs/readme.md", If_None_Match=etag)
        self.assertEqual((again.status, again.body), (304, b""))
        head = yield self.get("/docs/readme.md", "HEAD")
        self.assertEqual(header(head, "content-length"), str(len(answer.body)))
        self.assertEqual(head.body, b"")

    @defer.inlineCallbacks
    def test_markdownRawWithoutThePackage(self) -> Any:
        """
        Without the markdown package, or past the size limit, a .md file
        is sent as it is.
        """
        self.patch(files, "markdown_module", lambda: None)
        yield self.serveTree()
        answer = yield self.get("/docs/readme.md")
        self.assertEqual(answer.body, b"# The Title\n\nSome *text*.\n")
        self.assertEqual(header(answer, "content-type"), "text/markdown; charset=utf-8")

    @defer.inlineCallbacks
    def test_markdownTooLargeIsRaw(self) -> Any:
        self.patch(files, "MARKDOWN_LIMIT", 10)
        yield self.serveTree()
        answer = yield self.get("/docs/readme.md")
        self.assertEqual(header(answer, "content-type"), "text/markdown; charset=utf-8")

    @defer.inlineCallbacks
    def test_globalKey(self) -> Any:
        """
        With a global key a tree needs it (and is never stored by
        caches); C{auth=none} opens it; C{auth=plugin} gives it its own.
        """
        yield self.serveTree(apikey="s3cret")
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual((answer.status, answer.json()), (401, {"error": "unauthorized"}))
        self.assertEqual(header(answer, "www-authenticate"), 'Bearer realm="pluginserver"')
        answer = yield self.get("/docs/sub", Authorization="Bearer wrong")
        self.assertEqual(answer.status, 401, "no redirect before the key")
        answer = yield self.get("/docs/notes.txt", Authorization="Bearer s3cret")
        self.assertEqual((answer.status, answer.body), (200, b"notes\n"))
        self.assertEqual(header(answer, "cache-control"), "no-store")
        answer = yield self.get("/docs/notes.txt", X_API_Key="s3cret")
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_authNone(self) -> Any:
        yield self.serveTree(apikey="s3cret", params={"docs": {"auth": "none"}})
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual(answer.status, 200)
        self.assertEqual(header(answer, "cache-control"), "no-cache")

    @defer.inlineCallbacks
    def test_authPlugin(self) -> Any:
        yield self.serveTree(apikey="s3cret", params={"docs": {"auth": "plugin", "apikey": "own"}})
        answer = yield self.get("/docs/notes.txt", Authorization="Bearer s3cret")
        self.assertEqual(answer.status, 401)
        answer = yield self.get("/docs/notes.txt", Authorization="Bearer own")
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_allowLists(self) -> Any:
        """
        The Host and address allow-lists apply to trees as to any route.
        """
        yield self.serveTree(allowed_hosts=("example.com",))
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual(answer.status, 400)
        answer = yield self.get("/docs/notes.txt", Host="example.com")
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_addressAllowList(self) -> Any:
        yield self.serveTree(access_allow=(ipaddress.ip_network("10.0.0.0/8"),))
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual((answer.status, answer.json()), (403, {"error": "forbidden"}))

    @defer.inlineCallbacks
    def test_cors(self) -> Any:
        """
        CORS applies: an allowed origin gets its headers and a preflight
        naming GET and HEAD; any other origin is refused.
        """
        yield self.serveTree(cors_enabled=True, cors_origins=("https://a.example",))
        answer = yield self.get("/docs/notes.txt", Origin="https://a.example")
        self.assertEqual(answer.status, 200)
        self.assertEqual(header(answer, "access-control-allow-origin"), "https://a.example")
        answer = yield self.get("/docs/notes.txt", Origin="https://evil.example")
        self.assertEqual(answer.status, 403)
        answer = yield self.get(
            "/docs/notes.txt",
            "OPTIONS",
            Origin="https://a.example",
            Access_Control_Request_Method="GET",
        )
        self.assertEqual(answer.status, 204)
        self.assertEqual(header(answer, "access-control-allow-methods"), "GET, HEAD")

    @defer.inlineCallbacks
    def test_pluginCannotTakeATreesRoute(self) -> Any:
        """
        A plugin file named after a tree, or a plugin class naming its
        route, is refused with a logged error; the tree serves.
        """
        self.dir.write("docs", "from pluginserver import Plugin\nclass D(Plugin):\n    pass\n")
        self.dir.write(
            "other",
            "from pluginserver import Plugin\nclass O(Plugin):\n    name = 'docs'\n",
        )
        yield self.serveTree()
        self.assertNotIn("docs", self.registry.plugins)
        self.assertIn("documents tree", self.server.report.failed["other"])
        self.assertTrue(self.log.lines("is a documents tree"))
        answer = yield self.get("/docs/notes.txt")
        self.assertEqual(answer.status, 200)

    @defer.inlineCallbacks
    def test_metricsRoute(self) -> Any:
        """
        A tree's requests are counted under its route.
        """
        yield self.serveTree()
        yield self.get("/docs/notes.txt")
        text = self.server.metrics.exposition().decode()
        self.assertIn('pluginserver_requests_total{route="docs",status="200"} 1.0', text)


# ---------------------------------------------------------------------------
# Over TCP, against twistd


def fetch(
    port: int, target: bytes, headers: Iterable[bytes] = (), method: bytes = b"GET"
) -> tuple[int, dict[str, str], bytes]:
    """
    One request over a new connection, as the bytes are given (no client
    library cleans the target up); the answer read to the end.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        s.sendall(b"\r\n".join([*lines, *headers]) + b"\r\n\r\n")
        received = []
        while chunk := s.recv(65536):
            received.append(chunk)
    head, _, body = b"".join(received).partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    answer = {}
    for field in fields:
        name, _, value = field.partition(":")
        answer[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), answer, body


class ProcessTests(TestCase):
    """
    Files and documents trees served by a real twistd over TCP.
    """

    timeout = 60

    def site(self, tree: str) -> None:
        write(os.path.join(tree, "index.html"), "<h1>home</h1>")
        write(os.path.join(tree, "data.bin"), DATA)
        write(os.path.join(tree, "empty", "placeholder.txt"), "x")
        write(os.path.join(tree, "guide.md"), "# Guide\n\nRead *this*.\n")
        outside = os.path.join(os.path.dirname(tree), "outside")
        write(os.path.join(outside, "secret.txt"), "secret")
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(tree, "leak.txt"))

    @defer.inlineCallbacks
    def test_directoryAloneTree(self) -> Any:
        """
        C{documents = DIR} (the old server's form): served at DIR's
        basename; index page, redirect, no listing, Range, 304, markdown,
        every traversal attempt 404 and the symlink escape logged; the
        access log and /metrics count the answers with their bytes.
        """
        server = Server(
            self,
            server="access_log = access.log\nmetrics_public = bool:true\n",
            paths="documents = www\n",
        )
        self.site(os.path.join(server.dir, "www"))
        yield server.start()
        port = server.port
        status, headers, body = fetch(port, b"/www/")
        self.assertEqual((status, body), (200, b"<h1>home</h1>"))
        self.assertEqual(
            headers["content-security-policy"], HTML_HEADERS["content-security-policy"]
        )
        status, headers, _ = fetch(port, b"/www")
        self.assertEqual((status, headers["location"]), (302, "/www/"))
        status, _, body = fetch(port, b"/www/empty/")
        self.assertEqual((status, body), (404, b'{"error":"not found"}'))
        status, headers, body = fetch(port, b"/www/data.bin", [b"Range: bytes=1000-1999"])
        self.assertEqual((status, body), (206, DATA[1000:2000]))
        self.assertEqual(headers["content-range"], f"bytes 1000-1999/{len(DATA)}")
        status, headers, body = fetch(port, b"/www/data.bin")
        self.assertEqual((status, body), (200, DATA))
        etag = headers["etag"].encode()
        status, headers, body = fetch(port, b"/www/data.bin", [b"If-None-Match: " + etag])
        self.assertEqual((status, body), (304, b""))
        if files.markdown_module() is not None:
            status, headers, body = fetch(port, b"/www/guide.md")
            self.assertEqual(status, 200)
            self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
            self.assertIn(b"<em>this</em>", body)
        for target in (
            b"/www/..%2f..%2fetc/passwd",
            b"/www/%2e%2e/",
            b"/www/%2e%2e/outside/secret.txt",
            b"/www/..\\..\\etc\\passwd",
            b"/www/%5c..%5cetc",
            b"/www/index.html%00",
            b"/www/../ps.ini",
            b"/www/leak.txt",
        ):
            status, _, body = fetch(port, target)
            self.assertEqual((status, body), (404, b'{"error":"not found"}'), target)
        log = server.log()
        self.assertIn("leak.txt: it leads to", log)
        self.assertIn("outside the documents tree /www", log)
        self.assertNotIn("Traceback", log)
        # Counted with the bytes sent: the access log is flushed each second.
        line = f'"GET /www/data.bin HTTP/1.1" 200 {len(DATA)} '
        deadline = time.monotonic() + 10
        while True:
            with open(os.path.join(server.dir, "access.log")) as f:
                logged = f.read()
            if line in logged or time.monotonic() > deadline:
                break
            yield sleep(0.2)
        self.assertIn(line, logged)
        self.assertIn('"GET /www/data.bin HTTP/1.1" 206 1000 ', logged)
        _, _, metrics = fetch(port, b"/metrics")
        self.assertIn(b'pluginserver_requests_total{route="www",status="206"} 1.0', metrics)
        yield server.stop()

    @defer.inlineCallbacks
    def test_routeAndDirectoryTreeWithKey(self) -> Any:
        """
        C{documents = ROUTE:DIR} behind the global key: 401 without it, 200
        with it; C{[plugin_parms] ROUTE = auth=none} (after a reload)
        opens it.
        """
        server = Server(
            self,
            ini="[auth]\napikey = s3cret\n",
            paths="documents = html:pages\n",
        )
        self.site(os.path.join(server.dir, "pages"))
        key = {"Authorization": "Bearer s3cret"}
        yield server.start(headers=key)
        status, _, body = fetch(server.port, b"/html/data.bin")
        self.assertEqual((status, body), (401, b'{"error":"unauthorized"}'))
        status, headers, body = fetch(
            server.port, b"/html/data.bin", [b"Authorization: Bearer s3cret"]
        )
        self.assertEqual((status, body), (200, DATA))
        self.assertEqual(headers["cache-control"], "no-store")
        server.write_config("[auth]\napikey = s3cret\n[plugin_parms]\nhtml = auth=none\n")
        status, _ = yield server.get("/reload/all", headers=key)
        self.assertEqual(status, 200)
        status, headers, body = fetch(server.port, b"/html/data.bin")
        self.assertEqual((status, body), (200, DATA))
        self.assertEqual(headers["cache-control"], "no-cache")
        yield server.stop()

    @defer.inlineCallbacks
    def test_fileResponseCutWhenTheFileShrinks(self) -> Any:
        """
        A plugin's FileResponse over TCP: HEAD and Range; and a file that
        shrinks while a slow client reads it ends that answer short (the
        connection closes), is logged, and the server serves on.
        """
        server = Server(self)
        root = os.path.join(server.dir, "files")
        big = os.path.join(root, "big.bin")
        write(big, b"")
        os.truncate(big, 64 * 1024 * 1024)  # sparse: no disk used
        write(os.path.join(root, "data.bin"), DATA)
        server.write_plugin("files", FILES)
        server.write_config(f"[plugin_parms]\nfiles = root={root}\n")
        yield server.start()
        status, headers, body = fetch(server.port, b"/files/data.bin", method=b"HEAD")
        self.assertEqual((status, body, headers["content-length"]), (200, b"", str(len(DATA))))
        status, _, body = fetch(server.port, b"/files/data.bin", [b"Range: bytes=-10"])
        self.assertEqual((status, body), (206, DATA[-10:]))

        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            s.settimeout(10)
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = s.recv(65536)
            while len(received) < 256 * 1024:
                received += s.recv(65536)
            os.truncate(big, 0)
            while chunk := s.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertIn(b"Content-Length: %d" % (64 * 1024 * 1024,), head)
        self.assertLess(len(body), 64 * 1024 * 1024)
        self.assertGreaterEqual(len(body), 256 * 1024 - len(head))
        status, _, body = fetch(server.port, b"/files/data.bin")
        self.assertEqual((status, body), (200, DATA))
        self.assertIn("could not be sent whole", server.log())
        self.assertNotIn("Traceback", server.log())
        yield server.stop()
