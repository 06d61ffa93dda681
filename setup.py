"""
pluginserver: a JSON API server whose routes are Python plugins.

Install with C{pip install .} (not a PEP 660 editable install: that drops the
twistd dropin in twisted/plugins/; use C{pip install -e . --config-settings
editable_mode=compat} for development).
"""

from setuptools import find_packages, setup

setup(
    name="pluginserver",
    version="0.1.0",
    description="A fast JSON API server whose routes are Python plugins, reloaded while it runs.",
    python_requires=">=3.11",
    # twisted/plugins is a namespace folder of dropins: find_packages skips it.
    # plugincore: the old aiohttp server's plugin API, so its plugins run unchanged.
    packages=[
        *find_packages(include=["pluginserver", "pluginserver.*", "plugincore", "plugincore.*"]),
        "twisted.plugins",
    ],
    # The dashboard's page, script, stylesheet and vendored chart library.
    package_data={"pluginserver": ["dashboard/*.*", "dashboard/vendor/*"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "pyopenssl",
        "service-identity",
        "psutil",
        "prometheus_client",
        # The asyncio reactor's loop: the standard loop costs a tenth to a
        # quarter of the throughput (docs/operations.md, "Reactors").
        "uvloop",
        # llhttp, Node.js's HTTP parser: every request is parsed by it
        # (pluginserver/channel.py), in its strict mode.
        "httptools",
    ],
    extras_require={
        # The checkers are pinned: their rules change between versions.
        "test": [
            "treq",
            "hypothesis",
            "cryptography",
            "mypy==2.4.1",
            "ruff==0.17.6",
            # A real server-sent events parser, to read EventStreams as clients do.
            "sseclient-py",
            # So that the tests render markdown documents as [markdown] does.
            "markdown",
            # /openapi.json is checked by the validator its users run.
            "openapi-spec-validator",
            # The dashboard's tests drive Debian's chromium through chromium-driver.
            "selenium",
            # The old server's plugins answer with aiohttp's responses ([compat]).
            "aiohttp",
        ],
        # For old aiohttp-server plugins that answer with aiohttp's
        # web.Response, json_response, FileResponse or HTTPExceptions
        # (plugincore); plugincore itself never imports aiohttp.
        "compat": ["aiohttp"],
        # .md files of [paths] documents trees are served rendered to HTML.
        "markdown": ["markdown"],
    },
)
