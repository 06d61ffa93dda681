# -*- test-case-name: tests.test_tap -*-
"""
twistd's entry point: command-line options and L{makeService}.

Everything that can be checked before the reactor runs is checked in
L{Options.postOptions}: the configuration file, the plugins directory and
every listener's endpoint string (which, for C{ssl:}, loads the key and
certificate).  A problem there is one line naming the file, section and key,
and a non-zero exit; nothing is listening yet.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from pluginserver.config import ConfigError, Settings, load_settings
from pluginserver.service import PluginServerService
from pluginserver.tls import describe_tls_error, is_tls, load_context_factory


class Options(usage.Options):
    """
    C{twistd pluginserver} options.
    """

    synopsis = "[--config FILE] [--listen ENDPOINT ...] [--plugins DIR]"

    optParameters = [
        ["config", "c", "etc/ps.ini", "The configuration file (INI)."],
        ["plugins", "p", None, "The plugins directory (replaces [paths] plugins)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        A Twisted endpoint string to listen on, e.g. tcp:8080:interface=127.0.0.1
        or ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable; replaces
        the configured listeners).
        """
        self["listen"].append(description)

    opt_l = opt_listen

    def load(self) -> Settings:
        """
        Read the configuration file with the command line's overrides applied.
        """
        settings = load_settings(self["config"])
        return settings.with_overrides(
            listen=self["listen"] or None, plugins_dir=self["plugins"]
        )

    def postOptions(self) -> None:
        try:
            settings = self.load()
        except ConfigError as e:
            _fail(str(e))
        if not os.path.isdir(settings.plugins_dir):
            origin = "--plugins" if self["plugins"] else f"{settings.path}: [paths] plugins"
            _fail(f"{origin}: {settings.plugins_dir} is not a directory")
        from twisted.internet import reactor

        for description in settings.listen:
            try:
                if is_tls(description):
                    # Loads key and certificate and checks they match.
                    load_context_factory(reactor, description)
                else:
                    serverFromString(reactor, description)
            except Exception as e:
                _fail(f"{_origin(settings)}: {description}: {describe_tls_error(e)}")
        self["settings"] = settings


def _origin(settings: Settings) -> str:
    if settings.listen_origin == "--listen":
        return "--listen"
    return f"{settings.path}: {settings.listen_origin}"


def _fail(message: str) -> None:
    """
    Stop twistd with one line on stderr and exit status 1: a configuration
    problem is not a usage problem, so twistd's usage text is not printed.
    """
    raise SystemExit(f"pluginserver: {message}")


def makeService(options: Options) -> PluginServerService:
    """
    Build the server from checked options.
    """
    from twisted.internet import reactor

    settings: Settings = options["settings"]
    parent: Optional[Any] = getattr(options, "parent", None)
    nodaemon = bool(parent is None or parent.get("nodaemon"))
    return PluginServerService(
        settings,
        reload_settings=options.load,
        reactor=reactor,
        exitOnListenError=nodaemon,
    )


__all__: List[str] = ["Options", "makeService"]
