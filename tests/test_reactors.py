"""
Real-process tests of the reactor the server runs on: Twisted's asyncio
reactor on uvloop's loop by default, on the standard loop when
C{[server] uvloop = bool:false}, and whatever C{twistd -r} chose otherwise,
where a plugin that awaits asyncio gets a clear logged error and a 500.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.process import Server, sleep

HELLO = """
from pluginserver import Plugin

class Hello(Plugin):
    def handle(self, request):
        return {"hello": "world"}
"""

# Calls the server it runs in, through aiohttp's client (an asyncio
# library), between an asyncio sleep and a Deferred.
ASYNCIO = """
import asyncio

import aiohttp
from twisted.internet import reactor, task
from pluginserver import Plugin

class Asyncio(Plugin):
    async def handle(self, request):
        await asyncio.sleep(0.01)
        await task.deferLater(reactor, 0.01)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(self.params["url"]) as answer:
                return {"version": VERSION, "called": await answer.json()}
"""

DEFERRED_ONLY = """
from twisted.internet import reactor, task
from pluginserver import Plugin

class Deferreds(Plugin):
    async def handle(self, request):
        return {"waited": await task.deferLater(reactor, 0.01, lambda: True)}
"""


# An asyncio subprocess (libuv takes SIGCHLD over on uvloop), then one of
# Twisted's, which must still be seen ending.
PROCESSES = """
import asyncio

from twisted.internet import utils
from pluginserver import Plugin

class Processes(Plugin):
    async def handle(self, request):
        child = await asyncio.create_subprocess_exec(
            "echo", "asyncio", stdout=asyncio.subprocess.PIPE
        )
        first, _ = await asyncio.wait_for(child.communicate(), 10)
        second = await utils.getProcessOutput("/bin/echo", ["twisted"])
        return [first.decode().strip(), second.decode().strip()]
"""


def plugin_parms(server: Server) -> str:
    return f"[plugin_parms]\nasyncio = url={server.url}/hello\n"


class ReactorTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_asyncioOnUvloopByDefault(self) -> Any:
        """
        By default the server runs on the asyncio reactor on uvloop's loop:
        a plugin awaits asyncio and aiohttp's client; asyncio's subprocesses
        and Twisted's both work in one process; SIGHUP reloads it; SIGTERM
        stops as it always did.
        """
        server = Server(self)
        server.write_config(plugin_parms(server))
        server.write_plugin("hello", HELLO)
        server.write_plugin("asyncio", ASYNCIO + "\nVERSION = 1\n")
        server.write_plugin("processes", PROCESSES)
        yield server.start()
        self.assertIn("Running on the asyncio reactor on uvloop's loop", server.log())
        status, body = yield server.get("/asyncio")
        self.assertEqual((status, body), (200, {"version": 1, "called": {"hello": "world"}}))
        for _ in range(4):
            self.assertEqual((yield server.get("/processes")), (200, ["asyncio", "twisted"]))
        server.write_plugin("asyncio", ASYNCIO + "\nVERSION = 2\n")
        server.signal(signal.SIGHUP)
        for _ in range(100):
            status, body = yield server.get("/asyncio")
            if body.get("version") == 2:
                break
            yield sleep(0.05)
        self.assertEqual((status, body), (200, {"version": 2, "called": {"hello": "world"}}))
        self.assertEqual((yield server.stop()), -signal.SIGTERM)
        self.assertIn("pluginserver stopped", server.log())

    @defer.inlineCallbacks
    def test_standardLoopWhenAsked(self) -> Any:
        """
        C{[server] uvloop = bool:false}: the asyncio reactor on the
        standard library's loop, and asyncio plugins work the same.
        """
        server = Server(self, server="uvloop = bool:false\n")
        server.write_config(plugin_parms(server))
        server.write_plugin("hello", HELLO)
        server.write_plugin("asyncio", ASYNCIO + "\nVERSION = 1\n")
        yield server.start()
        self.assertIn("Running on the asyncio reactor on the standard loop", server.log())
        status, body = yield server.get("/asyncio")
        self.assertEqual((status, body), (200, {"version": 1, "called": {"hello": "world"}}))
        self.assertEqual((yield server.stop()), -signal.SIGTERM)

    @defer.inlineCallbacks
    def test_anotherReactorSaysWhatItCannotDo(self) -> Any:
        """
        C{twistd -r epoll}: that reactor is used; the log says asyncio
        awaitables are unavailable; a plugin that awaits one is answered
        500 JSON with a logged error naming the reactor; coroutines that
        await Deferreds work.
        """
        server = Server(self, reactor="epoll")
        server.write_config(plugin_parms(server))
        server.write_plugin("hello", HELLO)
        server.write_plugin("asyncio", ASYNCIO + "\nVERSION = 1\n")
        server.write_plugin("deferreds", DEFERRED_ONLY)
        yield server.start()
        self.assertIn("Running on EPollReactor (chosen with twistd -r)", server.log())
        status, body = yield server.get("/asyncio")
        self.assertEqual((status, body), (500, {"error": "internal error"}))
        self.assertIn(
            "AsyncioUnavailableError: asyncio awaitables need the asyncio reactor; "
            "this server runs on EPollReactor",
            server.log(),
        )
        self.assertEqual((yield server.get("/deferreds")), (200, {"waited": True}))
        self.assertEqual((yield server.get("/hello")), (200, {"hello": "world"}))
        self.assertEqual((yield server.stop()), -signal.SIGTERM)
