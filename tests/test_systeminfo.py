# -*- test-case-name: tests.test_systeminfo -*-
"""
Tests for the bundled systeminfo plugin (plugins/systeminfo.py).

Sampling is made deterministic with a L{Clock}, an inline C{defer_to_thread}
and, where exact numbers matter, a fake psutil and a fake command runner.
Disk probes always use real threads (that is what their timeout is about).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from plugins import systeminfo
from plugins.systeminfo import SECTIONS, STREAM, SystemInfo
from pluginserver.plugin import EventStream, HTTPError, PluginRequest, RawJSON

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Mem = namedtuple("Mem", "total available percent used free")
Swap = namedtuple("Swap", "total used free percent sin sout")
Part = namedtuple("Part", "device mountpoint fstype opts")
Usage = namedtuple("Usage", "total used free percent")
NetIO = namedtuple("NetIO", "bytes_sent bytes_recv packets_sent packets_recv")
Addr = namedtuple("Addr", "family address netmask broadcast ptp")
Stats = namedtuple("Stats", "isup speed mtu")
Freq = namedtuple("Freq", "current min max")

BOOT = 1_700_000_000.0


def cpu(user: float, idle: float, iowait: float = 0.0, guest: float = 0.0) -> CpuTimes:
    return CpuTimes(user, 0.0, 0.0, idle, iowait, 0.0, 0.0, 0.0, guest, 0.0)


class FakePsutil:
    """Just enough of psutil, with values the tests set."""

    def __init__(self) -> None:
        self.times = cpu(10, 90)
        self.per = [cpu(5, 45), cpu(5, 45)]
        self.counters = {"eth0": NetIO(1000, 2000, 1, 1), "lo": NetIO(10, 10, 1, 1)}
        self.partitions = [
            Part("/dev/sda1", "/", "ext4", "rw"),
            Part("/dev/sdb1", "/home", "xfs", "rw"),
        ]
        self.usage: dict[str, Any] = {
            "/": Usage(1000, 400, 600, 40.0),
            "/home": Usage(50, 5, 45, 10.0),
        }
        self.hang: dict[str, threading.Event] = {}
        self.usage_calls: list[str] = []
        self.memory: Callable[[], Mem] = lambda: Mem(8000, 6000, 25.0, 2000, 5000)

    def cpu_times(self, percpu: bool = False) -> Any:
        return list(self.per) if percpu else self.times

    def cpu_count(self) -> int:
        return len(self.per)

    def cpu_freq(self) -> Freq:
        return Freq(2400.0, 0.0, 0.0)

    def getloadavg(self) -> tuple[float, float, float]:
        return (0.5, 0.25, 0.125)

    def virtual_memory(self) -> Mem:
        return self.memory()

    def swap_memory(self) -> Swap:
        return Swap(4000, 1000, 3000, 25.0, 0, 0)

    def boot_time(self) -> float:
        return BOOT

    def disk_partitions(self, all: bool = False) -> list[Part]:
        assert all is False
        return list(self.partitions)

    def disk_usage(self, path: str) -> Usage:
        self.usage_calls.append(path)
        if path in self.hang:
            self.hang[path].wait(10)
        result = self.usage[path]
        if isinstance(result, Exception):
            raise result
        return result  # type: ignore[no-any-return]

    def net_io_counters(self, pernic: bool = False) -> dict[str, NetIO]:
        assert pernic
        return dict(self.counters)

    def net_if_addrs(self) -> dict[str, list[Addr]]:
        return {
            "eth0": [
                Addr(socket.AF_INET, "192.168.1.2", "255.255.255.0", None, None),
                Addr(socket.AF_INET6, "fe80::1%eth0", "ffff:ffff:ffff:ffff::", None, None),
                Addr(getattr(socket, "AF_PACKET", 17), "02:00:00:00:00:01", None, None, None),
            ],
            "lo": [Addr(socket.AF_INET, "127.0.0.1", "255.0.0.0", None, None)],
        }

    def net_if_stats(self) -> dict[str, Stats]:
        return {"eth0": Stats(True, 1000, 1500), "lo": Stats(True, 0, 65536)}


class FakeRunner:
    """Command runner: answers by whole argv, else by program name; unknown
    programs are missing (None)."""

    def __init__(self, answers: dict[Any, tuple[int, str] | None]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Any, timeout: float) -> tuple[int, str] | None:
        self.calls.append(tuple(argv))
        return self.answers.get(tuple(argv), self.answers.get(argv[0]))

    def programs(self) -> list[str]:
        return [argv[0] for argv in self.calls]


def inline(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args, **kwargs)


def get(plugin: SystemInfo, subpath: str = "") -> Any:
    return plugin.handle(PluginRequest("GET", subpath))


class Base(SynchronousTestCase):
    def make(
        self,
        params: dict[str, Any] | None = None,
        ps: Any = None,
        runner: Any = None,
        real_time: bool = False,
        **kw: Any,
    ) -> SystemInfo:
        self.clock = Clock()
        self.ps = ps if ps is not None else FakePsutil()
        self.runner = runner if runner is not None else FakeRunner({})
        if not real_time:
            kw.setdefault("timer", self.clock.seconds)
            kw.setdefault("now", lambda: BOOT + 1000.0 + self.clock.seconds())
        kw.setdefault("defer_to_thread", inline)
        plugin = SystemInfo(
            "systeminfo",
            params or {},
            None,
            clock=self.clock,
            ps=self.ps,
            run_command=self.runner,
            **kw,
        )
        self.addCleanup(self.cleanup, plugin)
        return plugin

    def cleanup(self, plugin: SystemInfo) -> None:
        plugin.stop()
        # Release any hung fake mount, and forget this fake's probes.
        for event in getattr(self.ps, "hang", {}).values():
            event.set()
        for key, probe in list(systeminfo._DISK_PROBES.items()):
            if key[0] is self.ps:
                probe.done.wait(5)
                systeminfo._DISK_PROBES.pop(key, None)

    def started(self, **kw: Any) -> SystemInfo:
        plugin = self.make(**kw)
        d = plugin.start()
        self.assertIsNone(self.successResultOf(d))
        return plugin


class RealHostTests(Base):
    """Every contract field and its type, sampled from this very host."""

    def test_fields_and_types(self) -> None:
        def runner(argv: Any, timeout: float) -> tuple[int, str] | None:
            if argv[0] in ("apt-get", "dnf", "apk", "pacman") and len(argv) > 2:
                return None  # upgrade checks are slow; covered with fakes below
            return plugin._run_command(argv, timeout)

        plugin = self.make(ps=__import__("psutil"), runner=runner, real_time=True)
        plugin.start()
        self.clock.advance(1.0)
        doc = json.loads(get(plugin))
        self.assertEqual(list(doc), list(SECTIONS))
        for section in SECTIONS:
            self.assertEqual(json.loads(get(plugin, section)), doc[section])

        def number(value: Any, nullable: bool = False) -> None:
            if value is None and nullable:
                return
            self.assertIsInstance(value, (int, float))
            self.assertNotIsInstance(value, bool)

        c = doc["cpu"]
        self.assertEqual(
            set(c), {"model", "count", "percent", "per_cpu", "freq_mhz", "loadavg", "times"}
        )
        self.assertIsInstance(c["model"], (str, type(None)))
        self.assertIsInstance(c["count"], int)
        number(c["percent"])
        self.assertTrue(0 <= c["percent"] <= 100)
        self.assertEqual(sorted(c["per_cpu"]), sorted(f"cpu{i}" for i in range(c["count"])))
        for value in c["per_cpu"].values():
            number(value)
        number(c["freq_mhz"], nullable=True)
        self.assertEqual(set(c["loadavg"]), {"1m", "5m", "15m"})
        for value in c["loadavg"].values():
            number(value)
        self.assertLessEqual({"user", "system", "idle"}, set(c["times"]))
        for value in c["times"].values():
            number(value)
        for section in ("ram", "swap"):
            self.assertEqual(set(doc[section]), {"total", "available", "used", "free", "percent"})
            for key in ("total", "available", "used", "free"):
                self.assertIsInstance(doc[section][key], int)
            number(doc[section]["percent"])
        self.assertGreater(doc["ram"]["total"], 0)
        self.assertIsInstance(doc["disk"], list)
        for d in doc["disk"]:
            self.assertEqual(
                set(d), {"device", "mount", "fstype", "total", "used", "free", "percent"}
            )
            self.assertTrue(d["mount"].startswith("/") or os.name == "nt")
            self.assertNotIn(d["fstype"], systeminfo.IGNORED_FSTYPES)
            for key in ("total", "used", "free", "percent"):
                number(d[key])
        self.assertEqual(len({d["device"] for d in doc["disk"]}), len(doc["disk"]))
        self.assertIsInstance(doc["net"], list)
        self.assertTrue(doc["net"])
        for n in doc["net"]:
            self.assertEqual(
                set(n),
                {"iface", "addresses", "is_up", "bytes_sent", "bytes_recv", "tx_bps", "rx_bps"},
            )
            self.assertIsInstance(n["iface"], str)
            self.assertIsInstance(n["is_up"], bool)
            for address in n["addresses"]:
                self.assertIn("/", address)
                self.assertEqual(str(ipaddress.ip_interface(address)), address)
            self.assertIsInstance(n["bytes_sent"], int)
            self.assertIsInstance(n["bytes_recv"], int)
            number(n["tx_bps"])  # second sample: known
            number(n["rx_bps"])
            self.assertGreaterEqual(n["tx_bps"], 0)
        if sys.platform.startswith("linux"):
            self.assertIn("127.0.0.1/8", [a for n in doc["net"] for a in n["addresses"]])
        u = doc["uptime"]
        self.assertEqual(set(u), {"seconds", "boot_time", "pretty"})
        self.assertIsInstance(u["seconds"], int)
        self.assertGreater(u["seconds"], 0)
        self.assertLess(abs(u["boot_time"] + u["seconds"] - time.time()), 5)
        self.assertIsInstance(u["pretty"], str)
        self.assertEqual(set(doc["info"]), {"sysname", "nodename", "release", "version", "machine"})
        for value in doc["info"].values():
            self.assertIsInstance(value, str)
        p = doc["packages"]
        self.assertEqual(set(p), {"manager", "installed", "upgradable", "checked_at"})
        if shutil.which("dpkg-query"):
            self.assertEqual(p["manager"], "dpkg")
            self.assertIsInstance(p["installed"], int)
            self.assertGreater(p["installed"], 0)
        self.assertIsNone(p["upgradable"])  # the runner refused the upgrade check
        number(p["checked_at"])
        number(doc["sampled_at"])
        self.assertLess(abs(doc["sampled_at"] - time.time()), 5)


class RateTests(Base):
    def test_first_sample_is_null(self) -> None:
        plugin = self.started()
        for n in json.loads(get(plugin, "net")):
            self.assertIsNone(n["tx_bps"])
            self.assertIsNone(n["rx_bps"])
        self.assertIsNone(get(plugin, "cpu/percent"))
        self.assertEqual(get(plugin, "cpu/per_cpu"), {"cpu0": None, "cpu1": None})

    def test_exact_rates(self) -> None:
        plugin = self.started(params={"interval": 2.0})
        self.ps.counters = {"eth0": NetIO(3000, 2500, 2, 2), "lo": NetIO(10, 10, 1, 1)}
        self.clock.advance(2.0)
        self.assertEqual(get(plugin, "net/eth0/tx_bps"), 1000.0)
        self.assertEqual(get(plugin, "net/eth0/rx_bps"), 250.0)
        self.assertEqual(get(plugin, "net/lo/tx_bps"), 0.0)

    def test_counter_reset_is_never_negative(self) -> None:
        plugin = self.started()
        self.ps.counters = {"eth0": NetIO(100, 50, 1, 1)}
        self.clock.advance(1.0)
        self.assertIsNone(get(plugin, "net/eth0/tx_bps"))
        self.assertIsNone(get(plugin, "net/eth0/rx_bps"))
        self.assertEqual(get(plugin, "net/eth0/bytes_sent"), 100)
        self.ps.counters = {"eth0": NetIO(600, 1050, 1, 1), "wg0": NetIO(7, 7, 1, 1)}
        self.clock.advance(1.0)
        self.assertEqual(get(plugin, "net/eth0/tx_bps"), 500.0)
        self.assertEqual(get(plugin, "net/eth0/rx_bps"), 1000.0)
        self.assertIsNone(get(plugin, "net/wg0/tx_bps"))  # new interface: first sample

    def test_cpu_percent(self) -> None:
        plugin = self.started()
        # total: 20 busy of 40; guest is already inside user; iowait is idle
        self.ps.times = cpu(30, 100, iowait=10, guest=5)
        self.ps.per = [cpu(5, 55), cpu(15, 45)]
        self.clock.advance(1.0)
        self.assertEqual(get(plugin, "cpu/percent"), 50.0)
        self.assertEqual(get(plugin, "cpu/per_cpu"), {"cpu0": 0.0, "cpu1": 100.0})
        self.assertEqual(get(plugin, "cpu/count"), 2)
        self.assertEqual(get(plugin, "cpu/freq_mhz"), 2400.0)
        self.assertEqual(get(plugin, "cpu/times/user"), 30)
        self.clock.advance(1.0)  # no tick elapsed: 0, as psutil says, not null
        self.assertEqual(get(plugin, "cpu/percent"), 0.0)
        self.assertEqual(get(plugin, "cpu/per_cpu"), {"cpu0": 0.0, "cpu1": 0.0})


class DiskTests(Base):
    def test_filter_and_dedupe(self) -> None:
        self.ps = ps = FakePsutil()
        ps.partitions = [
            Part("/dev/sda1", "/var/lib/docker/bind", "ext4", "rw"),
            Part("/dev/sda1", "/", "ext4", "rw"),
            Part("tmpfs", "/run", "tmpfs", "rw"),
            Part("overlay", "/merged", "overlay", "rw"),
            Part("/dev/loop0", "/snap/core/1", "squashfs", "ro"),
            Part("proc", "/proc", "proc", "rw"),
            Part("/dev/sdb1", "/home", "xfs", "rw"),
        ]
        plugin = self.started(ps=ps)
        self.assertEqual(
            get(plugin, "disk//"),
            {
                "device": "/dev/sda1",
                "mount": "/",
                "fstype": "ext4",
                "total": 1000,
                "used": 400,
                "free": 600,
                "percent": 40.0,
            },
        )
        self.assertEqual([d["mount"] for d in json.loads(get(plugin, "disk"))], ["/", "/home"])
        self.assertEqual(sorted(ps.usage_calls), ["/", "/home"])

    def test_error_is_per_mount(self) -> None:
        self.ps = ps = FakePsutil()
        ps.usage["/home"] = OSError(errno.EIO, "Input/output error")
        plugin = self.started(ps=ps)
        self.assertEqual(
            get(plugin, "disk/home"),
            {
                "device": "/dev/sdb1",
                "mount": "/home",
                "fstype": "xfs",
                "total": None,
                "used": None,
                "free": None,
                "percent": None,
                "error": "Input/output error",
            },
        )
        self.assertEqual(get(plugin, "disk///free"), 600)

    def test_hung_mount_times_out_alone(self) -> None:
        self.ps = ps = FakePsutil()
        ps.hang["/home"] = threading.Event()
        began = time.monotonic()
        plugin = self.started(ps=ps, params={"disk_timeout": 0.05})
        self.assertEqual(get(plugin, "disk//home/error"), "timeout")
        self.assertIsNone(get(plugin, "disk//home/free"))
        self.assertEqual(get(plugin, "disk//free"), 600)
        # Still hung: reported again, but never asked again (no thread pile-up),
        # not even by the next generation after a reload.
        self.clock.advance(1.0)
        plugin.stop()
        plugin2 = self.started(ps=ps, params={"disk_timeout": 0.05})
        self.assertEqual(get(plugin2, "disk//home/error"), "timeout")
        self.assertEqual(ps.usage_calls.count("/home"), 1)
        self.assertEqual(ps.usage_calls.count("/"), 3)
        self.assertLess(time.monotonic() - began, 0.5)
        # Unhung: its late answer is used, then it is asked afresh.
        ps.hang.pop("/home").set()
        self.clock.advance(1.0)
        self.assertEqual(get(plugin2, "disk//home/free"), 45)
        self.assertNotIn("error", get(plugin2, "disk//home"))
        self.clock.advance(1.0)
        self.assertEqual(ps.usage_calls.count("/home"), 2)


class PackageTests(Base):
    def setUp(self) -> None:
        index = self.mktemp()
        os.makedirs(index)
        open(os.path.join(index, "present"), "w").close()
        self.present = os.path.join(index, "pres*")
        self.absent = os.path.join(index, "absent*")

    def check(self, answers: dict[Any, tuple[int, str] | None], index: bool = True) -> Any:
        plugin = self.make(runner=FakeRunner(answers))
        pattern = self.present if index else self.absent
        plugin.index_globs = {"dpkg": pattern, "apk": pattern, "pacman": pattern, "rpm": None}
        self.successResultOf(plugin.start())
        packages = get(plugin, "packages")
        self.assertIsInstance(packages, RawJSON)
        result = json.loads(packages)
        self.assertEqual(result["checked_at"], BOOT + 1000.0)
        return result

    def test_dpkg(self) -> None:
        result = self.check(
            {
                "dpkg-query": (0, "ii \nii \nrc \nhi \n"),
                "apt-get": (
                    0,
                    "NOTE: simulation\nInst a [1] (2 x)\nConf a (2 x)\nInst b [1] (3 y)\n",
                ),
            }
        )
        self.assertEqual(
            result,
            {"manager": "dpkg", "installed": 3, "upgradable": 2, "checked_at": BOOT + 1000.0},
        )
        self.assertEqual(
            self.runner.calls[-1], ("apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade")
        )

    def test_dpkg_without_local_index(self) -> None:
        result = self.check(
            {"dpkg-query": (0, "ii \n"), "apt-get": (0, "Inst a [1] (2)\n")}, index=False
        )
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("dpkg", 1, None)
        )
        self.assertNotIn("apt-get", self.runner.programs())

    def test_rpm(self) -> None:
        updates = (
            "\nfoo.x86_64  1.0-1  updates\nbar.noarch 2.0 updates\n"
            "\nObsoleting Packages\nnew.x86_64 2 updates\n    old.x86_64 1 @System\n"
        )
        result = self.check({"rpm": (0, "a-1\nb-2\nc-3\n"), "dnf": (100, updates)})
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("rpm", 3, 2)
        )
        self.assertEqual(self.runner.programs(), ["dpkg-query", "apk", "pacman", "rpm", "dnf"])

    def test_rpm_without_dnf(self) -> None:
        result = self.check({"rpm": (0, "a-1\n"), "dpkg-query": (2, "error")})
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("rpm", 1, None)
        )

    APK: ClassVar[dict[Any, tuple[int, str] | None]] = {
        ("apk", "info"): (0, "musl\nbusybox\nalpine-baselayout\n"),
        ("apk", "--no-network", "version", "-l", "<"): (
            0,
            "Installed:                Available:\nbusybox-1.36.1-r2        < 1.36.1-r5\n",
        ),
    }

    def test_apk(self) -> None:
        result = self.check(self.APK)
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("apk", 3, 1)
        )

    def test_apk_without_local_index(self) -> None:
        result = self.check(self.APK, index=False)
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("apk", 3, None)
        )

    def test_pacman(self) -> None:
        result = self.check({"pacman": (0, "a 1\nb 2\n"), ("pacman", "-Qu"): (1, "")})
        self.assertEqual(
            (result["manager"], result["installed"], result["upgradable"]), ("pacman", 2, 0)
        )

    def test_pacman_nothing_upgradable(self) -> None:
        runner = FakeRunner({"pacman": (0, "a 1\nb 2\n")})
        plugin = self.make(runner=runner)
        plugin.index_globs = {"pacman": self.present}
        runner.answers["pacman"] = (1, "")
        self.assertEqual(plugin._upgradable("pacman"), 0)
        runner.answers["pacman"] = (0, "a 1 -> 2\n")
        self.assertEqual(plugin._upgradable("pacman"), 1)
        runner.answers["pacman"] = None
        self.assertIsNone(plugin._upgradable("pacman"))

    def test_none(self) -> None:
        result = self.check({})
        self.assertEqual(
            result,
            {"manager": None, "installed": None, "upgradable": None, "checked_at": BOOT + 1000.0},
        )

    def test_rechecked_every_interval(self) -> None:
        runner = FakeRunner({"dpkg-query": (0, "ii \n")})
        plugin = self.started(runner=runner, params={"packages_interval": 60.0})
        self.assertEqual(get(plugin, "packages/installed"), 1)
        runner.answers["dpkg-query"] = (0, "ii \nii \n")
        self.clock.advance(59.0)
        self.assertEqual(get(plugin, "packages/installed"), 1)
        self.clock.advance(1.0)
        self.assertEqual(get(plugin, "packages/installed"), 2)
        self.assertEqual(json.loads(get(plugin))["packages"]["installed"], 2)

    def test_disabled(self) -> None:
        plugin = self.started(params={"packages_interval": 0})
        self.assertEqual(self.runner.calls, [])
        self.assertIsNone(get(plugin, "packages/manager"))


class RunCommandTests(Base):
    def test_output(self) -> None:
        plugin = self.make()
        code = "import os; print(os.environ['LC_ALL'])"
        self.assertEqual(plugin._run_command([sys.executable, "-c", code], 10), (0, "C\n"))

    def test_missing_program(self) -> None:
        self.assertIsNone(self.make()._run_command(["/nonexistent/prog"], 10))

    def test_timeout_kills(self) -> None:
        began = time.monotonic()
        result = self.make()._run_command(
            [sys.executable, "-c", "import time; time.sleep(30)"], 0.2
        )
        self.assertIsNone(result)
        self.assertLess(time.monotonic() - began, 2)

    def test_stop_kills(self) -> None:
        plugin = self.make()
        out: list[Any] = []
        argv = [sys.executable, "-c", "import time; time.sleep(30)"]
        worker = threading.Thread(target=lambda: out.append(plugin._run_command(argv, 30)))
        began = time.monotonic()
        worker.start()
        while not plugin._procs and time.monotonic() - began < 5:
            time.sleep(0.005)
        plugin.stop()
        worker.join(5)
        self.assertFalse(worker.is_alive())
        self.assertNotEqual(out[0][0], 0)
        self.assertLess(time.monotonic() - began, 2)


class SubpathTests(Base):
    def setUp(self) -> None:
        self.plugin = self.started()

    def test_whole(self) -> None:
        whole = get(self.plugin)
        self.assertIsInstance(whole, RawJSON)
        self.assertIs(get(self.plugin, "/"), whole)  # encoded once, not per request
        self.assertEqual(list(json.loads(whole)), list(SECTIONS))
        self.assertEqual(json.loads(whole)["sampled_at"], BOOT + 1000.0)

    def test_section(self) -> None:
        for section in SECTIONS:
            raw = get(self.plugin, section)
            self.assertIsInstance(raw, RawJSON)
            self.assertIs(get(self.plugin, section + "/"), raw)
            self.assertEqual(json.loads(raw), json.loads(get(self.plugin))[section])

    def test_fields(self) -> None:
        p = self.plugin
        self.assertEqual(get(p, "cpu/loadavg/1m"), 0.5)
        self.assertEqual(get(p, "ram/total"), 8000)
        self.assertEqual(get(p, "swap/available"), 3000)
        self.assertEqual(get(p, "uptime/seconds"), 1000)
        self.assertEqual(get(p, "uptime/pretty"), "0:16:40")
        self.assertEqual(get(p, "net/eth0/addresses"), ["192.168.1.2/24", "fe80::1/64"])
        self.assertEqual(get(p, "net/eth0")["iface"], "eth0")
        self.assertEqual(get(p, "net/lo/is_up"), True)
        self.assertEqual(get(p, "disk//")["mount"], "/")
        self.assertEqual(get(p, "disk//home")["mount"], "/home")
        self.assertEqual(get(p, "disk/home")["mount"], "/home")
        self.assertEqual(get(p, "disk//home/free"), 45)
        self.assertEqual(get(p, "disk/home/free/"), 45)
        self.assertEqual(get(p, "disk//free"), 600)

    def test_unknown(self) -> None:
        for subpath in (
            "nope",
            "/cpu",
            "cpu/nope",
            "cpu/percent/x",
            "cpu/loadavg/2m",
            "net/wlan9",
            "net/eth0/nope",
            "disk//nope",
            "disk/var",
            "sampled_at/x",
        ):
            with self.assertRaises(HTTPError, msg=subpath) as e:
                get(self.plugin, subpath)
            self.assertEqual(e.exception.status, 404, subpath)
        with self.assertRaises(HTTPError) as e:
            get(self.plugin, "foo")
        self.assertEqual(e.exception.message, "unknown section: foo")

    def test_no_system_calls(self) -> None:
        class Exploding:
            def __getattr__(self, name: str) -> Any:
                raise AssertionError(f"handle() called psutil.{name}")

        self.plugin._ps = Exploding()
        self.plugin._run = None  # type: ignore[assignment]
        for subpath in ("", "cpu", "cpu/percent", "net/eth0", "disk//home/free", "packages"):
            get(self.plugin, subpath)

    def test_before_first_sample(self) -> None:
        with self.assertRaises(HTTPError) as e:
            get(self.make())
        self.assertEqual(e.exception.status, 503)


class SamplerTests(Base):
    def controlled(
        self, **kw: Any
    ) -> tuple[SystemInfo, list[tuple[Callable[[], Any], Deferred[Any]]]]:
        calls: list[tuple[Callable[[], Any], Deferred[Any]]] = []

        def defer(f: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            calls.append((f, d))
            return d

        return self.make(defer_to_thread=defer, **kw), calls

    def test_never_overlaps(self) -> None:
        plugin, calls = self.controlled(params={"packages_interval": 0})
        first = plugin.start()
        self.assertNoResult(first)
        self.clock.advance(5.0)
        self.assertEqual(len(calls), 1)  # one in flight: no new one
        f, d = calls.pop()
        d.callback(f())
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(get(plugin, "sampled_at"), b"%r" % (BOOT + 1005.0))
        self.assertEqual(len(calls), 0)
        self.clock.advance(1.0)
        self.assertEqual(len(calls), 1)

    def test_stop_drops_work_in_flight(self) -> None:
        plugin, calls = self.controlled()
        first = plugin.start()
        plugin.stop()
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(calls), 2)  # a sample and a package check
        for f, d in calls:
            d.callback(f())
        with self.assertRaises(HTTPError):
            get(plugin)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_sample_keeps_last_snapshot(self) -> None:
        plugin = self.started()
        before = get(plugin)

        def boom() -> Mem:
            raise RuntimeError("boom")

        self.ps.memory = boom
        self.clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIs(get(plugin), before)
        self.assertTrue(plugin._sampler.running)
        self.ps.memory = FakePsutil().memory
        self.clock.advance(1.0)
        self.assertEqual(json.loads(get(plugin))["sampled_at"], BOOT + 1002.0)

    def test_fresh_every_interval(self) -> None:
        plugin = self.started(params={"interval": 0.5})
        for i in range(1, 5):
            self.clock.advance(0.5)
            self.assertEqual(json.loads(get(plugin))["sampled_at"], BOOT + 1000.0 + 0.5 * i)

    def test_hundred_start_stop_cycles(self) -> None:
        self.make(ps=FakePsutil())  # its cleanup forgets self.ps's disk probes
        clock = Clock()
        plugins = []
        for _ in range(100):
            plugin = SystemInfo(
                "systeminfo",
                {},
                None,
                clock=clock,
                ps=self.ps,
                run_command=FakeRunner({}),
                defer_to_thread=inline,
            )
            plugin.start()
            clock.advance(0.5)
            plugin.stop()
            plugins.append(plugin)
            self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(any(p._sampler.running or p._packages_loop.running for p in plugins))
        clock.advance(7200)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_params(self) -> None:
        self.assertEqual(self.make(params={"interval": "2"}).interval, 2.0)
        plugin = self.make()
        self.assertEqual(
            (
                plugin.interval,
                plugin.disk_timeout,
                plugin.packages_interval,
                plugin.packages_timeout,
            ),
            (1.0, 2.0, 3600.0, 120.0),
        )
        for bad in (
            {"interval": 0},
            {"interval": -1},
            {"disk_timeout": float("nan")},
            {"interval": "x"},
        ):
            self.assertRaises(ValueError, self.make, params=bad)


class ReloadThroughRegistryTests(TestCase):
    """
    The bundled plugin, loaded from its file by a real registry and reloaded
    over and over, as /reload/systeminfo does.
    """

    timeout = 120

    @staticmethod
    def runningSamplers() -> list[Any]:
        import gc

        return [
            o
            for o in gc.get_objects()
            if isinstance(o, LoopingCall)
            and o.running
            and type(getattr(o.f, "__self__", None)).__name__ == "SystemInfo"
        ]

    @defer.inlineCallbacks
    def test_hundredReloadsLeaveOneSampler(self) -> Any:
        import os
        import shutil
        import threading

        from tests.helpers import PluginDir

        plugins = PluginDir(self)
        source = os.path.join(os.path.dirname(__file__), "..", "plugins", "systeminfo.py")
        shutil.copy(source, plugins.path)
        registry = plugins.registry(
            self, params={"systeminfo": {"interval": 0.05, "packages_interval": 0}}
        )
        yield registry.load_all()
        self.assertEqual(len(self.runningSamplers()), 1)
        threadsBefore = threading.active_count()
        fdsBefore = len(os.listdir("/proc/self/fd"))
        for _ in range(100):
            outcome = yield registry.reload("systeminfo")
            self.assertTrue(outcome.success, outcome.error)
        loaded = registry.get("systeminfo")
        assert loaded is not None
        self.assertEqual(loaded.generation, 101)
        self.assertEqual(len(self.runningSamplers()), 1)
        # Sampling threads come and go; none may pile up per generation.
        self.assertLessEqual(threading.active_count(), threadsBefore + 2)
        self.assertLessEqual(len(os.listdir("/proc/self/fd")), fdsBefore + 2)
        yield registry.stop_all()
        self.assertEqual(self.runningSamplers(), [])


def _next(events: Any) -> Deferred[Any]:
    """The next item of an async iterator, as a Deferred."""

    async def step() -> Any:
        return await events.__anext__()

    return Deferred.fromCoroutine(step())


class StreamTests(Base):
    """
    C{/systeminfo/stream}: an EventStream of the published snapshots.
    """

    def test_route(self) -> None:
        """
        C{stream} is no section, and nothing is below it.
        """
        self.assertNotIn(STREAM, SECTIONS)
        plugin = self.started()
        for subpath in (STREAM, STREAM + "/"):
            self.assertIsInstance(get(plugin, subpath), EventStream)
        for subpath in ("stream/x", "streams"):
            with self.assertRaises(HTTPError, msg=subpath) as e:
                get(plugin, subpath)
            self.assertEqual(e.exception.status, 404)
        with self.assertRaises(HTTPError) as e:
            get(self.make(), STREAM)
        self.assertEqual(e.exception.status, 503)  # no sample yet

    def test_eachSampleOnce(self) -> None:
        """
        The latest snapshot at once (the very RawJSON GET /systeminfo
        answers), then each new sample as the sampler publishes it, and
        nothing in between.
        """
        plugin = self.started(params={"interval": 0.5, "packages_interval": 0})
        events = get(plugin, STREAM).body
        first = self.successResultOf(_next(events))
        self.assertIs(first, get(plugin))
        pending = _next(events)
        self.assertNoResult(pending)
        self.clock.advance(0.25)
        self.assertNoResult(pending)
        self.clock.advance(0.25)
        second = self.successResultOf(pending)
        self.assertIs(second, get(plugin))
        self.assertEqual(json.loads(second)["sampled_at"], BOOT + 1000.5)
        self.assertEqual(list(json.loads(second)), list(SECTIONS))

    def test_stopEndsTheStream(self) -> None:
        """
        The generation's stop() ends its streams, and leaves no waiter.
        """
        plugin = self.started()
        events = get(plugin, STREAM).body
        self.successResultOf(_next(events))
        pending = _next(events)
        plugin.stop()
        self.failureResultOf(pending, StopAsyncIteration)
        self.assertEqual(plugin._waiters, set())

    def test_clientGoneLeavesNoWaiter(self) -> None:
        """
        A stream cancelled while it waits (its client went away) leaves
        nothing behind.
        """
        plugin = self.started()
        events = get(plugin, STREAM).body
        self.successResultOf(_next(events))
        pending = _next(events)
        self.assertEqual(len(plugin._waiters), 1)
        pending.cancel()
        self.failureResultOf(pending, defer.CancelledError)
        self.assertEqual(plugin._waiters, set())
        self.clock.advance(1.0)  # a sample with no one waiting


def _sse(port: int, count: int) -> tuple[dict[str, str], list[Any]]:
    """
    C{count} events of C{/systeminfo/stream}, parsed by a real SSE parser,
    and the answer's headers.
    """
    import http.client

    from sseclient import SSEClient

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/systeminfo/stream", headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        headers["status"] = str(response.status)
        events = []
        for event in SSEClient(response).events():
            events.append(event)
            if len(events) == count:
                break
        return headers, events
    finally:
        connection.close()


class StreamProcessTests(TestCase):
    """
    C{/systeminfo/stream} from a real server, read by a real SSE parser.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_samplesAsEvents(self) -> Any:
        from twisted.internet.threads import deferToThread

        from tests.process import Server

        server = Server(
            self,
            ini="""
            [plugin_parms]
            systeminfo = interval=float:0.2&packages_interval=float:0
            """,
        )
        source = os.path.join(os.path.dirname(__file__), "..", "plugins", "systeminfo.py")
        shutil.copy(source, server.plugins)
        yield server.start()
        headers, events = yield deferToThread(_sse, server.port, 3)
        self.assertEqual(headers["status"], "200")
        self.assertEqual(headers["content-type"], "text/event-stream")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(len(events), 3)
        samples = [json.loads(event.data) for event in events]
        for sample in samples:
            self.assertEqual(list(sample), list(SECTIONS))
        times = [sample["sampled_at"] for sample in samples]
        self.assertEqual(times, sorted(set(times)))  # each a new sample
        self.assertLess(times[-1] - times[0], 2.0)
        yield server.stop()
