"""
Testing helpers that make tests read like usage: a plugins directory to
write plugin files into, and registries that clean up after themselves.
"""

from __future__ import annotations

import itertools
import json
import os
import textwrap
import time
from collections.abc import Mapping
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from pluginserver.registry import PluginRegistry
from pluginserver.site import PluginServerSite
from pluginserver.web import PluginServerResource

_packages = itertools.count()


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


class FakeRuntime:
    """
    The part of the service the web layer sees, over a real registry.
    """

    def __init__(self, registry: PluginRegistry, settings: Any) -> None:
        self.registry = registry
        self.settings = settings
        self.failures: dict[str, str] = {}

    def reload_all(self) -> Any:
        d = self.registry.reload_all()
        return d.addCallback(lambda report: (report, self.failures))


def settings_for(directory: str, **changes: Any) -> Any:
    """
    Settings for an in-memory server over C{directory}.
    """
    import attr

    from pluginserver.config import Settings

    base = Settings(
        path="test.ini", listen=(), listen_origin="[server] listen", plugins_dir=directory
    )
    return attr.evolve(base, **changes)


URL = "http://localhost"


def stub_client(resource: Any) -> StubTreq:
    """
    treq's in-memory client, serving through pluginserver's own site (its
    request class sets the headers every answer carries and enforces the
    limits) rather than the plain Site StubTreq builds.
    """
    client = StubTreq(resource)
    agent = client._agent
    agent._serverFactory = PluginServerSite(resource, reactor=agent._memoryReactor)
    return client


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
        Load the plugins written so far and serve them with these settings.
        """
        self.registry = self.dir.registry(self, params=params)
        yield self.registry.load_all()
        self.runtime = FakeRuntime(self.registry, settings_for(self.dir.path, **settings))
        self.resource = PluginServerResource(self.runtime, self.clock)
        self.client = stub_client(self.resource)

    @defer.inlineCallbacks
    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """
        Make a request; fires with (status, headers, decoded JSON body or
        None for an empty body).
        """
        # Reloads import plugin modules in threads: keep pumping the
        # in-memory connection until the answer is there.
        from twisted.internet import reactor

        pending = self.client.request(method, URL + path, **kwargs)
        deadline = time.monotonic() + 20
        while not pending.called and time.monotonic() < deadline:
            self.client.flush()
            if not pending.called:
                yield task.deferLater(reactor, 0.005, lambda: None)
        response = yield pending
        raw = yield response.content()
        headers = response.headers
        if raw:
            self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        return response.code, headers, json.loads(raw) if raw else None
