# -*- test-case-name: tests.test_dashboard -*-
"""
The bundled dashboard: where its files are, and how they are served.

The page, its script, its stylesheet and the vendored chart library live in
C{pluginserver/dashboard/} (package data: installed with the package, no
build step).  They are served as a documents tree (L{DocumentTree}) at
C{/dashboard/}: C{ETag} and C{Last-Modified} with 304 answers, C{Cache-Control:
no-cache} (browsers keep the files and revalidate them), never a listing,
never a file outside the directory.  The page needs no key (it holds no
data); the data it fetches does, as for any client.

HTML answers carry the headers of every HTML answer (L{HTML_HEADERS}), with a
stricter C{Content-Security-Policy} than the default: the page loads nothing
but its own files, runs no inline script or style, and may connect only to
this server.  C{/} redirects to the page while it is on (C{[server] dashboard},
default true).
"""

from __future__ import annotations

import os

from twisted.web.http import Request

from pluginserver.files import DocumentTree

DASHBOARD = "dashboard"
"""The route the dashboard is served at (reserved: no plugin may take it)."""

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
"""The dashboard's files, as installed with the package."""

POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The dashboard's C{Content-Security-Policy}: its own files only, no inline
script or style, requests to this server only, never framed."""


def dashboard_tree() -> DocumentTree:
    """
    The documents tree that serves the dashboard's files, revalidated by
    browsers (C{no-cache}) and sent with L{POLICY}.
    """
    return DocumentTree(DASHBOARD, DIRECTORY, b"no-cache", [(b"content-security-policy", [POLICY])])


def redirect_to_dashboard(request: Request) -> bytes:
    """
    Answer a GET or HEAD of C{/}: 302 to C{/dashboard/}, empty body.  The
    query is not repeated (it might hold a key).
    """
    request.setResponseCode(302)
    request.setHeader(b"location", b"/" + DASHBOARD.encode("ascii") + b"/")
    request.setHeader(b"content-length", b"0")
    request.responseHeaders.removeHeader(b"content-type")
    return b""
