#!/usr/bin/env python3
"""Benchmark zramfs side by side with kernel zram, in one run, on one machine.

Where it sits: outside the data path.  It drives whole devices from the
outside -- kernel zram through ``/sys/class/zram-control``, zramfs through its
CLI and a loop device (``--direct-io=on --sector-size 4096``), and a minimal
C libfuse memory server (``scripts/fuse_memserver.c``: the transport limit)
through the same loop flags -- with fio and with the C swap workload
(``scripts/swap_workload.c``) in a memory cgroup, and reads each device's
``mm_stat`` and the zramfs daemon's RSS.  Both C programs are compiled at
run time with the system ``cc`` into a temporary directory.

The suite runs twice: under the machine's own settings, and under those
``zramfs swapon`` applies (zramfs/tuning.py), which are put back afterwards.
It prints one markdown table per setting, with ratios to kernel zram, and
writes a JSON file (and PNG charts when matplotlib is installed).  It is a
benchmark, never a timed test: numbers go to BENCHMARKS.md by hand, with
date and machine.

Every device, loop device, swap area, mount, server and cgroup it makes is
undone on the way out, Ctrl-C included, and every setting it changed is put
back.  Exit codes: 0 done, 1 a page came back wrong, 2 bad arguments or a
missing tool (fio, cc, pkg-config fuse3), 3 not root, 130 interrupted.

    sudo .venv/bin/python scripts/bench.py                 # the full run, ~8 minutes
    sudo .venv/bin/python scripts/bench.py --settings machine,swapon,nopoll
    sudo .venv/bin/python scripts/bench.py --quick         # about a minute; proves it works
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import memcg  # noqa: E402  (scripts/memcg.py: run a command in a memory cgroup)
import swap_workload  # noqa: E402  (scripts/swap_workload.py: compiles the C programs)

from allocator import PAGE_SIZE  # noqa: E402
from zramfs import tuning  # noqa: E402
from zramfs.system import System, parse_mm_stat  # noqa: E402

# What is mounted, attached and swapped on, read the way the CLI reads it.
SYSTEM = System()

MIB = 1 << 20

# The fio data: 60 % compressible in 4 KiB chunks (between swap's text and
# zeroes, and what every earlier run of this benchmark used, so numbers stay
# comparable), fresh buffers for every write so nothing is deduplicated by accident.
FIO_DATA = [
    "--buffer_compress_percentage=60",
    "--buffer_compress_chunk=4096",
    "--refill_buffers",
    "--direct=1",
]

# (key, title, fio arguments, metric) -- the workloads, in the order
# that leaves the device full before anything reads it.
WORKLOADS = [
    ("seq_write_1m", "1 MiB sequential write", ["--rw=write", "--bs=1M", "--ioengine=psync"], "bw"),
    # Read four times over: one pass of 256 MiB takes ~0.15 s, short enough
    # for one stall of this VM to move the result by 20 %.  (A second write
    # pass would overwrite, another workload: the write is repeated onto the
    # emptied device instead, WRITE_PASSES.)
    (
        "seq_read_1m",
        "1 MiB sequential read",
        ["--rw=read", "--bs=1M", "--ioengine=psync", "--loops=4"],
        "bw",
    ),
    (
        "randread_4k_qd1",
        "4 KiB random read QD1",
        ["--rw=randread", "--bs=4k", "--ioengine=psync", "--time_based"],
        "iops",
    ),
    (
        "randwrite_4k_qd1",
        "4 KiB random write QD1",
        ["--rw=randwrite", "--bs=4k", "--ioengine=psync", "--time_based"],
        "iops",
    ),
    (
        "randread_4k_qd16",
        "4 KiB random read QD16",
        ["--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--time_based"],
        "iops",
    ),
]

# Issue 16's targets for zramfs, as ratios to a reference target: kernel
# zram lz4, or for QD1 the C libfuse memory server (the transport: what
# zramfs can reach at most).  "min" means the zramfs number must be at least
# the ratio, "max" at most.
TARGETS = {
    "seq_write_1m": ("min", 0.7, "kernel"),
    "seq_read_1m": ("min", 1.0, "kernel"),
    "randread_4k_qd1": ("min", 0.85, "memserver"),
    "randwrite_4k_qd1": ("min", 0.85, "memserver"),
    "randread_4k_qd16": ("min", 0.45, "kernel"),
    "swap_wall_s": ("max", 2.0, "kernel"),
}
IDLE_RSS_TARGET = 20 * MIB
# The swap workload's own (user) CPU must stay under this share of kernel
# zram's wall time, so that the swap row measures the device.
WORKLOAD_CPU_SHARE = 0.10

# The settings the suite can run under: the machine's own; those `zramfs
# swapon` applies; and, on KVM guests, halt polling off, as on VMs whose
# kernel command line has guest_halt_poll_ns=0 (the setting a `zramfs
# mount` user there gets).  Each is (settings, at_least) for tuning.apply,
# put back after its suite.  The default runs the first two.
SETTINGS = {
    "machine": None,
    "swapon": (tuning.SWAP_SETTINGS, tuning.AT_LEAST),
    "nopoll": ({tuning.HALT_POLL_NS: "0"}, frozenset()),
}
DEFAULT_SETTINGS = "machine,swapon"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, finish=False):
    """subprocess.run(cmd, check=True)'s output.

    On any exception here (Ctrl-C, SIGTERM) a set-up step (``finish``) is
    let finish, so that the clean-up registered before it finds it whole;
    anything else (fio) is stopped with what it forked and waited for
    (_stop): a fio job left running keeps the device busy, and then nothing
    after it can be cleaned up."""
    # A session of its own: a Ctrl-C at the terminal reaches only this
    # script, which stops the command in order.
    with subprocess.Popen(
        cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate()
        except BaseException:
            if finish:
                proc.wait()
            else:
                _stop(proc)
            raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return out


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # "pid (comm) state ppid ...": comm may hold spaces.
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return kids


def _stop(proc, timeout=10.0):
    """Stop a command and its children.  fio runs each job in a session of
    its own, out of reach of a process-group kill, and on SIGTERM stops its
    jobs and waits for them; whatever is still there after ``timeout`` is
    killed."""
    kids = _children(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + timeout
    for pid in kids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _swapoff_if_on(dev):
    if dev in SYSTEM.active_swaps():
        cleanup(["swapoff", dev])


def _detach_loops(path):
    # From sysfs: stat-ing a file on a dead FUSE mount would fail.
    for dev in SYSTEM.loops_for(path):
        cleanup(["losetup", "-d", dev])


def _unmount_if_mounted(mountpoint):
    if SYSTEM.mount_at(mountpoint) is not None:
        cleanup([sys.executable, "-m", "zramfs", "umount", mountpoint])


def _zramfs_swapoff_if_there(name, mountpoint):
    if os.path.isdir(mountpoint) or os.path.isdir(SYSTEM.device_dir(name)):
        cleanup([sys.executable, "-m", "zramfs", "swapoff", name])


def cleanup(cmd, timeout=10.0):
    """Run a clean-up command until it succeeds (a loop device lets go of
    its file a moment after its last user exits) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if not proc.returncode:
            return
        if time.monotonic() >= deadline:
            log(f"warning: clean-up {' '.join(cmd)} failed: {proc.stderr.strip()}")
            return
        time.sleep(0.1)


# -- targets ---------------------------------------------------------------


class KernelZram:
    """A kernel zram device from hot_add, lz4, removed again on close."""

    label = "kernel zram (lz4)"
    key = "kernel"

    def __init__(self, stack):
        self.stack = stack
        self.dev_id = None

    @staticmethod
    def available():
        return os.path.exists("/sys/class/zram-control/hot_add")

    def _sys(self, name):
        return f"/sys/block/zram{self.dev_id}/{name}"

    def create(self, size):
        with open("/sys/class/zram-control/hot_add") as f:
            self.dev_id = int(f.read())
        self.stack.callback(self._remove, self.dev_id)
        with open(self._sys("comp_algorithm"), "w") as f:
            f.write("lz4")
        with open(self._sys("disksize"), "w") as f:
            f.write(str(size))
        return f"/dev/zram{self.dev_id}"

    def _remove(self, dev_id):
        with contextlib.suppress(OSError):
            with open(f"/sys/block/zram{dev_id}/reset", "w") as f:
                f.write("1")
        with contextlib.suppress(OSError):
            with open("/sys/class/zram-control/hot_remove", "w") as f:
                f.write(str(dev_id))

    def swapon(self, size):
        dev = self.create(size)
        # Before the step it undoes, and only if it happened (see Zramfs.create).
        self.stack.callback(_swapoff_if_on, dev)
        run(["mkswap", dev], finish=True)
        run(["swapon", "--discard", "--priority", "100", dev], finish=True)
        return dev

    def mm_stat(self):
        with open(self._sys("mm_stat")) as f:
            return parse_mm_stat(f.read())

    def rss(self):
        return None


class Zramfs:
    """A zramfs device through the CLI and a direct-I/O loop device."""

    def __init__(self, stack, backend="dev"):
        self.stack = stack
        self.backend = backend
        self.key = "zramfs" if backend == "dev" else f"zramfs-{backend}"
        self.label = "zramfs" if backend == "dev" else f"zramfs ({backend})"
        self.name = "zbench0" if backend == "dev" else f"zbench{backend[:1]}"
        self.mountpoint = None

    def _cli(self, *args):
        return run([sys.executable, "-m", "zramfs", *args], finish=True)

    def create(self, size):
        self.mountpoint = f"/run/zramfs-bench/{self.name}"
        os.makedirs(self.mountpoint, exist_ok=True)
        # Callbacks run last-in first-out: the parent goes after the mountpoint.
        self.stack.callback(_rmdir, os.path.dirname(self.mountpoint))
        self.stack.callback(_rmdir, self.mountpoint)
        # Each undo is registered before the step it undoes and acts only if
        # that step happened, so a run interrupted anywhere (Ctrl-C lets a
        # set-up step finish first: run(finish=True)) undoes exactly what it did.
        disk = f"{self.mountpoint}/disk"
        self.stack.callback(_unmount_if_mounted, self.mountpoint)
        self.stack.callback(_detach_loops, disk)
        self._cli(
            "mount",
            self.mountpoint,
            "--size",
            str(size),
            "--name",
            self.name,
            "--fuse-backend",
            self.backend,
        )
        return run(
            ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk],
            finish=True,
        ).strip()

    def swapon(self, size):
        self.mountpoint = SYSTEM.swap_mountpoint(self.name)
        # Before the step it undoes (see create); `zramfs swapoff` finishes
        # whatever part of a swapon exists.
        self.stack.callback(_zramfs_swapoff_if_there, self.name, self.mountpoint)
        self._cli("swapon", self.name, "--size", str(size), "--fuse-backend", self.backend)
        return SYSTEM.loops_for(f"{self.mountpoint}/disk")[0]

    def mm_stat(self):
        return SYSTEM.mm_stat(self.mountpoint)

    def daemon_pid(self):
        """The daemon's pid from the record it wrote when its mount answered
        (the serving daemon's, not its supervisor's)."""
        record = SYSTEM.daemon_record(self.name)
        if not SYSTEM.daemon_alive(record):
            return None
        return record.daemon_pid if record.supervised else record.pid

    def rss(self):
        pid = self.daemon_pid()
        if pid is None:
            return None
        record = SYSTEM.daemon_record(self.name)
        return {
            "rss": memcg.proc_status_kib(pid, "VmRSS") * 1024,
            "peak_rss": memcg.proc_status_kib(pid, "VmHWM") * 1024,
            # The supervisor (dev backend) holds the fds and the state's
            # pages; those pages are the daemon's too, so this is reported
            # beside the daemon's RSS, never added to it.
            "supervisor_rss": (
                memcg.proc_status_kib(record.pid, "VmRSS") * 1024 if record.supervised else None
            ),
        }


class ZramfsWriteback(Zramfs):
    """zramfs swap with a backing file and the watermark (beyond zram):
    ``--backing-dev`` a new file in the run's temporary directory (on a
    disk, not tmpfs: O_DIRECT) and ``--writeback-watermark``.  Swap only:
    kernel zram cannot use a file, so it runs without a backing device."""

    key = "zramfs-wb"
    watermark = None  # bytes, set by main()
    backing_dir = None  # set by main()

    def __init__(self, stack):
        super().__init__(stack)
        self.key = ZramfsWriteback.key
        self.name = "zbenchw"
        self.label = f"zramfs, backing file, watermark {(self.watermark or 0) // MIB} MiB"

    def swapon(self, size):
        self.mountpoint = SYSTEM.swap_mountpoint(self.name)
        self.stack.callback(_zramfs_swapoff_if_there, self.name, self.mountpoint)
        backing = os.path.join(self.backing_dir, "backing")
        self.stack.callback(_remove, backing)
        self._cli(
            "swapon", self.name, "--size", str(size), "--backing-dev", backing,
            "--writeback-watermark", str(self.watermark),
        )  # fmt: skip
        return SYSTEM.loops_for(f"{self.mountpoint}/disk")[0]

    def watermark_stat(self):
        with open(os.path.join(self.mountpoint, "writeback_watermark_stat")) as f:
            keys = ("triggered", "written", "waited", "failed", "compacted")
            return dict(zip(keys, map(int, f.read().split()), strict=True))


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class MemServer:
    """The C libfuse memory server (scripts/fuse_memserver.c) through the
    same direct-I/O loop device as zramfs: fio only, no swap."""

    label = "C libfuse memory server"
    key = "memserver"
    binary = None  # set by main() once compiled

    def __init__(self, stack):
        self.stack = stack
        self.mountpoint = "/run/zramfs-bench/memserver"

    def create(self, size):
        os.makedirs(self.mountpoint, exist_ok=True)
        self.stack.callback(_rmdir, os.path.dirname(self.mountpoint))
        self.stack.callback(_rmdir, self.mountpoint)
        disk = f"{self.mountpoint}/disk"
        proc = subprocess.Popen(
            [self.binary, self.mountpoint, str(size)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        # Callbacks run last-in first-out: the loop device goes, then the server.
        self.stack.callback(self._stop, proc)
        self.stack.callback(_detach_loops, disk)
        deadline = time.monotonic() + 10
        while SYSTEM.mount_at(self.mountpoint) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = (
                    proc.stderr.read().strip() if proc.poll() is not None else "no mount after 10 s"
                )
                raise RuntimeError(
                    f"fuse_memserver did not mount: {err.splitlines()[-1] if err else proc.returncode}"
                )
            time.sleep(0.02)
        return run(
            ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk],
            finish=True,
        ).strip()

    def _stop(self, proc):
        # SIGTERM: libfuse's handler leaves the loop and unmounts.
        _stop(proc)
        proc.stderr.close()
        if SYSTEM.mount_at(self.mountpoint) is not None:
            cleanup(["umount", "-l", self.mountpoint])

    def mm_stat(self):
        return None

    def rss(self):
        return None


def _rmdir(path):
    with contextlib.suppress(OSError):
        os.rmdir(path)


# -- workloads -------------------------------------------------------------


def run_fio(dev, size, args, runtime):
    cmd = [
        "fio",
        "--name=bench",
        f"--filename={dev}",
        f"--size={size}",
        "--output-format=json",
        f"--runtime={runtime}",
        *FIO_DATA,
        *args,
    ]
    out = json.loads(run(cmd))
    job = out["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] else job["read"]
    return {"bw_mb_s": side["bw_bytes"] / 1e6, "iops": side["iops"]}


# The sequential write runs this many times, each onto an emptied device
# (blkdiscard), and reports the median: one pass of 256 MiB takes ~0.3 s,
# and the same code gave 0.34x and 0.46x in runs minutes apart.
WRITE_PASSES = 3


def _more_write_passes(target, dev, size, args, runtime, first):
    """The sequential write again on the device emptied by discard, up to
    WRITE_PASSES in all; the median pass, with every pass's MB/s.  A
    device that discard leaves holding data (the pyfuse3 backend: loop
    swallows its first EOPNOTSUPP) would be overwritten, a different
    workload: it keeps the passes it had."""
    passes = [first]
    while len(passes) < WRITE_PASSES:
        try:
            run(["blkdiscard", dev])
        except subprocess.CalledProcessError:
            break
        if (target.mm_stat() or {}).get("orig_data_size"):
            break
        passes.append(run_fio(dev, size, args, runtime))
    median = sorted(passes, key=lambda p: p["bw_mb_s"])[(len(passes) - 1) // 2]
    return dict(median, passes_mb_s=[round(p["bw_mb_s"]) for p in passes])


def fio_target(target, size, runtime):
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        target.stack = stack
        dev = target.create(size)
        # Before any I/O: what the daemon holds for an empty device.
        results["rss_idle"] = target.rss()
        for key, title, args, _metric in WORKLOADS:
            log(f"{target.label}: {title}")
            results[key] = run_fio(dev, size, args, runtime)
            if key == "seq_write_1m":
                results[key] = _more_write_passes(target, dev, size, args, runtime, results[key])
                results["mm_stat_after_fill"] = target.mm_stat()
        results["mm_stat"] = target.mm_stat()
        results["rss"] = target.rss()
    return results


def swap_target(target, args, workload):
    ws = args.swap_mib * MIB
    limit = ws // 3
    with contextlib.ExitStack() as stack:
        target.stack = stack
        log(
            f"{target.label}: swap workload ({args.swap_mib} MiB working set, cgroup limit {limit // MIB} MiB, "
            f"{args.swap_disksize_mib} MiB device)"
        )
        dev = target.swapon(args.swap_disksize_mib * MIB)
        cmd = [workload, "--mib", str(args.swap_mib), "--touches", str(args.swap_touches)]
        sampler = SwapSampler(target, dev)
        with memcg.memory_cgroup(limit, name=f"zramfs-bench-{target.key}") as cg, sampler:
            proc = cg.run(cmd, capture_output=True, text=True)
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
        result = {
            "wall_s": report.get("wall_s"),
            "user_s": report.get("user_s"),
            "sys_s": report.get("sys_s"),
            "bad_pages": report.get("bad_pages"),
            "exit_code": proc.returncode,
            "mm_stat": target.mm_stat(),
            "rss": target.rss(),
            "slots": sampler.summary(),
        }
        if isinstance(target, ZramfsWriteback):
            result["watermark_stat"] = target.watermark_stat()
            result["watermark"] = target.watermark
    return result


def swap_used_bytes(dev):
    """Bytes of ``dev``'s swap slots in use, as /proc/swaps counts them
    (slots held by the swap cache included), or None if it is not swap."""
    with open("/proc/swaps") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[0] == dev:
                return int(fields[3]) * 1024
    return None


class SwapSampler:
    """Samples, while the swap workload runs, how many of the device's swap
    slots the kernel holds against how much the device stores.

    Kernel zram is told of each slot the kernel frees (swap_slot_free_notify)
    and frees its object at once.  A loop device is not: the kernel discards
    a freed slot only when its whole cluster (2 MiB) is free, so zramfs keeps
    the data of freed slots until they are written again.  The gap between
    the two numbers is that memory.
    """

    INTERVAL = 0.25

    def __init__(self, target, dev):
        self.target = target
        self.dev = dev
        self.samples = []  # (seconds, slots in use, bytes stored)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def _run(self):
        while True:
            try:
                used = swap_used_bytes(self.dev)
                stored = self.target.mm_stat()["orig_data_size"]
            except OSError as e:  # the device went away: the run reports that
                log(f"{self.target.label}: swap sampling stopped: {e}")
                return
            self.samples.append((round(time.monotonic() - self._start, 2), used, stored))
            if self._stop.wait(self.INTERVAL):
                return

    def summary(self):
        rows = [(u, st) for _t, u, st in self.samples if u is not None]
        if not rows:
            return None
        return {
            "peak_slots_bytes": max(u for u, _st in rows),
            "peak_stored_bytes": max(st for _u, st in rows),
            "peak_stored_not_in_use_bytes": max(max(0, st - u) for u, st in rows),
            "samples": self.samples,
        }


# -- report ----------------------------------------------------------------


def ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def metric_value(res, key):
    metric = dict((k, m) for k, _t, _a, m in WORKLOADS)[key]
    return res[key]["bw_mb_s"] if metric == "bw" else res[key]["iops"]


def render_table(results):
    keys = list(results)
    ref = results.get("kernel")
    refs = {
        "kernel": (ref or {}).get("fio"),
        "memserver": (results.get("memserver") or {}).get("fio"),
    }
    head = "| workload | " + " | ".join(results[k]["label"] for k in keys) + " |"
    lines = [head, "|" + "---|" * (len(keys) + 1)]
    for key, title, _args, metric in WORKLOADS:
        row = [title + (" (MB/s)" if metric == "bw" else " (IOPS)")]
        _kind, _bound, target_ref = TARGETS.get(key, (None, None, None))
        for k in keys:
            fio = results[k].get("fio")
            if not fio:
                row.append("—")
                continue
            v = metric_value(fio, key)
            notes = []
            if refs["kernel"] and k != "kernel":
                r = ratio(v, metric_value(refs["kernel"], key))
                mark = _mark(key, r) if target_ref == "kernel" and k.startswith("zramfs") else ""
                notes.append(f"{r:.2f}×{mark}")
            if refs["memserver"] and k.startswith("zramfs"):
                r = ratio(v, metric_value(refs["memserver"], key))
                mark = _mark(key, r) if target_ref == "memserver" else ""
                notes.append(f"{r:.0%} of C{mark}")
            row.append(f"{v:,.0f}" + (f" ({'; '.join(notes)})" if notes else ""))
        lines.append("| " + " | ".join(row) + " |")
    row = ["daemon RSS, idle (MiB)"]
    for k in keys:
        idle = (results[k].get("fio") or {}).get("rss_idle")
        cell = "—"
        if idle:
            cell = f"{idle['rss'] / MIB:.1f}{' ✓' if idle['rss'] <= IDLE_RSS_TARGET else ' ✗'}"
            if idle.get("supervisor_rss"):
                cell += f" (supervisor {idle['supervisor_rss'] / MIB:.1f})"
        row.append(cell)
    lines.append("| " + " | ".join(row) + " |")
    kwall = (ref or {}).get("swap", {}).get("wall_s")
    for label, getter in (
        ("swap workload wall time (s)", lambda r: r.get("swap", {}).get("wall_s")),
        ("swap workload bad pages", lambda r: r.get("swap", {}).get("bad_pages")),
    ):
        row = [label]
        for k in keys:
            v = getter(results[k])
            cell = "—" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))
            if "wall" in label and kwall and k != "kernel" and v is not None:
                r = ratio(v, kwall)
                cell += f" ({r:.2f}×{_mark('swap_wall_s', r) if k.startswith('zramfs') else ''})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    # The workload's own CPU, against the wall time it is meant to measure.
    row = ["swap workload CPU, user + sys (s)"]
    for k in keys:
        sw = results[k].get("swap") or {}
        if sw.get("user_s") is None:
            row.append("—")
            continue
        cell = f"{sw['user_s']:.2f} + {sw['sys_s']:.1f}"
        if k == "kernel" and kwall:
            share = sw["user_s"] / kwall
            cell += f" (user {share:.0%} of wall{' ✓' if share < WORKLOAD_CPU_SHARE else ' ✗'})"
        row.append(cell)
    lines.append("| " + " | ".join(row) + " |")
    # Memory: kernel mem_used_max vs the daemon's peak RSS, both at the end of the swap workload.
    row = ["swap: memory at end (MiB)"]
    kmax = ref.get("swap", {}).get("mm_stat", {}).get("mem_used_max") if ref else None
    for k in keys:
        sw = results[k].get("swap")
        if not sw:
            row.append("—")
            continue
        if k == "kernel":
            row.append(f"mem_used_max {sw['mm_stat']['mem_used_max'] / MIB:.0f}")
        else:
            peak = (sw.get("rss") or {}).get("peak_rss")
            cell = f"peak RSS {peak / MIB:.0f}" if peak else "—"
            if peak and kmax:
                # With writeback (issue 13): the kernel's peak plus 30 MiB.
                budget = kmax + 30 * MIB if k == ZramfsWriteback.key else 1.10 * kmax + 30 * MIB
                cell += f" (budget {budget / MIB:.0f}{' ✓' if peak <= budget else ' ✗'})"
            row.append(cell)
    lines.append("| " + " | ".join(row) + " |")
    # The watermark's work: pool peak, and what went to the backing file.
    row = ["swap: pool peak (mem_used_max) / written back (MiB)"]
    for k in keys:
        sw = results[k].get("swap") or {}
        wm = sw.get("watermark_stat")
        if not wm:
            row.append("—")
            continue
        row.append(
            f"{sw['mm_stat']['mem_used_max'] / MIB:.0f} / {wm['written'] * PAGE_SIZE / MIB:.0f} "
            f"(watermark {sw['watermark'] / MIB:.0f}; {wm['waited']} writes waited, "
            f"{wm['failed']} failures)"
        )
    lines.append("| " + " | ".join(row) + " |")
    # What the device stores beside what the kernel still uses (SwapSampler).
    row = ["swap: peak slots in use / stored (MiB)"]
    for k in keys:
        slots = (results[k].get("swap") or {}).get("slots")
        row.append(
            f"{slots['peak_slots_bytes'] / MIB:.0f} / {slots['peak_stored_bytes'] / MIB:.0f}"
            if slots
            else "—"
        )
    lines.append("| " + " | ".join(row) + " |")
    row = ["fio: compression ratio (orig/compr)"]
    for k in keys:
        mm = (results[k].get("fio") or {}).get("mm_stat_after_fill")
        row.append(
            f"{mm['orig_data_size'] / mm['compr_data_size']:.2f}"
            if mm and mm["compr_data_size"]
            else "—"
        )
    lines.append("| " + " | ".join(row) + " |")
    row = ["fio: mem_used_total / compr_data_size"]
    for k in keys:
        mm = (results[k].get("fio") or {}).get("mm_stat_after_fill")
        row.append(
            f"{mm['mem_used_total'] / mm['compr_data_size']:.3f}"
            if mm and mm["compr_data_size"]
            else "—"
        )
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _mark(key, r):
    kind, bound, _ref = TARGETS[key]
    ok = r >= bound if kind == "min" else r <= bound
    return " ✓" if ok else " ✗"


def render_png(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install 'zramfs[bench]'): no chart")
        return None
    ref = results.get("kernel", {}).get("fio")
    if not ref:
        return None
    keys = [k for k in results if k != "kernel" and results[k].get("fio")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(keys))
    for i, k in enumerate(keys):
        vals = [metric_value(results[k]["fio"], w) / metric_value(ref, w) for w, *_ in WORKLOADS]
        ax.bar(
            [x + i * width for x in range(len(WORKLOADS))], vals, width, label=results[k]["label"]
        )
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(WORKLOADS))])
    ax.set_xticklabels([t for _k, t, *_ in WORKLOADS], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("× kernel zram lz4")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run_suite(targets, factories, args, size, workload):
    """Every target's fio jobs, then every target's swap workload, under the settings in force."""
    results = {}
    for t in targets:
        results[t] = {"label": factories[t]().label}
        if not args.no_fio and t != ZramfsWriteback.key:  # zramfs-wb: swap only
            results[t]["fio"] = fio_target(factories[t](), size, args.runtime)
    for t in targets:
        if not args.no_swap and t != "memserver":
            results[t]["swap"] = swap_target(factories[t](), args, workload)
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="device and fio size (default 256)")
    p.add_argument(
        "--runtime", type=int, default=10, help="seconds per random-I/O fio job (default 10)"
    )
    p.add_argument(
        "--swap-mib", type=int, default=768, help="swap workload working set (default 768)"
    )
    p.add_argument(
        "--swap-disksize-mib",
        type=int,
        default=None,
        help="swap device size (default twice --swap-mib)",
    )
    p.add_argument(
        "--swap-touches", type=int, default=300_000, help="random page touches (default 300000)"
    )
    p.add_argument(
        "--targets",
        default="kernel,zramfs,zramfs-pyfuse3,memserver,zramfs-wb",
        help="comma-separated: kernel, zramfs, zramfs-pyfuse3, memserver (the C libfuse memory "
        "server, fio only), zramfs-wb (zramfs with a backing file and the watermark, swap "
        "only); those not available are left out",
    )
    p.add_argument(
        "--swap-watermark-mib",
        type=int,
        default=None,
        help="zramfs-wb's --writeback-watermark (default a quarter of --swap-mib)",
    )
    p.add_argument(
        "--settings",
        default=DEFAULT_SETTINGS,
        help="comma-separated, run in this order: machine (its own settings), swapon (those "
        "`zramfs swapon` applies), nopoll (guest_halt_poll_ns 0, KVM guests only); each is "
        f"put back after its suite (default {DEFAULT_SETTINGS})",
    )
    p.add_argument("--no-fio", action="store_true")
    p.add_argument("--no-swap", action="store_true")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: proves the benchmark works, measures nothing",
    )
    p.add_argument("--out", default="bench-results", help="folder for bench.json and bench.png")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mib, args.runtime, args.swap_mib, args.swap_touches = 16, 1, 48, 2000
    if args.swap_disksize_mib is None:
        args.swap_disksize_mib = 2 * args.swap_mib
    if args.swap_watermark_mib is None:
        args.swap_watermark_mib = args.swap_mib // 4
    ZramfsWriteback.watermark = args.swap_watermark_mib * MIB
    if args.swap_disksize_mib < args.swap_mib:
        # The workload pushes two thirds of its pages out; a device barely
        # bigger than that ends in the OOM killer, not in a measurement.
        print(
            f"bench.py: error: --swap-disksize-mib must be at least --swap-mib ({args.swap_mib})",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("bench.py: error: needs root (zram, loop devices, swap, cgroups)", file=sys.stderr)
        return 3
    if not args.no_fio and shutil.which("fio") is None:
        print("bench.py: error: fio not installed (apt-get install fio)", file=sys.stderr)
        return 2
    with open("/proc/swaps") as f:
        busy = [line.split()[0] for line in f.read().splitlines()[1:]]
    if busy and not args.no_swap:
        print(
            f"bench.py: error: swap already active ({', '.join(busy)}); the swap workload needs it off",
            file=sys.stderr,
        )
        return 2

    wanted = args.targets.split(",")
    factories: dict[str, Callable[[], KernelZram | Zramfs | MemServer]] = {
        "kernel": lambda: KernelZram(None),
        "zramfs": lambda: Zramfs(None, "dev"),
        "zramfs-pyfuse3": lambda: Zramfs(None, "pyfuse3"),
        "memserver": lambda: MemServer(None),
        "zramfs-wb": lambda: ZramfsWriteback(None),
    }
    unknown = [t for t in wanted if t not in factories]
    if unknown:
        print(
            f"bench.py: error: unknown target {unknown[0]!r} (known: {', '.join(factories)})",
            file=sys.stderr,
        )
        return 2
    settings_wanted = args.settings.split(",")
    unknown = [s for s in settings_wanted if s not in SETTINGS]
    if unknown:
        print(
            f"bench.py: error: unknown setting {unknown[0]!r} (known: {', '.join(SETTINGS)})",
            file=sys.stderr,
        )
        return 2
    targets = []
    for t in wanted:
        if t == "kernel" and not KernelZram.available():
            log("no /sys/class/zram-control: kernel zram left out")
            continue
        if t == "zramfs-pyfuse3":
            try:
                import pyfuse3  # noqa: F401
            except ImportError:
                log("pyfuse3 not installed: that backend left out")
                continue
        targets.append(t)

    # SIGTERM takes the same way out as Ctrl-C, so the ExitStacks unwind.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    size = args.size_mib * MIB
    results: dict[str, dict] = {}
    settings: dict[str, dict] = {}
    try:
        # In /var/tmp: a disk, where the backing file's O_DIRECT I/O goes.
        with tempfile.TemporaryDirectory(prefix="zramfs-bench-", dir="/var/tmp") as tmp:
            ZramfsWriteback.backing_dir = tmp
            # The C programs, built for this run and gone with it.
            try:
                workload = None if args.no_swap else swap_workload.compile_c("swap_workload", tmp)
                if "memserver" in targets and not args.no_fio:
                    MemServer.binary = swap_workload.compile_c(
                        "fuse_memserver", tmp, packages=["fuse3"]
                    )
            except swap_workload.BuildError as e:
                print(f"bench.py: error: {e}", file=sys.stderr)
                return 2
            for setting in settings_wanted:
                saved = os.path.join(tmp, f"saved-{setting}")
                os.mkdir(saved)
                # Each setting holds for its whole suite, so every target,
                # kernel zram included, runs on the same machine.
                if setting == "nopoll" and not os.path.exists(tuning.HALT_POLL_NS):
                    log("no haltpoll driver (not a KVM guest): the nopoll suite left out")
                    continue
                try:
                    if SETTINGS[setting]:
                        wants, at_least = SETTINGS[setting]
                        for path, (old, new) in tuning.apply(
                            saved, wants, at_least=at_least
                        ).items():
                            log(f"{setting} settings: {path} {old} -> {new}")
                    settings[setting] = tuning.current()
                    if any(
                        settings[setting] == settings[earlier]
                        for earlier in settings
                        if earlier != setting
                    ):
                        log(
                            f"{setting} settings: the same values as an earlier suite's on this machine"
                        )
                    log(
                        f"{setting} settings: "
                        + ", ".join(
                            f"{os.path.basename(k)}={v}" for k, v in settings[setting].items()
                        )
                    )
                    results[setting] = run_suite(targets, factories, args, size, workload)
                finally:
                    tuning.restore(saved)
    except KeyboardInterrupt:
        log("interrupted: cleaned up")
        return 130

    os.makedirs(args.out, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PHYS_PAGES') * PAGE_SIZE / 2**30:.0f} GiB, Linux {platform.release()}",
        "args": vars(args),
        "settings": settings,
    }
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(f"{meta['date']} — {meta['machine']}")
    pngs = []
    for setting, res in results.items():
        values = ", ".join(f"{os.path.basename(k)} {v}" for k, v in settings[setting].items())
        print(f"\n{setting} settings ({values}):\n")
        print(render_table(res))
        png = render_png(res, os.path.join(args.out, f"bench-{setting}.png"))
        if png:
            pngs.append(png)
    log(f"wrote {args.out}/bench.json" + "".join(f" and {p}" for p in pngs))
    bad = [
        f"{t} ({setting})"
        for setting, res in results.items()
        for t in res
        if (res[t].get("swap") or {}).get("bad_pages")
    ]
    if bad:
        print(f"bench.py: error: bad pages on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
