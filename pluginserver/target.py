# -*- test-case-name: tests.test_gate -*-
"""
The one view of a request's target that every decision is made on.

A client can spell one path many ways: C{/%70lugins}, C{//plugins},
C{/plugins/}, C{http://host/plugins}.  If the security gate looked at one
spelling and the router served another, a key check could be skipped (it
was: the gate read the raw first segment while werkzeug routed the decoded,
slash-merged path).  So the target is parsed here, once, into a L{Target},
and both the gate and the dispatch use its C{name} and C{segments} as they
are.

The rule, for a path in origin form (C{/a/b}):

  - it is split on C{/} first and each segment is then percent-decoded
    (RFC 3986 §6.2.2.2: C{%70} and C{p} are the same character), so
    C{/%70lugins} is the route C{plugins} with all of that route's checks;
  - a segment that decodes to something a path segment cannot safely be
    (empty but for a trailing one, C{.}, C{..}, or containing C{/}, C{\\}
    or NUL) makes the target unservable: 404, for every route alike.

An absolute-form target (C{http://host/path}, RFC 9112 §3.2.2) names its
host itself: L{split_absolute} gives that host and the origin-form path.
Any other form (C{*}, C{a/plugins}) is a bad request.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote_to_bytes

import attr

BAD_TARGET = "bad request target"
"""What a client is told of a target that is not a path (nor an absolute URL)."""


class BadTarget(Exception):  # noqa: N818 - named after what it reports
    """
    The target is not a path this server serves: answered 404 when it is a
    path whose spelling is refused, 400 when it is not in origin form.

    @ivar status: the status to answer with.
    @ivar message: the error the client is told.
    @ivar reason: for a refused spelling, what was wrong with it (for the
        log: such paths are how traversal is attempted); else L{None}.
    """

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason


@attr.s(auto_attribs=True, slots=True, frozen=True)
class Target:
    """
    A request path, parsed.  Frozen: one is shared by every request for
    the same path (see L{parse_path}).

    @ivar name: the route name: the first segment, decoded.
    @ivar subpath: the path below the route, decoded, without its leading
        slash: C{""} for C{/hello}, C{"a/b"} for C{/hello/a/b}, C{"a/"} for
        C{/hello/a/}.  No segment of it contains a slash, so splitting it
        on C{/} gives back the segments.
    """

    name: str
    subpath: str

    @property
    def segments(self) -> list[str]:
        """
        Every segment of the path, the route name first.
        """
        return [self.name, *self.subpath.split("/")] if self.subpath else [self.name]


_NEEDS_CHECKING = re.compile(rb"%|//|/\.|\\|\x00").search
"""What a path must contain for any of its segments to need decoding or checking."""
_FORBIDDEN = re.compile(r"[/\\\x00]")
_ABSOLUTE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)(.*)$", re.DOTALL)


def _segment(raw: bytes) -> str:
    text = raw
    if b"%" in raw:
        text = unquote_to_bytes(raw)
    try:
        segment = text.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(400, "invalid UTF-8 in path") from None
    if segment in (".", ".."):
        raise BadTarget(404, "not found", f"a {segment!r} segment")
    forbidden = _FORBIDDEN.search(segment)
    if forbidden is not None:
        raise BadTarget(404, "not found", f"a segment holding {forbidden.group()!r}")
    return segment


REMEMBERED_PATH = 256
"""The longest path L{parse_path} remembers, in bytes."""


def parse_path(path: bytes) -> Target:
    """
    Parse an origin-form path (without its query) into a L{Target}.

    The last 4096 paths of up to L{REMEMBERED_PATH} bytes are remembered (a
    refusal is not: it raises anew): most requests ask for a few paths, and
    parsing one cost 7% of the instructions of a /hello (callgrind).  A
    longer one is parsed each time, so that clients cannot make the
    server keep more than a few megabytes of them.

    @raise BadTarget: the path is not in origin form (400), is not UTF-8
        (400) or is spelled in a way no route is served under (404).
    """
    if len(path) <= REMEMBERED_PATH:
        return _remembered(path)
    return _parse(path)


def _parse(path: bytes) -> Target:
    if path[:1] != b"/":
        raise BadTarget(400, BAD_TARGET)
    if _NEEDS_CHECKING(path) is None:
        # Nearly every path: nothing encoded, no empty or dot segment.
        first, _, rest = path[1:].partition(b"/")
        try:
            return Target(first.decode("utf-8"), rest.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadTarget(400, "invalid UTF-8 in path") from None
    raw = path[1:].split(b"/")
    last = len(raw) - 1
    for index, piece in enumerate(raw):
        if not piece and index != last:
            raise BadTarget(404, "not found", "an empty segment")
    return Target(_segment(raw[0]), "/".join(_segment(piece) for piece in raw[1:]))


_remembered = lru_cache(maxsize=4096)(_parse)


def split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """
    The host (with its port, as a C{Host} header would carry it) and the
    origin-form path of an absolute-form target, or L{None} when the target
    is not in absolute form.  An empty path is C{/}.
    """
    match = _ABSOLUTE.match(target)
    if match is None:
        return None
    authority, rest = match.group(1), match.group(2)
    host = authority.rpartition(b"@")[2]  # userinfo is never a host
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return host, rest
