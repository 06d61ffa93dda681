# -*- test-case-name: tests.test_files -*-
"""
Files and static document trees, served by twisted.web's own machinery.

A plugin's L{FileResponse} and every file of a C{[paths] documents} tree
are answered here.  The body is sent by twisted.web.static's range producer
(L{static.SingleRangeStaticProducer}): registered on the request as a pull
producer, it reads one buffer (64 KiB) each time the transport has room, so
a file is never read whole into memory and a slow client never makes the
server buffer more than about one chunk.  Opening and C{fstat} happen on the
reactor thread (cheap system calls); nothing else blocks it.

What this adds to twisted.web.static.File, which does not fit as it is:

  - C{ETag} (strong, from the file's modification time in nanoseconds and
    its size) with C{If-None-Match}, and C{If-Modified-Since}, answered 304
    as RFC 9110 §13.2.2 orders them; C{If-Range}.
  - Single C{Range} requests: 206, or 416 JSON with C{Content-Range: bytes
    */size}.  A request for several ranges gets the whole file (200): RFC
    9110 lets a server ignore C{Range}, and multipart answers are the
    classic amplification attack (many overlapping ranges of one file).
  - MIME types from the L{mimetypes} module; C{text/*} is sent with
    C{charset=utf-8}; an unknown type is C{application/octet-stream}
    (static.File would say C{text/html}); a compressed file (C{.gz}) is
    sent as what it is (C{application/gzip}), never with a
    C{Content-Encoding} that would make a browser unpack a download.
  - A missing or unreadable file, a directory or anything but a regular
    file is a 404 JSON; files are opened non-blocking, so a FIFO cannot
    hang the reactor.
  - A file that shrinks or fails while it is sent: before the first byte
    the answer is a 500 JSON; after it the connection is closed, so the
    client sees a body shorter than its C{Content-Length} (never another
    answer's bytes); both are logged.  static.File's producer would
    loop forever on a file that shrank.

Documents trees (L{DocumentTree}) add, on top: a directory answers its
C{index.html} (a directory asked for without its trailing slash is
redirected, 302, to the spelling with one, so relative links in the page
work), never a listing; dot files are not served; a path that resolves
(through a symlink) outside the tree's directory is a 404 and is logged;
and a C{.md} file is rendered to HTML in a thread when the C{markdown}
package is installed (the C{[markdown]} extra), raw (C{text/markdown})
otherwise.

Caching: a plugin's file keeps the default C{Cache-Control: no-store}
unless the plugin sets its own.  A tree that needs no key says
C{no-cache}: browsers keep its files and revalidate them with the
C{ETag} (a 304 costs no body); a tree behind a key keeps C{no-store}, so
what a key protects is never written to a cache.
"""

from __future__ import annotations

import importlib
import mimetypes
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Sequence
from html import escape
from typing import IO, Any
from urllib.parse import quote

import attr
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString, stringToDatetime
from twisted.web.server import NOT_DONE_YET

from pluginserver.answers import (
    INTERNAL_ERROR,
    JSON,
    NO_BODY,
    BadResponse,
    HeaderPairs,
    empty,
    error,
    set_headers,
)
from pluginserver.plugin import FileResponse

with warnings.catch_warnings():
    # twisted.web.static calls a deprecated constructor of Twisted's own
    # when it is imported (Twisted 26); the server uses nothing deprecated,
    # and runs clean under -W error::DeprecationWarning.
    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.web import static

log = Logger()

MARKDOWN_LIMIT = 1024 * 1024
"""The largest C{.md} file rendered to HTML, in bytes; a larger one is sent
raw, as when the markdown package is not installed."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
"""Non-blocking: opening a FIFO would otherwise wait for a writer, holding
the reactor.  (A regular file ignores the flag.)"""

_ENCODED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}
"""What a compressed file is sent as: its own type, never a
C{Content-Encoding}."""

_CHARSET_TYPES = frozenset({"application/javascript", "application/xml", "image/svg+xml"})
"""Text types outside C{text/*} that are sent with C{charset=utf-8} too."""

RunInThread = Callable[..., "defer.Deferred[Any]"]
"""Runs a function with its arguments in a thread; fires with its result."""


class Unservable(Exception):  # noqa: N818 - named after what it reports
    """
    A file cannot be served: missing, unreadable, or not a regular file.
    The message says why, for the log; the client gets a 404.
    """


@attr.s(auto_attribs=True, frozen=True)
class OpenFile:
    """
    A file opened for an answer, with what C{fstat} said of it then: the
    validators and the length all describe the file that will be read.

    @ivar path: the file, as it was opened.
    @ivar file: the open file; whoever takes it closes it.
    @ivar info: its C{fstat}.
    """

    path: str
    file: IO[bytes]
    info: os.stat_result

    @property
    def size(self) -> int:
        return self.info.st_size

    @property
    def etag(self) -> bytes:
        """
        A strong validator: the modification time in nanoseconds and the
        size, in hex.  Any write changes the time, so equal tags mean equal
        bytes (which C{If-Range} needs: it takes strong tags only).
        """
        return b'"%x-%x"' % (self.info.st_mtime_ns, self.info.st_size)

    @property
    def modified(self) -> int:
        """
        The modification time in whole seconds, as C{Last-Modified} says it.
        """
        return int(self.info.st_mtime)


def open_file(path: str, flags: int = 0) -> OpenFile:
    """
    Open C{path} for reading, without blocking, and check that it is a
    regular file.

    @param flags: more C{os.open} flags (C{O_NOFOLLOW}).
    @raise Unservable: it cannot be opened or is not a regular file.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS | flags)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise Unservable(getattr(e, "strerror", None) or str(e)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise Unservable(kind)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(path, handle, info)


def guess_type(path: str) -> bytes:
    """
    The C{Content-Type} of a file, from its name, by the L{mimetypes}
    module; C{text/*} and a few other text types with C{charset=utf-8}.
    """
    kind, encoding = mimetypes.guess_type(os.path.abspath(path), strict=False)
    if encoding is not None:
        kind = _ENCODED_TYPES.get(encoding, "application/octet-stream")
    if kind is None:
        return b"application/octet-stream"
    if kind.startswith("text/") or kind in _CHARSET_TYPES:
        kind += "; charset=utf-8"
    return kind.encode("ascii")


_ATTR_CHARS = "!#$&+-.^_`|~"
"""RFC 8187 attr-char beyond letters and digits: left unencoded in
C{filename*}."""


def content_disposition(name: str) -> bytes:
    """
    C{Content-Disposition: attachment} for a download named C{name} (RFC
    6266): C{filename="..."} in plain ASCII (anything else, quotes,
    backslashes and C{%} replaced by C{_}), and C{filename*} in UTF-8 when
    that is not the name itself.  Only the last path component is kept:
    a download name is never a path.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c >= " " and c != "\x7f").strip() or "download"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe=_ATTR_CHARS)
    return value.encode("ascii")


# -- conditional and range requests ---------------------------------------------


def _tags(header: bytes) -> list[bytes]:
    """
    The entity tags of an C{If-None-Match} list, each without its weak
    prefix (C{If-None-Match} compares weakly).
    """
    tags = []
    for item in header.split(b","):
        tag = item.strip()
        if tag.startswith(b"W/"):
            tag = tag[2:]
        if tag:
            tags.append(tag)
    return tags


def _weak(etag: bytes) -> bytes:
    return etag[2:] if etag.startswith(b"W/") else etag


def _date(value: bytes) -> int | None:
    """
    An HTTP date as seconds since the epoch, or L{None} when it is not one.
    """
    try:
        return int(stringToDatetime(value.split(b";", 1)[0].strip()))
    except (ValueError, IndexError, OverflowError):
        return None


def not_modified(request: Any, etag: bytes, modified: int) -> bool:
    """
    Whether a GET or HEAD can be answered 304 (RFC 9110 §13.2.2):
    C{If-None-Match} names the tag (or C{*}); or, when there is no
    C{If-None-Match}, C{If-Modified-Since} is not before C{modified}.
    """
    if request.method not in (b"GET", b"HEAD"):
        return False
    headers = request.requestHeaders
    match = headers.getRawHeaders(b"if-none-match")
    if match is not None:
        tags = _tags(b",".join(match))
        return b"*" in tags or _weak(etag) in tags
    since = headers.getRawHeaders(b"if-modified-since")
    if since is None:
        return False
    date = _date(since[0])
    return date is not None and modified <= date


UNSATISFIABLE = (-1, -1)
"""L{byte_range}'s answer for a range that lies beyond the file."""

_DIGITS = re.compile(rb"[0-9]*")


def byte_range(header: bytes, size: int) -> tuple[int, int] | None:
    """
    The one range a C{Range} header asks of a file of C{size} bytes, as
    C{(offset, length)}; L{UNSATISFIABLE} when it begins past the end; or
    L{None} when the header is to be ignored (not bytes, malformed, or
    several ranges, which get the whole file).
    """
    unit, equals, spec = header.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    ranges = [part.strip() for part in spec.split(b",") if part.strip()]
    if len(ranges) != 1:
        return None
    first, dash, last = ranges[0].partition(b"-")
    if not dash or not _DIGITS.fullmatch(first) or not _DIGITS.fullmatch(last):
        return None
    try:
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix == 0 or size == 0:
                return UNSATISFIABLE
            return max(0, size - suffix), min(suffix, size)
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:  # more digits than int() converts
        return None
    if last and end < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    end = min(end, size - 1)
    return start, end - start + 1


def _range_applies(request: Any, opened: OpenFile) -> bool:
    """
    Whether C{If-Range}, when sent, lets the C{Range} apply: it must name
    the current (strong) tag or be exactly the C{Last-Modified} date.
    """
    condition = request.getHeader(b"if-range")
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith((b'"', b"W/")):
        return bool(condition == opened.etag)
    return _date(condition) == opened.modified


# -- sending ----------------------------------------------------------------------


class FileProducer(static.SingleRangeStaticProducer):
    """
    twisted.web.static's range producer, which sends C{size} bytes from
    C{offset}, made safe for a file that changes while it is sent: a read
    that fails or comes back short ends the answer (see L{cut}) instead of
    looping or leaving the client waiting.
    """

    path = ""
    _channel: Any = None

    def start(self) -> None:
        self._channel = self.request.channel
        self.request.notifyFinish().addErrback(self._lost)
        # Seeks to the offset and registers as a pull producer.  (Twisted's
        # method is unannotated, and mypy#16653 ignores the config for it.)
        super().start()  # type: ignore[no-untyped-call]

    def _lost(self, reason: Failure) -> None:
        # The client went away.  Over TCP the transport has already stopped
        # us; a transport that does not (a test's) would leave twisted.web's
        # pull-to-push adapter calling resumeProducing for ever.
        if self._channel is not None:
            self._channel.unregisterProducer()
        self.stopProducing()

    def stopProducing(self) -> None:
        if self.fileObject is not None:
            self.fileObject.close()
        self.request = None

    def resumeProducing(self) -> None:
        request = self.request
        if request is None:
            return
        try:
            data = self.fileObject.read(min(self.bufferSize, self.size - self.bytesWritten))
        except OSError as e:
            self.cut(f"reading it failed: {e.strerror or e}")
            return
        if not data:
            self.cut("it ended early (changed or truncated while it was sent)")
            return
        self.bytesWritten += len(data)
        request.write(data)  # may call resumeProducing again, or stopProducing
        if self.request is not None and self.bytesWritten >= self.size:
            request.unregisterProducer()
            request.finish()
            self.stopProducing()

    def cut(self, reason: str) -> None:
        """
        End an answer whose file cannot be read to its end: a 500 JSON when
        nothing was sent yet, else close the connection once what was sent
        has gone, so the client sees a body shorter than promised.
        """
        request = self.request
        log.error(
            "File {path} could not be sent whole: {reason}; {sent} of {size} bytes "
            "were sent, {outcome}",
            path=self.path,
            reason=reason,
            sent=self.bytesWritten,
            size=self.size,
            outcome=(
                "the connection is closed"
                if request.startedWriting
                else "answered 500 in its place"
            ),
        )
        request.unregisterProducer()
        if not request.startedWriting:
            _internal_error(request)
        else:
            # The channel closes the connection when this request is done
            # rather than read the next one (twisted.web's Connection: close).
            request.channel.persistent = False
            request.finish()
        self.stopProducing()


_FILE_HEADERS = (
    b"etag",
    b"last-modified",
    b"accept-ranges",
    b"content-range",
    b"content-disposition",
    b"content-security-policy",
    b"x-frame-options",
    b"referrer-policy",
)


def _internal_error(request: Any) -> None:
    """
    Answer 500 JSON in place of a file answer whose head is not sent yet.
    """
    headers = request.responseHeaders
    for name in _FILE_HEADERS:
        headers.removeHeader(name)
    request.setResponseCode(500)
    headers.setRawHeaders(b"content-type", [JSON])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    headers.setRawHeaders(b"content-length", [b"%d" % (len(INTERNAL_ERROR),)])
    if request.method != b"HEAD":
        request.write(INTERNAL_ERROR)
    request.finish()


def send_file(
    request: Any,
    opened: OpenFile,
    status: int,
    pairs: HeaderPairs,
    content_type: bytes,
) -> Any:
    """
    Answer C{request} with the open file: its headers and validators, a
    304 or a range when the request asks and C{status} is 200, and the
    body through L{FileProducer}.  Takes ownership of the open file.
    Returns what a resource's render returns.
    """
    stream = opened.file
    conditional = status == 200
    if conditional and not_modified(request, opened.etag, opened.modified):
        stream.close()
        set_headers(request, pairs, None)
        request.setHeader(b"etag", opened.etag)
        request.setHeader(b"last-modified", datetimeToString(opened.modified))
        request.setResponseCode(304)
        return empty(request)
    offset, length = 0, opened.size
    rangeHeader = request.getHeader(b"range")
    if (
        conditional
        and rangeHeader is not None
        and request.method == b"GET"
        and _range_applies(request, opened)
    ):
        wanted = byte_range(rangeHeader, opened.size)
        if wanted == UNSATISFIABLE:
            stream.close()
            request.setHeader(b"content-range", b"bytes */%d" % (opened.size,))
            return error(request, 416, "range not satisfiable")
        if wanted is not None:
            offset, length = wanted
            status = 206
    set_headers(request, pairs, content_type)
    headers = request.responseHeaders
    if conditional:
        headers.setRawHeaders(b"etag", [opened.etag])
        headers.setRawHeaders(b"accept-ranges", [b"bytes"])
    headers.setRawHeaders(b"last-modified", [datetimeToString(opened.modified)])
    if status == 206:
        headers.setRawHeaders(
            b"content-range", [b"bytes %d-%d/%d" % (offset, offset + length - 1, opened.size)]
        )
    request.setResponseCode(status)
    if status in NO_BODY:
        stream.close()
        return empty(request)
    headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
    if request.method == b"HEAD" or length == 0:
        stream.close()
        return b""
    producer = FileProducer(request, stream, offset, length)  # type: ignore[no-untyped-call]
    producer.path = opened.path
    producer.start()
    return NOT_DONE_YET


def serve_file(
    request: Any,
    response: FileResponse,
    status: int,
    pairs: HeaderPairs,
    content_type: bytes | None,
) -> Any:
    """
    Answer C{request} with the file of a plugin's L{FileResponse}, with the
    plugin's checked headers (C{pairs}) and content type (its type from
    the file's name when L{None}).  A file that cannot be served is a
    logged 404 JSON.

    @raise BadResponse: C{download_name} is not a non-empty string.
    """
    name = response.download_name
    if name is not None:
        if not isinstance(name, str) or not name:
            raise BadResponse(f"download_name {name!r} is not a non-empty str")
        pairs = [*pairs, (b"content-disposition", [content_disposition(name)])]
    try:
        opened = open_file(response.path)
    except Unservable as e:
        log.warn(
            "FileResponse {path} cannot be served ({reason}): answered 404",
            path=response.path,
            reason=str(e),
        )
        return error(request, 404, "not found")
    if content_type is None:
        content_type = guess_type(opened.path)
    return send_file(request, opened, status, pairs, content_type)


# -- markdown ---------------------------------------------------------------------

_NOT_LOOKED = object()
_markdown_module: Any = _NOT_LOOKED


def markdown_module() -> Any:
    """
    The C{markdown} package, or L{None} when it is not installed (looked
    for once).
    """
    global _markdown_module
    if _markdown_module is _NOT_LOOKED:
        try:
            _markdown_module = importlib.import_module("markdown")
        except ImportError:
            _markdown_module = None
    return _markdown_module


_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)

_PAGE = (
    '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>{title}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
)


def render_markdown(module: Any, stream: IO[bytes], fallback_title: str) -> bytes:
    """
    Read a markdown file (at most L{MARKDOWN_LIMIT} bytes) and render it as
    a UTF-8 HTML page, titled by its first top-level heading.  Runs in a
    thread; closes C{stream}.
    """
    with stream:
        source = stream.read(MARKDOWN_LIMIT).decode("utf-8", "replace")
    heading = _HEADING.search(source)
    title = heading.group(1) if heading else fallback_title
    body = module.markdown(source, extensions=["extra"], output_format="html")
    return _PAGE.format(title=escape(title), body=body).encode("utf-8")


# -- documents trees ----------------------------------------------------------------


def within(path: str, root: str) -> bool:
    """
    Whether C{path} is C{root} or below it (both real, absolute paths).
    """
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:
        return False


def _opened_at(fd: int) -> str | None:
    """
    Where an open file really is, by Linux's C{/proc/self/fd}; L{None}
    where that cannot be read.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _hidden(relative: str) -> bool:
    """
    Whether a path relative to a tree has a dot file or directory in it.
    """
    return any(part.startswith(".") and part not in (".", "..") for part in relative.split(os.sep))


class DocumentTree:
    """
    One C{[paths] documents} tree: the files under a directory, served at
    C{/ROUTE/...} (see the module docstring for the rules).

    @ivar route: the route name.
    @ivar directory: the directory, absolute (its real path is looked up
        on every request, so a directory that is a symlink may be moved to
        a new release while the server runs).
    @ivar cache_control: the C{Cache-Control} of its answers.
    @ivar headers: more headers of its file answers (the bundled
        dashboard's stricter C{Content-Security-Policy}).
    """

    index = "index.html"

    def __init__(
        self,
        route: str,
        directory: str,
        cache_control: bytes = b"no-store",
        headers: Sequence[tuple[bytes, list[bytes]]] = (),
    ) -> None:
        self.route = route
        self.directory = directory
        self.cache_control = cache_control
        self.headers = list(headers)
        self._logged: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"DocumentTree({self.route!r}, {self.directory!r})"

    def serve(self, request: Any, subpath: str, client: str, run_in_thread: RunInThread) -> Any:
        """
        Answer a GET or HEAD for C{/ROUTE/subpath} (C{subpath} from the one
        parsed view of the target: no dot segment, slash, backslash or NUL
        in any of its segments).  Returns what a resource's render returns.
        """
        names = [name for name in subpath.split("/") if name]
        if any(name.startswith(".") for name in names):
            return error(request, 404, "not found")  # dot files: .git, .htpasswd
        root = os.path.realpath(self.directory)
        real = os.path.realpath(os.path.join(root, *names))
        if not within(real, root):
            return self._escaped(request, client, real)
        trailing = request.path.endswith(b"/")
        if os.path.isdir(real):
            if not trailing:
                return self._redirect(request, names)
            real = os.path.realpath(os.path.join(real, self.index))
            if not within(real, root):
                return self._escaped(request, client, real)
        elif (trailing and names) or real == root:
            # A file is no directory; and a tree whose directory was
            # replaced by a file serves nothing.
            return error(request, 404, "not found")
        if _hidden(os.path.relpath(real, root)):
            return error(request, 404, "not found")  # a symlink to a dot file
        try:
            # The real path's last component is no symlink, unless one was
            # put there since: then it is not followed.
            opened = open_file(real, getattr(os, "O_NOFOLLOW", 0))
        except Unservable:
            return error(request, 404, "not found")
        # What was opened is what was checked, unless a directory on the way
        # was swapped for a symlink in between: /proc says where it really is.
        actual = _opened_at(opened.file.fileno())
        if actual is not None and not within(actual, root):
            opened.file.close()
            return self._escaped(request, client, actual)
        pairs: HeaderPairs = [(b"cache-control", [self.cache_control]), *self.headers]
        if real.endswith(".md"):
            module = markdown_module()
            if module is not None and opened.size <= MARKDOWN_LIMIT:
                return self._markdown(request, opened, pairs, module, run_in_thread)
        return send_file(request, opened, 200, pairs, guess_type(real))

    def _redirect(self, request: Any, names: list[str]) -> Any:
        """
        Send a directory asked for without its trailing slash to the
        spelling with one (302), built from the parsed path, so that it is
        always a path on this server; the query is not repeated (it might
        hold a key).
        """
        location = "/" + "/".join(quote(part, safe="") for part in [self.route, *names]) + "/"
        set_headers(request, [(b"cache-control", [self.cache_control])], None)
        request.setHeader(b"location", location.encode("ascii"))
        request.setResponseCode(302)
        if request.method == b"HEAD":
            request.setHeader(b"content-length", b"0")
        return b""

    def _escaped(self, request: Any, client: str, target: str) -> Any:
        """
        Refuse a path that leads outside the tree (through a symlink): 404,
        as for a file that is not there, and a warning in the log (once a
        minute per target, so that a client cannot flood the log).
        """
        now = time.monotonic()
        if now - self._logged.get(target, -120.0) >= 60:
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[target] = now
            log.warn(
                "Refused {client} {path}: it leads to {target}, outside the documents "
                "tree /{route} ({directory}): a symlink points out of it",
                client=client or "a unix socket",
                path=request.path.decode("latin-1"),
                target=target,
                route=self.route,
                directory=self.directory,
            )
        return error(request, 404, "not found")

    def _markdown(
        self,
        request: Any,
        opened: OpenFile,
        pairs: HeaderPairs,
        module: Any,
        run_in_thread: RunInThread,
    ) -> Any:
        """
        Answer a markdown file rendered to HTML: 304 on the reactor when
        the client has the page, else rendered in a thread (a large file
        takes a while) and sent whole (no ranges: the page is not the file).
        """
        etag = b"W/" + opened.etag[:-1] + b'-md"'
        if not_modified(request, etag, opened.modified):
            opened.file.close()
            set_headers(request, pairs, None)
            request.setHeader(b"etag", etag)
            request.setHeader(b"last-modified", datetimeToString(opened.modified))
            request.setResponseCode(304)
            return empty(request)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda reason: gone.append(True))
        title = os.path.basename(opened.path)
        d = run_in_thread(render_markdown, module, opened.file, title)

        def rendered(page: bytes) -> None:
            if gone:
                return
            set_headers(request, pairs, b"text/html; charset=utf-8")
            request.setHeader(b"etag", etag)
            request.setHeader(b"last-modified", datetimeToString(opened.modified))
            request.setHeader(b"content-length", b"%d" % (len(page),))
            if request.method != b"HEAD":
                request.write(page)
            request.finish()

        def failed(reason: Failure) -> None:
            log.failure("Rendering {path} as markdown failed", reason, path=opened.path)
            if not gone:
                _internal_error(request)

        d.addCallbacks(rendered, failed)
        d.addErrback(
            lambda reason: log.failure("Answering {path} failed", reason, path=opened.path)
        )
        return NOT_DONE_YET
