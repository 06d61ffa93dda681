# -*- test-case-name: tests.test_systeminfo_metrics -*-
"""
C{GET /systeminfo/metrics}: the systeminfo sample in the Prometheus text
format under node_exporter's names, read back by prometheus_client's own
text parser and checked name by name, label set by label set, against the
contract (../shared/DESIGN.md, "systeminfo"), and value by value against a
fake psutil and against the real one.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from plugins.systeminfo import METRICS, METRICS_CONTENT_TYPE, SECTIONS
from pluginserver.plugin import HTTPError, Response
from tests.test_systeminfo import BOOT, Base, FakeRunner, NetIO, get

FILESYSTEM = frozenset({"device", "mountpoint", "fstype"})
DEVICE = frozenset({"device"})
NONE: frozenset[str] = frozenset()

CONTRACT: Mapping[str, frozenset[str]] = {
    "node_cpu_seconds_total": frozenset({"cpu", "mode"}),
    "node_load1": NONE,
    "node_load5": NONE,
    "node_load15": NONE,
    "node_memory_MemTotal_bytes": NONE,
    "node_memory_MemAvailable_bytes": NONE,
    "node_memory_MemFree_bytes": NONE,
    "node_memory_SwapTotal_bytes": NONE,
    "node_memory_SwapFree_bytes": NONE,
    "node_filesystem_size_bytes": FILESYSTEM,
    "node_filesystem_avail_bytes": FILESYSTEM,
    "node_filesystem_free_bytes": FILESYSTEM,
    "node_network_receive_bytes_total": DEVICE,
    "node_network_transmit_bytes_total": DEVICE,
    "node_network_up": DEVICE,
    "node_boot_time_seconds": NONE,
    "node_time_seconds": NONE,
    "node_uname_info": frozenset({"sysname", "release", "version", "machine", "nodename"}),
    "pluginserver_packages_installed": frozenset({"manager"}),
    "pluginserver_packages_upgradable": frozenset({"manager"}),
}
"""Every sample name /systeminfo/metrics may carry, with its label names."""

PACKAGES = frozenset({"pluginserver_packages_installed", "pluginserver_packages_upgradable"})
"""The names present only once the package counts are known."""

COUNTERS = ("node_cpu_seconds_total", "node_network_receive_bytes_total")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(response: Any) -> tuple[Samples, dict[str, str]]:
    """
    The samples of an exposition, by name and sorted labels, as
    prometheus_client's parser reads them, and each family's type by the
    name its samples carry.
    """
    assert isinstance(response, Response)
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(response.body.decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
            types[sample.name] = family.type
    return samples, types


def only(samples: Samples, name: str) -> float:
    """The value of the one sample called C{name}."""
    values = [value for (n, _), value in samples.items() if n == name]
    assert len(values) == 1, (name, values)
    return values[0]


class ContractTests(Base):
    """
    Names, labels and types as the contract has them, values as the fake
    psutil gave them.
    """

    def setUp(self) -> None:
        self.runner = FakeRunner(
            {
                "dpkg-query": (0, "ii \nii \nrc \n"),
                ("apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"): (0, "Inst a\n"),
            }
        )

    def assertContract(self, samples: Samples) -> None:
        for name, labels in samples:
            self.assertIn(name, CONTRACT)
            self.assertEqual({label for label, _ in labels}, CONTRACT[name], name)

    def test_everyName(self) -> None:
        """
        Every name of the contract is there, with its labels and no other;
        counters are counters, the rest gauges.
        """
        plugin = self.started(runner=self.runner)
        plugin.index_globs = {"dpkg": None}
        self.clock.advance(3600)  # a package check that finds dpkg
        response = get(plugin, METRICS)
        self.assertEqual(response.content_type, METRICS_CONTENT_TYPE)
        self.assertEqual(response.status, 200)
        samples, types = parse(response)
        self.assertContract(samples)
        self.assertEqual({name for name, _ in samples}, set(CONTRACT))
        for name, kind in types.items():
            self.assertEqual(kind, "counter" if name.endswith("_total") else "gauge", name)

    def test_values(self) -> None:
        """
        Raw counters and base units, from the very sample JSON answers.
        """
        plugin = self.started(runner=self.runner)
        samples, _ = parse(get(plugin, METRICS))
        self.assertEqual(only(samples, "node_memory_MemTotal_bytes"), 8000)
        self.assertEqual(only(samples, "node_memory_MemAvailable_bytes"), 6000)
        self.assertEqual(only(samples, "node_memory_MemFree_bytes"), 5000)
        self.assertEqual(only(samples, "node_memory_SwapTotal_bytes"), 4000)
        self.assertEqual(only(samples, "node_memory_SwapFree_bytes"), 3000)
        self.assertEqual(only(samples, "node_load1"), 0.5)
        self.assertEqual(only(samples, "node_load5"), 0.25)
        self.assertEqual(only(samples, "node_load15"), 0.125)
        self.assertEqual(only(samples, "node_boot_time_seconds"), BOOT)
        self.assertEqual(only(samples, "node_time_seconds"), BOOT + 1000.0)
        self.assertEqual(only(samples, "node_time_seconds"), json.loads(get(plugin, "sampled_at")))
        cpu = {
            labels: value
            for (name, labels), value in samples.items()
            if name == "node_cpu_seconds_total"
        }
        modes = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        self.assertEqual(
            set(cpu),
            {(("cpu", str(i)), ("mode", mode)) for i in range(2) for mode in modes},
        )  # guest time is in user already: left out, as node_exporter does
        self.assertEqual(cpu[("cpu", "1"), ("mode", "user")], 5)
        self.assertEqual(cpu[("cpu", "0"), ("mode", "idle")], 45)
        root = (("device", "/dev/sda1"), ("fstype", "ext4"), ("mountpoint", "/"))
        self.assertEqual(samples["node_filesystem_size_bytes", root], 1000)
        self.assertEqual(samples["node_filesystem_avail_bytes", root], 600)
        self.assertEqual(samples["node_filesystem_free_bytes", root], 600)  # total - used
        eth0 = (("device", "eth0"),)
        self.assertEqual(samples["node_network_receive_bytes_total", eth0], 2000)
        self.assertEqual(samples["node_network_transmit_bytes_total", eth0], 1000)
        self.assertEqual(samples["node_network_up", eth0], 1)
        info = [labels for name, labels in samples if name == "node_uname_info"]
        self.assertEqual(dict(info[0]), json.loads(get(plugin, "info")))
        self.assertEqual(only(samples, "node_uname_info"), 1)

    def test_packagesOnceKnown(self) -> None:
        """
        The package counts appear once checked, with the manager's name;
        an unknown count is left out rather than said to be zero.
        """
        dpkg_runner = self.runner
        plugin = self.started(runner=FakeRunner({}))
        samples, _ = parse(get(plugin, METRICS))
        self.assertFalse(PACKAGES & {name for name, _ in samples})
        plugin = self.make(runner=dpkg_runner)
        plugin.index_globs = {"dpkg": os.path.join(self.mktemp(), "*_Packages")}
        plugin.start()
        samples, _ = parse(get(plugin, METRICS))
        dpkg = (("manager", "dpkg"),)
        self.assertEqual(samples["pluginserver_packages_installed", dpkg], 2)
        self.assertNotIn(("pluginserver_packages_upgradable", dpkg), samples)  # no index
        plugin.index_globs = {"dpkg": None}
        self.clock.advance(3600)
        samples, _ = parse(get(plugin, METRICS))
        self.assertEqual(samples["pluginserver_packages_upgradable", dpkg], 1)

    def test_unknownDiskLeftOut(self) -> None:
        """
        A mount whose usage call failed has no filesystem samples (unknown
        is not zero); the other mounts keep theirs.
        """
        plugin = self.make()
        self.ps.usage["/home"] = OSError(errno.EIO, "Input/output error")
        plugin.start()
        samples, _ = parse(get(plugin, METRICS))
        mounts = {
            dict(labels)["mountpoint"] for name, labels in samples if name.startswith("node_file")
        }
        self.assertEqual(mounts, {"/"})

    def test_encodedOncePerSample(self) -> None:
        """
        Every request between two samples gets the very same answer; the
        next sample brings a new one.
        """
        plugin = self.started(params={"interval": 1.0, "packages_interval": 0})
        first = get(plugin, METRICS)
        self.assertIs(get(plugin, METRICS + "/"), first)
        self.assertIs(get(plugin, "/" + METRICS), first)
        self.ps.counters = {"eth0": NetIO(1500, 2600, 2, 2), "lo": NetIO(10, 10, 1, 1)}
        self.clock.advance(1.0)
        second = get(plugin, METRICS)
        self.assertIsNot(second, first)
        samples, _ = parse(second)
        self.assertEqual(samples["node_network_receive_bytes_total", (("device", "eth0"),)], 2600)
        self.assertEqual(only(samples, "node_time_seconds"), BOOT + 1001.0)

    def test_notASection(self) -> None:
        """
        C{metrics} is no section of the JSON, and nothing is below it.
        """
        self.assertNotIn(METRICS, SECTIONS)
        plugin = self.started()
        for subpath in ("metrics/x", "metricsx"):
            with self.assertRaises(HTTPError, msg=subpath) as e:
                get(plugin, subpath)
            self.assertEqual(e.exception.status, 404)
        with self.assertRaises(HTTPError) as e:
            get(self.make(), METRICS)
        self.assertEqual(e.exception.status, 503)  # no sample yet

    def test_labelValuesEscaped(self) -> None:
        """
        A device or mount name with quotes, backslashes or a newline is
        escaped, and read back as it was.
        """
        odd = 'we"ird\\dev\nice'
        self.make()
        self.ps.counters = {odd: NetIO(1, 2, 1, 1)}
        plugin = self.started(ps=self.ps)
        samples, _ = parse(get(plugin, METRICS))
        self.assertEqual(samples["node_network_receive_bytes_total", (("device", odd),)], 2)


class RealHostTests(Base):
    """
    The real psutil of this host: the contract's names, the same memory
    total, and counters that only go up.
    """

    def test_againstPsutil(self) -> None:
        before = psutil.cpu_times(percpu=True)
        plugin = self.started(
            ps=psutil, real_time=True, params={"interval": 1.0, "packages_interval": 0}
        )
        first, _ = parse(get(plugin, METRICS))
        self.clock.advance(1.0)
        second, _ = parse(get(plugin, METRICS))
        after = psutil.cpu_times(percpu=True)
        for samples in (first, second):
            for name, labels in samples:
                self.assertIn(name, CONTRACT)
                self.assertEqual({label for label, _ in labels}, CONTRACT[name], name)
            self.assertEqual({name for name, _ in samples}, set(CONTRACT) - PACKAGES)
        self.assertEqual(only(second, "node_memory_MemTotal_bytes"), psutil.virtual_memory().total)
        self.assertEqual(only(second, "node_memory_SwapTotal_bytes"), psutil.swap_memory().total)
        self.assertEqual(only(second, "node_boot_time_seconds"), psutil.boot_time())
        cpus = {dict(labels)["cpu"] for name, labels in second if name == COUNTERS[0]}
        self.assertEqual(cpus, {str(i) for i in range(len(after))})
        for (name, labels), value in second.items():
            if name in COUNTERS and (name, labels) in first:
                self.assertGreaterEqual(value, first[name, labels], (name, labels))
            if name == "node_cpu_seconds_total":
                cpu = dict(labels)
                index, mode = int(cpu["cpu"]), cpu["mode"]
                self.assertGreaterEqual(value, getattr(before[index], mode), cpu)
                self.assertLessEqual(value, getattr(after[index], mode), cpu)
        self.assertGreater(only(second, "node_time_seconds"), only(first, "node_time_seconds"))
        mounts = {d["mount"] for d in json.loads(get(plugin, "disk")) if d["total"] is not None}
        self.assertTrue(mounts)
        for name in ("node_filesystem_size_bytes", "node_filesystem_avail_bytes"):
            found = {dict(labels)["mountpoint"] for n, labels in second if n == name}
            self.assertEqual(found, mounts, name)
