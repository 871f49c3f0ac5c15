#!/usr/bin/env python3
"""Measure how long a zramfs device stalls when its daemon is killed, and what the supervisor costs.

Where it sits: outside the data path, beside scripts/bench.py (whose
`Zramfs` target and clean-up it reuses).  One device: ``zramfs mount`` and
a direct-I/O loop device, filled with fio data.  A probe thread reads one
random 4 KiB block after another from the loop device (O_DIRECT, so every
read goes through the daemon).  Then, KILLS times, at a random moment: the
daemon the record names gets SIGKILL, and two times are taken from the
kill:

* ``serving``: until the supervisor's new daemon has resumed the state,
  sent FUSE_NOTIFY_RESEND, answered a stat and written its record (READY);
* ``io``: until the probe's next read completes -- the read the dead
  daemon had taken is resent to the new one, so this is the stall a
  process sees.

It prints their distribution (min, median, p90, max) as a markdown table
and the supervisor's memory (VmRSS, and Pss/Private from smaps_rollup:
the part that is its own), and writes a JSON file.  A benchmark, never a
timed test: numbers go to BENCHMARKS.md by hand, with date and machine.

    sudo .venv/bin/python scripts/bench_restart.py [--kills 30] [--size 512M]

Exit codes: 0 done, 1 a probe read failed (I/O error reached the reader),
2 bad arguments or fio missing, 3 not root.
"""

import argparse
import contextlib
import datetime
import json
import mmap
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (scripts/bench.py: targets, fio data, clean-up)

from zramfs.config import parse_size  # noqa: E402
from zramfs.system import start_time  # noqa: E402

BLOCK = 4096


class Probe(threading.Thread):
    """Reads random blocks of `dev` with O_DIRECT, one at a time; keeps each read's end time."""

    def __init__(self, dev, size):
        super().__init__(daemon=True)
        self.fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
        self.blocks = size // BLOCK
        self.done = []  # monotonic end times, appended in order
        self.error = None
        self.stop = threading.Event()

    def run(self):
        buf = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT needs
        rng = random.Random(1)
        try:
            while not self.stop.is_set():
                os.preadv(self.fd, [buf], rng.randrange(self.blocks) * BLOCK)
                self.done.append(time.monotonic())
        except OSError as e:
            self.error = e
        finally:
            os.close(self.fd)

    def first_after(self, t, timeout=30.0):
        """When the first read to complete after `t` completed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [end for end in self.done[-64:] if end > t]
            if later:
                return min(later)
            if self.error is not None:
                raise self.error
            time.sleep(0.001)
        raise TimeoutError("the probe read never completed")


def record(name):
    return bench.SYSTEM.daemon_record(name)


def kill_once(name, probe, timeout=30.0):
    """SIGKILL the daemon; (seconds to serving, seconds to the probe's next read)."""
    before = record(name)
    pid, started = before.daemon_pid, before.daemon_start_time
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    # Dead (reaped by the supervisor): only reads completing after this
    # went through the new daemon.
    while start_time(pid) == started:
        time.sleep(0.0005)
    t_dead = time.monotonic()
    deadline = t0 + timeout
    while True:
        now = record(name)
        if now is not None and now.restarts > before.restarts:
            t_ready = time.monotonic()
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no new daemon within {timeout:g} s")
        time.sleep(0.001)
    t_io = probe.first_after(t_dead)
    return t_ready - t0, t_io - t0


def memory(pid):
    """VmRSS, Pss and Private (clean + dirty) of `pid`, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmLck:")):
                found[line.split(":")[0]] = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("Pss", "Private_Clean", "Private_Dirty"):
                found[key] = int(line.split()[1])
    found["Private"] = found.pop("Private_Clean") + found.pop("Private_Dirty")
    return found


def distribution(values):
    ms = sorted(v * 1000 for v in values)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"min": ms[0], "median": statistics.median(ms), "p90": p90, "max": ms[-1]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30, help="daemon kills (default 30)")
    p.add_argument("--size", default="512M", help="device size (default 512M)")
    p.add_argument("--json", default="bench_restart.json", help="where to write the results")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_restart.py: error: needs root (mount, losetup)", file=sys.stderr)
        return 3
    if shutil.which("fio") is None or args.kills < 1:
        print("bench_restart.py: error: needs fio and --kills >= 1", file=sys.stderr)
        return 2
    size = parse_size(args.size)
    serving, io = [], []
    with contextlib.ExitStack() as stack:
        target = bench.Zramfs(stack)
        dev = target.create(size)
        bench.run(["fio", "--name=fill", f"--filename={dev}", f"--size={size}", "--rw=write",
                   "--bs=1M", "--ioengine=psync", *bench.FIO_DATA])  # fmt: skip
        rec = record(target.name)
        sup_mem = memory(rec.pid)
        daemon_mem = memory(rec.daemon_pid)
        probe = Probe(dev, size)
        probe.start()
        stack.callback(probe.join)
        stack.callback(probe.stop.set)
        for i in range(args.kills):
            time.sleep(random.uniform(0.05, 0.3))
            s, t = kill_once(target.name, probe)
            serving.append(s)
            io.append(t)
            bench.log(
                f"kill {i + 1}: serving after {s * 1000:.0f} ms, probe read after {t * 1000:.0f} ms"
            )
        if probe.error is not None:
            print(f"bench_restart.py: error: a probe read failed: {probe.error}", file=sys.stderr)
            return 1
        reads = len(probe.done)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.release()} {os.cpu_count()} cpus",
        "kills": args.kills,
        "probe_reads": reads,
        "serving_ms": distribution(serving),
        "io_stall_ms": distribution(io),
        "supervisor_kib": sup_mem,
        "daemon_kib": daemon_mem,
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"| kill to ... ({args.kills} kills) | min | median | p90 | max |")
    print("|---|---|---|---|---|")
    for key, title in (("serving_ms", "new daemon serving (READY)"),
                       ("io_stall_ms", "the reader's next 4 KiB read done")):  # fmt: skip
        d = result[key]
        print(
            f"| {title} | {d['min']:.0f} ms | {d['median']:.0f} ms | {d['p90']:.0f} ms | {d['max']:.0f} ms |"
        )
    print(f"\nsupervisor: {sup_mem} KiB; daemon after fill: {daemon_mem} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
