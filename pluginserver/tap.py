# -*- test-case-name: tests.test_tap -*-
"""
twistd's entry point: command-line options and L{makeService}.

Everything that can be checked before the reactor runs is checked in
L{Options.postOptions}, by L{validate}: the configuration file, the plugins
directory and every listener's endpoint string (which, for C{ssl:}, loads the
key and certificate).  A problem there is one line naming the file, section
and key, and a non-zero exit; nothing is listening yet.  C{--check} runs the
same validation, reports everything it found (warnings too) and exits.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TextIO, TypeVar

import attr
import twisted
from twisted.logger import formatEvent, jsonFileLogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from pluginserver.config import ConfigError, Settings, load_settings, misspelt_sections
from pluginserver.tls import ClientAuth, is_tls, listener_problem
from pluginserver.version import version

if TYPE_CHECKING:
    # Imported when used: Klein installs the default reactor when it is
    # imported, and this module is imported (by twistd, for the options)
    # before install_reactor runs.
    from pluginserver.service import PluginServerService
    from pluginserver.workers import Supervisor

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _help(method: _Method) -> _Method:
    """
    usage.Options shows an C{opt_} method's docstring as that option's help,
    keeping the docstring's line breaks and indentation as runs of spaces:
    make it one paragraph, which the help text wraps to the terminal.
    """
    method.__doc__ = " ".join((method.__doc__ or "").split())
    return method


class Options(usage.Options):
    """
    C{twistd pluginserver} options.
    """

    synopsis = "[--config FILE] [--listen ENDPOINT ...] [--plugins DIR] [--workers N] [--check]"

    longdesc = (
        "Serves every NAME.py of the plugins directory at /NAME. SIGHUP re-reads "
        "the configuration and reloads every plugin; SIGTERM stops gracefully. "
        "A bad configuration stops start-up with one line naming the file, "
        "section and key. See docs/configuration.md and docs/operations.md."
    )

    # Read by usage.Options from the class (and its bases), never changed.
    optParameters: ClassVar[list[list[str | None]]] = [
        [
            "config",
            "c",
            "etc/ps.ini",
            "The configuration file (INI), relative to the current directory.",
        ],
        ["plugins", "p", None, "The plugins directory; replaces [paths] plugins."],
        [
            "workers",
            "w",
            None,
            "Worker processes (1 to 256) serving the listeners; replaces [server] workers.",
        ],
    ]

    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "check",
            None,
            "Check the configuration, listeners, certificates and plugins without "
            "listening; print what was found, warnings included, and exit 0 "
            "(usable, even with warnings) or 1.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    @_help
    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint string, e.g. tcp:8080:interface=127.0.0.1
        or ssl:8443:privateKey=key.pem:certKey=cert.pem. Repeat it for several
        listeners; they replace the configured ones.
        """
        self["listen"].append(description)

    opt_l = opt_listen

    @_help
    def opt_version(self) -> NoReturn:
        """
        Print pluginserver's version (with Twisted's and Python's) and exit.
        """
        print(version_line())
        raise SystemExit(0)

    @classmethod
    def of(cls, command: Mapping[str, Any]) -> Options:
        """
        Options as parsed from C{command}'s C{config}, C{listen},
        C{plugins} and C{workers} (a worker process reads its
        configuration as its supervisor does).
        """
        options = cls()
        options["config"] = command["config"]
        options["listen"] = list(command.get("listen") or [])
        options["plugins"] = command.get("plugins")
        options["workers"] = command.get("workers")
        return options

    def load(self) -> Settings:
        """
        Read the configuration file with the command line's overrides applied.
        """
        settings = load_settings(self["config"])
        return settings.with_overrides(
            listen=self["listen"] or None,
            plugins_dir=self["plugins"],
            workers=self.workers(),
        )

    def workers(self) -> int | None:
        """
        C{--workers}, checked, or L{None} when not given.

        @raise ConfigError: it is not a number from 1 to 256.
        """
        raw = self["workers"]
        if raw is None:
            return None
        try:
            workers = int(str(raw).strip())
        except ValueError:
            workers = 0
        if not 1 <= workers <= 256:
            raise ConfigError(
                "--workers", None, None, f"expected an integer from 1 to 256, found {raw!r}"
            )
        return workers

    def postOptions(self) -> None:
        """
        Load and validate the configuration: one line and exit status 1 when
        it cannot be used, the C{--check} report and its exit status when
        asked for, otherwise the settings for L{makeService}.
        """
        try:
            settings = self.load()
        except ConfigError as e:
            _fail(str(e))
        self["settings"] = settings
        install_reactor(settings)
        from twisted.internet import reactor

        overridden = self["plugins"] is not None
        if self["check"]:
            raise SystemExit(check(settings, sys.stdout, overridden, reactor))
        problems = validate(settings, reactor, overridden).problems()
        if problems:
            _fail(problems[0])


def install_reactor(settings: Settings) -> None:
    """
    Install Twisted's asyncio reactor, on uvloop's loop unless C{[server]
    uvloop} is false, so that plugin coroutines may await asyncio
    libraries; unless a reactor is installed already (C{twistd -r} installs
    its choice while it parses the options, before this runs), which is
    then the one used (the service says what that means for plugins).
    """
    if "twisted.internet.reactor" in sys.modules:
        return
    import asyncio

    from twisted.internet import asyncioreactor

    if settings.uvloop:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    # The thread's current loop, so that plugin code calling
    # asyncio.get_event_loop() outside a coroutine (the old server's
    # plugins do, in __init__) gets this one.
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def version_line() -> str:
    """
    What C{--version} prints: C{pluginserver 0.1.0 (Twisted 24.3.0, Python
    3.11.9)}.
    """
    return (
        f"pluginserver {version()} "
        f"(Twisted {twisted.__version__}, Python {platform.python_version()})"
    )


@attr.s(frozen=True, auto_attribs=True)
class ListenerCheck:
    """
    One listener as start-up checks it.

    @ivar description: its endpoint string.
    @ivar problem: what is wrong with it in words, or L{None}.
    @ivar tls: whether it serves TLS.
    """

    description: str
    problem: str | None
    tls: bool


@attr.s(frozen=True, auto_attribs=True)
class Validation:
    """
    What start-up checks before anything listens, beyond the configuration
    file itself (which L{load_settings} checked): the plugins directory and
    every listener.  Start-up stops on the first problem; C{--check} reports
    them all.

    @ivar settings: the settings checked.
    @ivar plugins_origin: where the plugins directory came from, for
        messages: C{--plugins} or the file and key.
    @ivar plugins_problem: what is wrong with the plugins directory, or
        L{None}.
    @ivar listeners: each listener, in order.
    """

    settings: Settings
    plugins_origin: str
    plugins_problem: str | None
    listeners: tuple[ListenerCheck, ...]

    def problems(self) -> list[str]:
        """
        Every problem as the one line start-up fails with, the plugins
        directory first.
        """
        lines = []
        if self.plugins_problem is not None:
            lines.append(
                f"{self.plugins_origin}: {self.settings.plugins_dir} is {self.plugins_problem}"
            )
        source = self.settings.listen_source
        for listener in self.listeners:
            if listener.problem is not None:
                lines.append(f"{source}: {listener.description}: {listener.problem}")
        return lines


def validate(
    settings: Settings, reactor: Any, plugins_from_command_line: bool = False
) -> Validation:
    """
    Check what a loaded configuration needs from the machine: that the
    plugins directory is one, and that every listener's endpoint string
    parses (and, for C{ssl:}, that its key and certificate load and match),
    without listening.  Used by start-up and C{--check} alike.

    @param plugins_from_command_line: the plugins directory came from
        C{--plugins}, so messages name that instead of the file.
    """
    origin = "--plugins" if plugins_from_command_line else f"{settings.path}: [paths] plugins"
    problem = None
    if not os.path.isdir(settings.plugins_dir):
        problem = "not a directory"
        if not plugins_from_command_line:
            # [path] instead of [paths] leaves the default directory, which
            # is missing: say why it was not the one written.
            for written, known in misspelt_sections(settings.sections).items():
                if known == "paths":
                    problem += f" (note: [{written}] looks like a misspelling of [paths])"
    listeners = tuple(
        ListenerCheck(d, listener_problem(reactor, d, ClientAuth.of(settings)), is_tls(d))
        for d in settings.listen
    )
    return Validation(settings, origin, problem, listeners)


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


def check(
    settings: Settings,
    out: TextIO,
    plugins_from_command_line: bool = False,
    reactor: Any = None,
) -> int:
    """
    C{--check}: report what the configuration holds, load every TLS pair and
    import every plugin (none is started), then print the warnings and a
    summary; return the exit status: 1 when anything would stop the server
    or a plugin from loading, else 0 (warnings do not count).
    """
    if reactor is None:
        from twisted.internet import reactor
    validation = validate(settings, reactor, plugins_from_command_line)
    problems = 0
    out.write(f"config {settings.path}: ok\n")
    for listener in validation.listeners:
        if listener.problem is not None:
            problems += 1
            out.write(f"listener {listener.description}: FAILED: {listener.problem}\n")
        else:
            kind = "TLS" if listener.tls else "plain"
            out.write(f"listener {listener.description}: ok ({kind})\n")
    if validation.plugins_problem is not None:
        problems += 1
        out.write(
            f"plugins directory {settings.plugins_dir}: FAILED: {validation.plugins_problem}\n"
        )
    else:
        out.write(f"plugins directory {settings.plugins_dir}: ok\n")
        problems += _check_plugins(settings, out)
    warnings = settings.warnings
    for warning in warnings:
        out.write(f"warning: {warning}\n")
    summary = "OK" if not problems else f"{problems} problem(s)"
    if warnings:
        summary += f", {len(warnings)} warning(s)"
    out.write(summary + "\n")
    return 0 if not problems else 1


def _check_plugins(settings: Settings, out: TextIO) -> int:
    """
    Import every plugin module of the plugins directory (none is started)
    and report each; return how many failed.
    """
    from pluginserver.registry import PluginRegistry

    failed = 0
    registry = PluginRegistry(
        settings.plugins_dir, settings.plugin_params, settings, package="pluginserver_check"
    )
    try:
        for stem, (name, error) in sorted(registry.check_all().items()):
            if error is None and name is not None:
                auth = registry.params_for(stem, name).get("auth", "global")
                out.write(f"plugin {stem}: ok (/{name}, auth={auth})\n")
            else:
                failed += 1
                out.write(f"plugin {stem}: FAILED: {error}\n")
    finally:
        registry.close()
    return failed


def _fail(message: str) -> NoReturn:
    """
    Stop twistd with one line on stderr and exit status 1: a configuration
    problem is not a usage problem, so twistd's usage text is not printed.
    """
    raise SystemExit(f"pluginserver: {message}")


def makeService(options: Options) -> PluginServerService | Supervisor:
    """
    Build the server from checked options: one process serving, or (with
    more than one worker) the supervisor of the processes that serve.
    """
    from twisted.internet import reactor

    from pluginserver.service import Listener, PluginServerService

    settings: Settings = options["settings"]
    parent: Any | None = getattr(options, "parent", None)
    nodaemon = bool(parent is None or parent.get("nodaemon"))
    if settings.workers > 1:
        from pluginserver.workers import Supervisor

        supervisor = Supervisor(
            settings,
            reload_settings=options.load,
            command={
                "config": os.path.abspath(options["config"]),
                "listen": options["listen"],
                "plugins": options["plugins"],
                "workers": options["workers"],
            },
            reactor=reactor,
            reactor_name=parent.get("reactor") if parent is not None else None,
            exitOnListenError=nodaemon,
        )
        if settings.log_format == "json" and not (parent is not None and parent.get("logger")):
            supervisor.logObserver = _JSONLogger(parent or {})()
        return supervisor
    server = PluginServerService(
        settings,
        reload_settings=options.load,
        reactor=reactor,
        exitOnListenError=nodaemon,
    )
    for description in settings.listen:
        Listener(
            description, settings.listen_source, reactor, server.site, ClientAuth.of(settings)
        ).setServiceParent(server)
    if settings.log_format == "json" and not (parent is not None and parent.get("logger")):
        server.logObserver = _JSONLogger(parent or {})()
    return server


__all__: list[str] = ["Options", "check", "makeService", "validate"]
