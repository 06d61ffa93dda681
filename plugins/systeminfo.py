# -*- test-case-name: tests.test_systeminfo -*-
"""
systeminfo: the host's cpu, memory, disks, network interfaces (with live
rates), uptime, uname and package counts, served from a snapshot.

C{GET /systeminfo} answers one JSON object with these sections (units in
brackets; C{null} where a value is unknown or not yet measured):

  - C{cpu}: C{model} (string), C{count} (logical cpus), C{percent} (busy
    time since the previous sample, percent of all cpus), C{per_cpu}
    (C{{"cpu0": percent, ...}}), C{freq_mhz} (current frequency, MHz),
    C{loadavg} (C{{"1m", "5m", "15m"}}: run-queue length), C{times}
    (C{{"user", "system", "idle", ...}}: every field psutil reports for this
    OS, seconds of cpu time since boot, summed over all cpus).
    C{percent} and C{per_cpu} values are C{null} until the second sample,
    and 0.0 when no cpu time was accounted between two samples (as psutil).
  - C{ram}, C{swap}: C{total}, C{available}, C{used}, C{free} (bytes),
    C{percent} (used, percent).  Swap has no "available": it equals C{free}.
  - C{disk}: a list of C{{device, mount, fstype, total, used, free}} (bytes)
    plus C{percent} (used, percent), one per real local filesystem (no
    proc/sysfs/tmpfs/overlay/squashfs/..., one entry per device: the
    shortest mount path wins).  A mount whose usage call fails or takes more
    than C{disk_timeout} has null numbers and an extra C{error} field
    (C{"timeout"} or the OS error text); the others are unaffected.  A hung
    call is not repeated: its late answer is used once it comes.
  - C{net}: a list of C{{iface, addresses, is_up, bytes_sent, bytes_recv,
    tx_bps, rx_bps}}: C{addresses} are CIDR strings (C{"192.168.1.2/24"},
    C{"fe80::1/64"}), byte counters are totals since boot or the counter's
    last reset (bytes), rates are bytes per second between the last two
    samples.  A
    rate is C{null} on an interface's first sample, and for the one
    interval in which its counter went down (a reset or wrap: the traffic in
    that interval is unknown, so no number is better than a wrong one).
  - C{uptime}: C{seconds} (whole seconds since boot), C{boot_time} (unix
    time, seconds), C{pretty} (C{"3 days, 4:05:06"}).
  - C{info}: uname's C{sysname}, C{nodename}, C{release}, C{version},
    C{machine} (strings).
  - C{packages}: C{manager} (C{"dpkg"}, C{"apk"}, C{"pacman"}, C{"rpm"} or
    null), C{installed} and C{upgradable} (counts; C{upgradable} is null
    when it cannot be known without the network, e.g. no local package
    index), C{checked_at} (unix time, seconds).  Null until the first check.
  - C{sampled_at}: when this snapshot was taken (unix time, seconds).  The
    data is never older than C{interval} plus the time one sample takes.

C{GET /systeminfo/stream} is a stream of server-sent events
(C{text/event-stream}): each sample as it is taken, the same JSON as
C{GET /systeminfo}, one event per sample (the latest at once when the
stream opens), with a C{: keep-alive} comment every 15 s.  It ends when the
client goes away and when this generation stops (a reload, an unload, the
server's stop): a client's EventSource then reconnects, to the new one.
A client that reads slowly gets the latest sample when it can take one,
never a backlog.  The route is not a section: C{stream/...} is 404.

C{GET /systeminfo/metrics} answers the same sample in the Prometheus text
format (C{text/plain; version=0.0.4}), under node_exporter's metric names and
labels, so that a Prometheus and the dashboards already made for
node_exporter read it unchanged: C{node_cpu_seconds_total{cpu,mode}} (per
cpu; modes as psutil reports them for this OS, guest time left out as
node_exporter leaves it out), C{node_load1}, C{node_load5}, C{node_load15},
C{node_memory_MemTotal_bytes}, C{node_memory_MemAvailable_bytes},
C{node_memory_MemFree_bytes}, C{node_memory_SwapTotal_bytes},
C{node_memory_SwapFree_bytes}, C{node_filesystem_size_bytes},
C{node_filesystem_avail_bytes} (for unprivileged users),
C{node_filesystem_free_bytes} (root's reserve included)
C{{device,mountpoint,fstype}} (a mount whose usage is unknown is left out),
C{node_network_receive_bytes_total}, C{node_network_transmit_bytes_total},
C{node_network_up} C{{device}}, C{node_boot_time_seconds},
C{node_time_seconds} (when the sample was taken),
C{node_uname_info{sysname,release,version,machine,nodename}} (always 1),
and C{pluginserver_packages_installed{manager}},
C{pluginserver_packages_upgradable{manager}} once known.  Raw counters and
base units (bytes, seconds): Prometheus computes the rates.  The text is
encoded once per sample, in the sampler's thread, like the JSON.  The route
is not a section: C{metrics/...} is 404.

C{GET /systeminfo/<section>} answers one section.  Below a section, a path
names a field (C{cpu/percent}, C{cpu/loadavg/1m}); the C{disk} and C{net}
lists are indexed by their natural key: C{net/eth0}, C{net/eth0/rx_bps},
and for disks the mount path written after C{disk/}, its leading slash
optional: C{disk//} or C{disk/%2F} (the root filesystem), C{disk//home} or
C{disk/home}, C{disk//home/free}, C{disk//free} (root's C{free}).  An exact
mount path wins over a field.  Anything unknown: 404.  The whole document
and each section are L{RawJSON} encoded once per sample; a field is a plain
value, encoded by the server.  C{start()} fires after the first sample, so a
started plugin always has one (before that: 503 C{"no sample yet"}).

Params: C{interval} (seconds between samples, default 1), C{disk_timeout}
(seconds one disk-usage call may take, default 2), C{packages_interval}
(seconds between package checks, default 3600; 0 disables them),
C{packages_timeout} (seconds one package command may run, default 120).

How it stays off the reactor: a C{LoopingCall} takes a whole sample in a
thread (psutil, uname, disk usage) and never overlaps itself; the sections
are encoded to JSON there, once per sample, and C{handle} only reads the
published snapshot.  Each disk-usage call runs in its own daemon thread,
waited for up to C{disk_timeout}; a call that hangs (a dead mount) is not
repeated while it hangs, so it costs one thread however long it lasts and
however often the plugin is reloaded.  Package commands run in a thread,
under a timeout, and are killed by C{stop}.  CPU percentages are computed
from C{cpu_times} deltas held by this instance, as psutil's C{cpu_percent}
does, but without its module-global baseline, which two instances (the old
and new generation during a reload) would steal from each other.
"""

from __future__ import annotations

import glob
import json
import math
import os
import platform
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from datetime import timedelta
from ipaddress import ip_address, ip_interface
from typing import Any, ClassVar

import psutil
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from pluginserver.plugin import EventStream, HTTPError, Plugin, PluginRequest, RawJSON, Response

SECTIONS = ("cpu", "ram", "swap", "disk", "net", "uptime", "info", "packages", "sampled_at")
STREAM = "stream"
"""The subpath of the event stream: not a section."""
METRICS = "metrics"
"""The subpath of the Prometheus text format: not a section."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's content type (what node_exporter sends)."""
LIST_KEYS = {"disk": "mount", "net": "iface"}

NOT_CPU_MODES = frozenset({"guest", "guest_nice"})
"""psutil's cpu time fields that node_cpu_seconds_total leaves out:
node_exporter reports guest time apart, and it is already counted in user
and nice."""

IGNORED_FSTYPES = frozenset(
    "proc sysfs tmpfs devtmpfs devpts overlay overlayfs aufs squashfs cgroup cgroup2 "
    "nsfs autofs mqueue debugfs tracefs securityfs pstore bpf configfs fusectl "
    "hugetlbfs binfmt_misc rpc_pipefs ramfs efivarfs selinuxfs fuse.lxcfs "
    "fuse.snapfuse fuse.gvfsd-fuse fuse.portal nfsd".split()
)

RunCommand = Callable[[Sequence[str], float], tuple[int, str] | None]
"""Run argv with a timeout: C{(returncode, stdout)}, or None if it could not
be run or timed out."""

Doc = dict[str, Any]


class _Probe:
    """One disk-usage call in its own daemon thread."""

    def __init__(self, call: Callable[[str], Any], mount: str) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        threading.Thread(
            target=self._run, args=(call, mount), daemon=True, name=f"systeminfo-disk {mount}"
        ).start()

    def _run(self, call: Callable[[str], Any], mount: str) -> None:
        try:
            self.result = call(mount)
        except Exception as e:  # any error is reported for this mount only
            self.error = e
        finally:
            self.done.set()


# In-flight disk probes by (psutil module, mount), shared by every instance
# and kept across a reload of this module: a hung mount costs one thread.
_DISK_PROBES: dict[tuple[Any, str], _Probe] = globals().get("_DISK_PROBES", {})
_DISK_PROBES_LOCK: Any = globals().get("_DISK_PROBES_LOCK") or threading.Lock()


def _num(value: Any, ndigits: int = 1) -> float | None:
    """A finite float rounded, or None."""
    if value is None:
        return None
    f = float(value)
    return round(f, ndigits) if math.isfinite(f) else None


def _encode(value: Any) -> RawJSON:
    return RawJSON(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())


def _cidr(address: str, netmask: str | None) -> str | None:
    try:
        addr = ip_address(address.split("%", 1)[0])
        bits = int(ip_address(netmask)).bit_count() if netmask else addr.max_prefixlen
        return str(ip_interface(f"{addr}/{bits}"))
    except ValueError:
        return None


def _busy_total(t: Any) -> tuple[float, float]:
    """(busy, total) cpu seconds, as psutil's cpu_percent counts them."""
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return total - t.idle - getattr(t, "iowait", 0.0), total


def _percent(old: Any, new: Any) -> float | None:
    if old is None:
        return None
    (b1, t1), (b2, t2) = _busy_total(old), _busy_total(new)
    if t2 <= t1 or b2 <= b1:
        return 0.0  # no tick elapsed (samples < 10 ms apart): psutil says 0.0 too
    return round(min(100.0, max(0.0, (b2 - b1) / (t2 - t1) * 100.0)), 1)


def _rate(old: int | None, new: int | None, dt: float | None) -> float | None:
    if old is None or new is None or not dt or dt <= 0 or new < old:
        return None  # first sample, or the counter was reset: unknown
    return round((new - old) / dt, 1)


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                    return value.strip() or None
    except OSError:
        pass
    return platform.processor() or None


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


def _dnf_updates(out: str) -> int:
    """Count C{dnf check-update}'s "name.arch version repo" lines."""
    count = 0
    for line in out.splitlines():
        if line.startswith("Obsoleting"):
            break
        fields = line.split()
        count += len(fields) == 3 and "." in fields[0]
    return count


class _Families:
    """Metric families as prometheus_client's C{generate_latest} reads them."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


def _exposition(families: Sequence[Metric]) -> bytes:
    """C{families} in the Prometheus text format."""
    return generate_latest(_Families(families))


def _gauge(name: str, text: str, value: float | None) -> list[Metric]:
    """A gauge of one unlabelled sample; nothing when the value is unknown."""
    if value is None:
        return []
    return [GaugeMetricFamily(name, text, value=value)]


def _node_metrics(doc: Doc, per_cpu: Sequence[Any], load: Sequence[float | None]) -> bytes:
    """
    One sample in node_exporter's names, encoded: C{doc} is the sample as
    C{/systeminfo} answers it, C{per_cpu} psutil's per-cpu times and
    C{load} its load averages of that same sample, unrounded.  Runs in the
    sampler's thread.
    """
    families: list[Metric] = [
        GaugeMetricFamily(
            "node_boot_time_seconds",
            "Node boot time, in unixtime.",
            value=doc["uptime"]["boot_time"],
        )
    ]
    cpu = CounterMetricFamily(
        "node_cpu_seconds", "Seconds the CPUs spent in each mode.", labels=["cpu", "mode"]
    )
    for index, times in enumerate(per_cpu):
        for mode, seconds in times._asdict().items():
            if mode not in NOT_CPU_MODES:
                cpu.add_metric([str(index), mode], seconds)
    families.append(cpu)
    filesystem = {
        name: GaugeMetricFamily(
            f"node_filesystem_{name}_bytes", text, labels=["device", "mountpoint", "fstype"]
        )
        for name, text in (
            ("avail", "Filesystem space available to non-root users in bytes."),
            ("free", "Filesystem free space in bytes."),
            ("size", "Filesystem size in bytes."),
        )
    }
    for disk in doc["disk"]:
        if disk["total"] is None:
            continue  # its usage call failed or hangs: unknown, not zero
        labels = [disk["device"], disk["mount"], disk["fstype"]]
        # psutil's free is what unprivileged users may still use (f_bavail);
        # node_exporter's free includes root's reserve (f_bfree).
        filesystem["avail"].add_metric(labels, disk["free"])
        filesystem["free"].add_metric(labels, disk["total"] - disk["used"])
        filesystem["size"].add_metric(labels, disk["total"])
    families.extend(filesystem.values())
    for minutes, value in zip(("1", "5", "15"), load, strict=False):
        families += _gauge(f"node_load{minutes}", f"{minutes}m load average.", value)
    ram, swap = doc["ram"], doc["swap"]
    for name, value in (
        ("MemAvailable", ram["available"]),
        ("MemFree", ram["free"]),
        ("MemTotal", ram["total"]),
        ("SwapFree", swap["free"]),
        ("SwapTotal", swap["total"]),
    ):
        families += _gauge(
            f"node_memory_{name}_bytes", f"Memory information field {name}_bytes.", value
        )
    receive = CounterMetricFamily(
        "node_network_receive_bytes", "Network device statistic receive_bytes.", labels=["device"]
    )
    transmit = CounterMetricFamily(
        "node_network_transmit_bytes",
        "Network device statistic transmit_bytes.",
        labels=["device"],
    )
    up = GaugeMetricFamily(
        "node_network_up", "Whether the network interface is up (1) or not (0).", labels=["device"]
    )
    for net in doc["net"]:
        device = [net["iface"]]
        if net["bytes_recv"] is not None:
            receive.add_metric(device, net["bytes_recv"])
            transmit.add_metric(device, net["bytes_sent"])
        if net["is_up"] is not None:
            up.add_metric(device, 1 if net["is_up"] else 0)
    families += [receive, transmit, up]
    families.append(
        GaugeMetricFamily(
            "node_time_seconds",
            "System time in seconds since epoch (1970), when the sample was taken.",
            value=doc["sampled_at"],
        )
    )
    info = doc["info"]
    uname = ("sysname", "release", "version", "machine", "nodename")
    uname_info = GaugeMetricFamily(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
        labels=list(uname),
    )
    uname_info.add_metric([str(info[key]) for key in uname], 1)
    families.append(uname_info)
    return _exposition(families)


def _packages_metrics(packages: Doc) -> bytes:
    """The package counts in the Prometheus text format, those known only."""
    families: list[Metric] = []
    manager = packages["manager"]
    for key, text in (
        ("installed", "Packages installed, by package manager."),
        ("upgradable", "Packages with an upgrade in the local package index, by package manager."),
    ):
        if manager is not None and packages[key] is not None:
            family = GaugeMetricFamily(f"pluginserver_packages_{key}", text, labels=["manager"])
            family.add_metric([manager], packages[key])
            families.append(family)
    return _exposition(families) if families else b""


class SystemInfo(Plugin):
    """The C{/systeminfo} route; see the module docstring."""

    # Where each manager keeps the local index that "upgradable" is read
    # from; no index, no answer (null) rather than a misleading 0.
    index_globs: Mapping[str, str | None] = {
        "dpkg": "/var/lib/apt/lists/*_Packages*",
        "apk": "/var/cache/apk/APKINDEX.*",
        "pacman": "/var/lib/pacman/sync/*.db",
        "rpm": None,
    }

    def __init__(
        self,
        name: str,
        params: Mapping[str, Any],
        config: Any = None,
        *,
        clock: Any = None,  # an IReactorTime: the reactor, or a task.Clock in tests
        ps: Any = psutil,
        run_command: RunCommand | None = None,
        defer_to_thread: Callable[..., Deferred[Any]] = deferToThread,
        timer: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, params, config)
        self.interval = self._param("interval", 1.0)
        self.disk_timeout = self._param("disk_timeout", 2.0)
        self.packages_interval = self._param("packages_interval", 3600.0, zero_ok=True)
        self.packages_timeout = self._param("packages_timeout", 120.0)
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock: IReactorTime = clock
        self._ps = ps
        self._run: RunCommand = run_command or self._run_command
        self._defer_to_thread = defer_to_thread
        self._timer, self._now = timer, now
        self._log = Logger(namespace=f"pluginserver.plugins.{name}")
        self._sampler = LoopingCall(self._sample_tick)
        self._sampler.clock = self._clock
        self._packages_loop = LoopingCall(self._packages_tick)
        self._packages_loop.clock = self._clock
        self._stopped = False
        self._first: Deferred[None] | None = None
        self._procs: set[subprocess.Popen[str]] = set()
        self._procs_lock = threading.Lock()
        # Sampler state: touched only by the (never overlapping) sample thread.
        self._model: str | None = None
        self._prev_cpu: Any = None
        self._prev_per_cpu: Sequence[Any] = ()
        self._load: Sequence[float | None] = (None, None, None)
        self._prev_net: dict[str, tuple[int | None, int | None]] = {}
        self._prev_t: float | None = None
        # Published state: touched only on the reactor thread.
        self._packages: Doc = {
            "manager": None,
            "installed": None,
            "upgradable": None,
            "checked_at": None,
        }
        self._packages_raw = _encode(self._packages)
        self._packages_metrics = b""
        self._sample: tuple[Doc, dict[str, RawJSON], bytes] | None = None
        self._doc: Doc | None = None
        self._raw: dict[str, RawJSON] = {}
        self._metrics: Response | None = None
        # The streams waiting for the next sample (reactor thread only).
        self._waiters: set[Deferred[None]] = set()

    def _param(self, key: str, default: float, zero_ok: bool = False) -> float:
        value = float(self.params.get(key, default))
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(f"systeminfo: param {key} must be a positive number, not {value!r}")
        return value

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start the sampler and the package checks; fires after the first sample."""
        first: Deferred[None] = Deferred()
        self._first = first
        self._sampler.start(self.interval, now=True)
        if self.packages_interval > 0:
            self._packages_loop.start(self.packages_interval, now=True)
        return first

    def stop(self) -> None:
        """Stop both loops, kill package commands; late thread results are dropped."""
        self._stopped = True
        for loop in (self._sampler, self._packages_loop):
            if loop.running:
                loop.stop()
        with self._procs_lock:
            procs = list(self._procs)
        for proc in procs:
            try:
                proc.kill()
            except OSError:
                pass
        self._fire_first()
        self._wake()  # open streams end (the server has ended them already)

    def _fire_first(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            first.callback(None)

    # -- requests: no system calls here, only the published snapshot --------

    def handle(self, request: PluginRequest) -> Any:
        doc, raw = self._doc, self._raw
        if doc is None:
            raise HTTPError(503, "no sample yet")
        if not request.subpath.strip("/"):
            return raw[""]
        if request.subpath.strip("/") == STREAM:
            return EventStream(self._samples())
        if request.subpath.strip("/") == METRICS:
            return self._metrics
        section, _, rest = request.subpath.partition("/")
        if section not in SECTIONS:
            raise HTTPError(404, f"unknown section: {section}")
        if not rest:
            return raw[section]
        value = doc[section]
        if section in LIST_KEYS:
            value, rest = self._find_item(value, LIST_KEYS[section], section, rest)
        for part in (p for p in rest.split("/") if p):
            if not isinstance(value, dict) or part not in value:
                raise HTTPError(404, f"unknown field: {request.subpath}")
            value = value[part]
        return value

    async def _samples(self) -> AsyncIterator[RawJSON]:
        """
        The events of C{/systeminfo/stream}: the latest snapshot at once,
        then each new one as the sampler publishes it, until this instance
        stops.  It waits on a Deferred, never on the sampler's thread.
        """
        last: RawJSON | None = None
        while not self._stopped:
            raw = self._raw.get("")
            if raw is not None and raw is not last:
                last = raw
                yield raw
                continue
            waiter: Deferred[None] = Deferred()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def _wake(self) -> None:
        """Resume every stream waiting for a sample (or for the stop)."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    @staticmethod
    def _find_item(items: list[Doc], key: str, section: str, rest: str) -> tuple[Doc, str]:
        """The item whose key (leading slash optional) is C{rest} or its
        longest prefix, and the field path after it."""
        best: tuple[int, Doc, str] | None = None
        for item in items:
            for name in {item[key], item[key].lstrip("/")}:
                if rest == name:
                    return item, ""
                if rest.startswith(name + "/") and (best is None or len(name) > best[0]):
                    best = (len(name), item, rest[len(name) + 1 :])
        if best is None:
            raise HTTPError(404, f"unknown {section}: {rest}")
        return best[1], best[2]

    # -- sampler -------------------------------------------------------------

    def _sample_tick(self) -> Deferred[None]:
        # Returning the Deferred makes LoopingCall wait for it: no overlap.
        d = self._defer_to_thread(self._collect)
        d.addCallback(self._publish_sample)
        d.addErrback(self._failed, "sample failed")  # logged; the last snapshot stays
        d.addCallback(lambda _: self._fire_first())
        return d

    def _failed(self, failure: Failure, what: str) -> None:
        if not self._stopped:
            self._log.failure(what, failure)

    def _publish_sample(self, sample: tuple[Doc, dict[str, RawJSON], bytes]) -> None:
        if not self._stopped:
            self._sample = sample
            self._assemble()
            self._wake()

    def _assemble(self) -> None:
        """Publish the latest sample with the latest package counts."""
        if self._sample is None:
            return
        doc, raw = dict(self._sample[0]), dict(self._sample[1])
        doc["packages"], raw["packages"] = self._packages, self._packages_raw
        raw[""] = RawJSON(
            b"{" + b",".join(b'"%s":%s' % (s.encode(), raw[s]) for s in SECTIONS) + b"}"
        )
        metrics = Response(
            self._sample[2] + self._packages_metrics, content_type=METRICS_CONTENT_TYPE
        )
        self._doc, self._raw, self._metrics = doc, raw, metrics

    def _collect(self) -> tuple[Doc, dict[str, RawJSON], bytes]:
        """One sample, in a thread: every section but packages, encoded as
        JSON and in the Prometheus text format."""
        ps = self._ps
        t, wall = self._timer(), self._now()
        dt = None if self._prev_t is None else t - self._prev_t
        self._prev_t = t
        doc: Doc = {
            "cpu": self._cpu(),
            "ram": self._memory(ps.virtual_memory()),
            "swap": self._memory(ps.swap_memory()),
            "disk": self._disks(),
            "net": self._net(dt),
            "uptime": self._uptime(ps.boot_time(), wall),
            "info": self._info(),
            "sampled_at": wall,
        }
        # _cpu() left this sample's per-cpu times (the next one's baseline)
        # and load averages, unrounded.
        metrics = _node_metrics(doc, self._prev_per_cpu, self._load)
        return doc, {key: _encode(value) for key, value in doc.items()}, metrics

    def _cpu(self) -> Doc:
        ps = self._ps
        if self._model is None:
            self._model = _cpu_model() or ""
        times, per = ps.cpu_times(), ps.cpu_times(percpu=True)
        prev_per = self._prev_per_cpu
        per_cpu = {
            f"cpu{i}": _percent(prev_per[i] if i < len(prev_per) else None, t)
            for i, t in enumerate(per)
        }
        percent = _percent(self._prev_cpu, times)
        self._prev_cpu, self._prev_per_cpu = times, per
        try:
            freq = ps.cpu_freq()
        except (OSError, NotImplementedError, AttributeError):
            freq = None
        try:
            load: Sequence[float] = ps.getloadavg()
        except (OSError, AttributeError):
            load = (None, None, None)  # type: ignore[assignment]
        self._load = load
        return {
            "model": self._model or None,
            "count": ps.cpu_count(),
            "percent": percent,
            "per_cpu": per_cpu,
            "freq_mhz": _num(getattr(freq, "current", None)),
            "loadavg": {k: _num(v, 2) for k, v in zip(("1m", "5m", "15m"), load, strict=False)},
            "times": {k: _num(v, 2) for k, v in times._asdict().items()},
        }

    @staticmethod
    def _memory(m: Any) -> Doc:
        return {
            "total": m.total,
            "available": getattr(m, "available", m.free),
            "used": m.used,
            "free": m.free,
            "percent": _num(m.percent),
        }

    def _disks(self) -> list[Doc]:
        chosen: dict[str, Any] = {}
        parts = sorted(
            self._ps.disk_partitions(all=False), key=lambda p: (len(p.mountpoint), p.mountpoint)
        )
        for p in parts:
            if p.fstype not in IGNORED_FSTYPES and p.device not in chosen:
                chosen[p.device] = p
        probes = {}
        with _DISK_PROBES_LOCK:  # reuse a probe still in flight: never two per mount
            for p in chosen.values():
                key = (self._ps, p.mountpoint)
                if key not in _DISK_PROBES:
                    _DISK_PROBES[key] = _Probe(self._ps.disk_usage, p.mountpoint)
                probes[p.mountpoint] = _DISK_PROBES[key]
            for key in [k for k, v in _DISK_PROBES.items() if k[0] is self._ps and v.done.is_set()]:
                if key[1] not in probes:  # finished late for a mount now gone
                    del _DISK_PROBES[key]
        deadline = time.monotonic() + self.disk_timeout
        disks = []
        for p in sorted(chosen.values(), key=lambda p: p.mountpoint):
            probe = probes[p.mountpoint]
            entry: Doc = {"device": p.device, "mount": p.mountpoint, "fstype": p.fstype}
            if probe.done.wait(max(0.0, deadline - time.monotonic())):
                with _DISK_PROBES_LOCK:
                    _DISK_PROBES.pop((self._ps, p.mountpoint), None)
            if not probe.done.is_set() or probe.error is not None:
                error = "timeout" if probe.error is None else getattr(probe.error, "strerror", None)
                entry.update(dict.fromkeys(("total", "used", "free", "percent")))
                entry["error"] = error or repr(probe.error)
            else:
                u = probe.result
                entry.update(total=u.total, used=u.used, free=u.free, percent=_num(u.percent))
            disks.append(entry)
        return disks

    def _net(self, dt: float | None) -> list[Doc]:
        ps = self._ps
        counters, addrs, stats = (
            ps.net_io_counters(pernic=True),
            ps.net_if_addrs(),
            ps.net_if_stats(),
        )
        prev, self._prev_net = self._prev_net, {}
        out = []
        for iface in sorted(set(counters) | set(addrs)):
            c = counters.get(iface)
            sent, recv = (c.bytes_sent, c.bytes_recv) if c is not None else (None, None)
            old_sent, old_recv = prev.get(iface, (None, None))
            self._prev_net[iface] = (sent, recv)
            cidrs = (
                _cidr(a.address, a.netmask)
                for a in addrs.get(iface, ())
                if a.family in (socket.AF_INET, socket.AF_INET6)
            )
            out.append(
                {
                    "iface": iface,
                    "addresses": [c for c in cidrs if c],
                    "is_up": bool(stats[iface].isup) if iface in stats else None,
                    "bytes_sent": sent,
                    "bytes_recv": recv,
                    "tx_bps": _rate(old_sent, sent, dt),
                    "rx_bps": _rate(old_recv, recv, dt),
                }
            )
        return out

    @staticmethod
    def _uptime(boot_time: float, wall: float) -> Doc:
        seconds = max(0, int(wall - boot_time))
        return {
            "seconds": seconds,
            "boot_time": boot_time,
            "pretty": str(timedelta(seconds=seconds)),
        }

    @staticmethod
    def _info() -> Doc:
        u = os.uname() if hasattr(os, "uname") else platform.uname()
        return dict(
            zip(("sysname", "nodename", "release", "version", "machine"), u[:5], strict=False)
        )

    # -- packages ------------------------------------------------------------

    def _packages_tick(self) -> Deferred[None]:
        d = self._defer_to_thread(self._check_packages)
        d.addCallback(self._publish_packages)
        d.addErrback(self._failed, "package check failed")
        return d

    def _publish_packages(self, packages: Doc) -> None:
        if not self._stopped:
            self._packages, self._packages_raw = packages, _encode(packages)
            self._packages_metrics = _packages_metrics(packages)
            self._assemble()

    # (manager, command listing installed packages, installed-line test)
    MANAGERS: ClassVar[Sequence[tuple[str, Sequence[str], Callable[[str], bool]]]] = (
        ("dpkg", ("dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n"), lambda ln: ln[1:2] == "i"),
        ("apk", ("apk", "info"), lambda ln: True),
        ("pacman", ("pacman", "-Q"), lambda ln: True),
        ("rpm", ("rpm", "-qa"), lambda ln: True),
    )

    # manager -> (command reading the local index, exit codes that answer, counter)
    UPGRADES: ClassVar[Mapping[str, tuple[Sequence[str], Container[int], Callable[[str], int]]]] = {
        "dpkg": (
            ("apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"),
            (0,),
            lambda out: sum(ln.startswith("Inst ") for ln in out.splitlines()),
        ),
        "apk": (
            ("apk", "--no-network", "version", "-l", "<"),
            (0,),
            lambda out: sum(" < " in ln for ln in out.splitlines()),
        ),
        "pacman": (("pacman", "-Qu"), (0, 1), lambda out: len(_lines(out))),  # 1: none
        "rpm": (("dnf", "-C", "-q", "check-update"), (0, 100), lambda out: _dnf_updates(out)),
    }

    def _check_packages(self) -> Doc:
        """In a thread: the first manager that lists any package wins."""
        result: Doc = {"manager": None, "installed": None, "upgradable": None}
        for manager, argv, installed in self.MANAGERS:
            got = None if self._stopped else self._run(argv, self.packages_timeout)
            if got is None or got[0] != 0:
                continue
            count = sum(1 for ln in _lines(got[1]) if installed(ln))
            if count:
                result.update(
                    manager=manager, installed=count, upgradable=self._upgradable(manager)
                )
                break
        result["checked_at"] = self._now()
        return result

    def _upgradable(self, manager: str) -> int | None:
        """Upgradable packages from the local index only (never the network)."""
        pattern = self.index_globs.get(manager)
        if manager not in self.UPGRADES or self._stopped or (pattern and not glob.glob(pattern)):
            return None
        argv, answered, count = self.UPGRADES[manager]
        got = self._run(argv, self.packages_timeout)
        return count(got[1]) if got is not None and got[0] in answered else None

    def _run_command(self, argv: Sequence[str], timeout: float) -> tuple[int, str] | None:
        """The default command runner: C locale, no stdin, killed on timeout or stop."""
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
                errors="replace",
            )
        except OSError:
            return None  # not installed
        with self._procs_lock:
            self._procs.add(proc)
        if self._stopped:  # stop() may have run just before the add
            proc.kill()
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self._log.warn(
                "{argv} timed out after {timeout}s", argv=" ".join(argv), timeout=timeout
            )
            return None
        finally:
            with self._procs_lock:
                self._procs.discard(proc)
        return proc.returncode, out


__all__ = ["SystemInfo"]
