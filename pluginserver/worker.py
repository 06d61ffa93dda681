# -*- test-case-name: tests.test_workers -*-
"""
A worker process of a supervising C{twistd pluginserver} (C{[server]
workers} above 1): C{python -m pluginserver.worker SPEC}, started by the
supervisor only (L{pluginserver.workers}).

The configuration is read and the reactor installed here, as C{twistd
pluginserver} does, before anything imports Klein (which would install the
default reactor).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the worker that C{argv[1]} (the supervisor's JSON) describes;
    return its exit status.
    """
    from pluginserver.config import ConfigError
    from pluginserver.tap import Options, install_reactor

    args = list(sys.argv if argv is None else argv)
    spec = json.loads(args[1])
    try:
        settings = Options.of(spec).load()
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        return 2
    if spec.get("reactor"):
        from twisted.application.reactors import installReactor

        installReactor(spec["reactor"])
    else:
        install_reactor(settings)
    from twisted.internet import reactor

    from pluginserver.workers import run_worker

    return run_worker(spec, settings, reactor)


if __name__ == "__main__":
    sys.exit(main())
