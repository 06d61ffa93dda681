"""
Testing helpers that make tests read like usage: a plugins directory to
write plugin files into, registries that clean up after themselves, and a
server over that directory driven in memory by L{pluginserver.testing}.
"""

from __future__ import annotations

import itertools
import os
import socket
import textwrap
import time
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from pluginserver import testing
from pluginserver.registry import PluginRegistry
from pluginserver.testing import read_answers

_packages = itertools.count()

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": request.args.get("name", "world")}
"""
"""The smallest plugin, for tests about everything but plugins."""


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """
    The complete answers in C{data} (to requests that are not C{HEAD}), as
    (status, body); bytes that are no answer fail the test.
    """
    reading = read_answers(data)
    if reading.error is not None:
        raise ValueError(f"{reading.error}: {reading.leftover!r}")
    return [(answer.status, answer.body) for answer in reading.answers]


def exchange(s: socket.socket, data: bytes, count: int = 1) -> list[tuple[int, bytes]]:
    """
    Send C{data} on the blocking socket C{s} and read until C{count}
    answers have arrived whole, or the server closes; the answers read.
    """
    s.sendall(data)
    received = b""
    while len(responses(received)) < count:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        received += chunk
    return responses(received)


class PluginDir:
    """
    A temporary plugins directory.
    """

    def __init__(self, case: TestCase) -> None:
        self.path = case.mktemp()
        os.makedirs(self.path)

    def write(self, name: str, source: str) -> str:
        """
        Write C{name}.py (dedented).  Each write gets a distinct mtime and
        size is not relied upon: the registry must see every change.
        """
        path = os.path.join(self.path, name + ".py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        return path

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.path, name + ".py"))

    def registry(
        self,
        case: TestCase,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        config: Any = None,
    ) -> PluginRegistry:
        """
        A registry over this directory, closed when the test ends.
        """
        registry = PluginRegistry(
            self.path,
            params or {},
            config,
            package=f"_test_plugins_{os.getpid()}_{next(_packages)}",
        )
        case.addCleanup(registry.stop_all)
        return registry


def plugin_source(body: str, cls: str = "P", extra: str = "") -> str:
    """
    The source of a plugin module whose handle() returns C{body} (an
    expression).
    """
    return (
        "from pluginserver import Plugin, HTTPError\n"
        + textwrap.dedent(extra)
        + f"\nclass {cls}(Plugin):\n    def handle(self, request):\n        return {body}\n"
    )


def unique_name() -> str:
    return f"p{int(time.time() * 1000)}_{next(_packages)}"


class ServerCase(TestCase):
    """
    A server over a temporary plugins directory, driven in memory.
    """

    def setUp(self) -> None:
        self.dir = PluginDir(self)
        self.clock = Clock()

    @defer.inlineCallbacks
    def serve(self, params: Mapping[str, Mapping[str, Any]] | None = None, **settings: Any) -> Any:
        """
        Load the plugins written so far and serve them with these settings
        (L{Settings} fields); plugins that fail to load are left out.
        """
        self.server = yield testing.serve(
            self, self.dir.path, params=params, clock=self.clock, allow_load_errors=True, **settings
        )
        self.registry = self.server.registry

    @defer.inlineCallbacks
    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """
        Make a request (keywords: C{headers}, C{data}, C{json}, as
        L{testing.Server.request} takes them); fires with (status, headers,
        decoded JSON body or None for an empty body).
        """
        answer = yield self.server.request(method, path, **kwargs)
        if answer.body:
            self.assertEqual(answer.headers.getRawHeaders("content-type"), ["application/json"])
        return answer.status, answer.headers, answer.json() if answer.body else None


class PushBackTransport(StringTransport):
    """
    A StringTransport that pushes back as a TCP transport does: past
    C{bufferSize} unsent bytes it pauses its producer, and L{drain} (the
    client reading everything) resumes it.  It can half-close, as TCP can.

    @ivar full: whether it has paused its producer.
    @ivar received: everything the client has read.
    @ivar writeClosed: whether the server shut down its sending side.
    @ivar aborted: whether the server aborted the connection.
    """

    def __init__(self, bufferSize: int = 65536) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.bufferSize = bufferSize
        self.full = False
        self.received = b""
        self.writeClosed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._pushBack()

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        self._pushBack()

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def _pushBack(self) -> None:
        if self.producer is not None and len(self.io.getvalue()) > self.bufferSize:
            self.full = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """
        The client reads everything sent so far; the producer resumes.
        """
        sent = self.value()
        self.received += sent
        self.clear()
        if self.full and self.producer is not None:
            self.full = False
            self.producer.resumeProducing()
        return sent
