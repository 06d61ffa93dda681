# -*- test-case-name: tests -*-
"""
pluginserver: a JSON API server whose routes are Python plugins, reloaded
while it runs.

This package exports only the plugin API; everything else is the server's
own business.
"""

from pluginserver.plugin import (
    EventStream,
    FileResponse,
    HTTPError,
    Plugin,
    PluginRequest,
    RawJSON,
    Response,
    UploadedFile,
    redirect,
)

__all__ = [
    "EventStream",
    "FileResponse",
    "HTTPError",
    "Plugin",
    "PluginRequest",
    "RawJSON",
    "Response",
    "UploadedFile",
    "redirect",
]
