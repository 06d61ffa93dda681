# -*- test-case-name: tests.test_plugincore -*-
"""
The old aiohttp pluginserver's plugin API, as a thin adapter onto
pluginserver's: a plugin file written for the old server (C{from
plugincore.baseplugin import BasePlugin}, a subclass whose
C{request_handler(self, **data)} returns C{(code, value)}) is loaded and
served unchanged.

This is not a second server: L{plugincore.baseplugin.BasePlugin} is a
L{pluginserver.Plugin} whose C{construct}, C{start}, C{stop} and C{handle}
translate the old calls, and L{plugincore.answers} turns the old answers
(and aiohttp's responses, when aiohttp is installed: the C{[compat]} extra)
into pluginserver's L{Response<pluginserver.Response>}.  See "Moving a
plugin from the old server" in docs/plugins.md.
"""

from plugincore.baseplugin import BasePlugin

__all__ = ["BasePlugin"]
