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
import sys
from typing import Any, ClassVar, NoReturn, TextIO

from twisted.logger import formatEvent, jsonFileLogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from pluginserver.config import ConfigError, Settings, load_settings
from pluginserver.registry import PluginRegistry
from pluginserver.service import PluginServerService
from pluginserver.tls import is_tls, listener_problem


class Options(usage.Options):
    """
    C{twistd pluginserver} options.
    """

    synopsis = "[--config FILE] [--listen ENDPOINT ...] [--plugins DIR]"

    # Read by usage.Options from the class (and its bases), never changed.
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", "etc/ps.ini", "The configuration file (INI)."],
        ["plugins", "p", None, "The plugins directory (replaces [paths] plugins)."],
    ]

    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "check",
            None,
            "Check the configuration, listeners, certificates and plugins, "
            "print what was found, and exit 0 (all good) or 1, without listening.",
        ],
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
        return settings.with_overrides(listen=self["listen"] or None, plugins_dir=self["plugins"])

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
            problem = listener_problem(reactor, description)
            if problem is not None:
                _fail(f"{_origin(settings)}: {description}: {problem}")
        self["settings"] = settings
        if self["check"]:
            raise SystemExit(check(settings, sys.stdout))


class _JSONLogger:
    """
    A log observer factory for twistd: one JSON object per line, to the
    file twistd would log to (standard output in the foreground).
    """

    def __init__(self, twistdOptions: Any) -> None:
        self._path = twistdOptions.get("logfile")
        self._nodaemon = bool(twistdOptions.get("nodaemon"))

    def __call__(self) -> Any:
        path = self._path
        if not path and not self._nodaemon:
            path = "twistd.log"  # where twistd itself logs by default
        if not path or path == "-":
            stream: Any = sys.stdout
        else:
            stream = LogFile.fromFullPath(path)
        observer = jsonFileLogObserver(stream, recordSeparator="")

        def withText(event: Any) -> None:
            # Twisted's JSON events carry a format string and its fields;
            # log shippers and grep want the message itself too.
            observer({**event, "text": formatEvent(event)})

        return withText


def check(settings: Settings, out: TextIO) -> int:
    """
    Report what the configuration holds, load every TLS pair and import
    every plugin (none is started); return the exit status.
    """
    from twisted.internet import reactor

    problems = 0
    out.write(f"config {settings.path}: ok\n")
    for description in settings.listen:
        problem = listener_problem(reactor, description)
        if problem is not None:
            problems += 1
            out.write(f"listener {description}: FAILED: {problem}\n")
        else:
            kind = "TLS" if is_tls(description) else "plain"
            out.write(f"listener {description}: ok ({kind})\n")
    out.write(f"plugins directory {settings.plugins_dir}: ok\n")
    registry = PluginRegistry(
        settings.plugins_dir, settings.plugin_params, settings, package="pluginserver_check"
    )
    try:
        for stem, (name, error) in sorted(registry.check_all().items()):
            if error is None and name is not None:
                auth = registry.params_for(stem, name).get("auth", "global")
                out.write(f"plugin {stem}: ok (/{name}, auth={auth})\n")
            else:
                problems += 1
                out.write(f"plugin {stem}: FAILED: {error}\n")
    finally:
        registry.close()
    out.write("OK\n" if not problems else f"{problems} problem(s)\n")
    return 0 if not problems else 1


def _origin(settings: Settings) -> str:
    if settings.listen_origin == "--listen":
        return "--listen"
    return f"{settings.path}: {settings.listen_origin}"


def _fail(message: str) -> NoReturn:
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
    parent: Any | None = getattr(options, "parent", None)
    nodaemon = bool(parent is None or parent.get("nodaemon"))
    service = PluginServerService(
        settings,
        reload_settings=options.load,
        reactor=reactor,
        exitOnListenError=nodaemon,
    )
    if settings.log_format == "json" and not (parent is not None and parent.get("logger")):
        service.logObserver = _JSONLogger(parent or {})()
    return service


__all__: list[str] = ["Options", "makeService"]
