#!/usr/bin/env python3
"""A/B benchmark of two zramfs trees against the C libfuse server, interleaved (not a test).

    sudo .venv/bin/python scripts/bench_wakeups.py qd1 [--cycles 4] [--poll-ns 0] SPEC...
    sudo .venv/bin/python scripts/bench_wakeups.py seqwrite [--cycles 7] [--poll-ns 200000] SPEC...

SPEC is ``NAME=TREE[:VAR=VALUE,...]`` (a zramfs daemon run from the source
tree TREE with those environment variables, e.g. ZRAMFS_FUSE_SPIN_US=0 or
ZRAMFS_NO_URING=1), ``mem`` (scripts/fuse_memserver.c, compiled here) or
``zram`` (kernel zram lz4).  Every target is set up once, behind a
direct-I/O loop device as bench.py sets them up, and the fio jobs then run
in turns, one short job per target per cycle, the order reversed every
cycle: on a machine others are using, each cycle's numbers share their
minutes, and the medians of the per-cycle ratios to ``mem`` (qd1) or
``zram`` (seqwrite) are what to read.

qd1: 4 KiB random read and write at QD1 (psync), with the fio completion
latency's 5th percentile and median, the daemon's CPU per request and its
voluntary and involuntary context switches per request (a voluntary one is
a reader that slept and had to be woken).  seqwrite: 1 MiB sequential
write (psync) onto the emptied device (blkdiscard).  guest_halt_poll_ns
is set to --poll-ns for the run and put back to what it was.

The daemons are started as ``python -m zramfs.daemon`` with PYTHONPATH the
tree, not through the CLI, which would give them a clean environment.
Run it under the machine lock where others share the machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import swap_workload  # noqa: E402  (compiles the C programs)
from bench import FIO_DATA  # noqa: E402

from zramfs import tuning  # noqa: E402
from zramfs.fuse import is_mounted  # noqa: E402


def fio(dev, size, args, runtime):
    cmd = ["fio", "--name=b", f"--filename={dev}", f"--size={size}", "--output-format=json"]
    cmd += [f"--runtime={runtime}", *FIO_DATA, *args]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    job = out["jobs"][0]
    return job["write"] if job["write"]["io_bytes"] else job["read"]


def task_switches(pid):
    """(voluntary, involuntary) context switches of all of pid's threads."""
    v = n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        v += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        n += int(line.split()[1])
        except OSError:  # a thread that ended meanwhile
            pass
    return v, n


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Target:
    def __init__(self, spec, size, python, memserver, run_dir):
        self.name, _, rest = spec.partition("=")
        self.size = size
        self.proc = None
        self.dev = None
        self.mountpoint = os.path.join(run_dir, self.name)
        if self.name == "zram":
            self.dev = subprocess.run(
                ["zramctl", "--find", "--size", str(size), "--algorithm", "lz4"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            return
        os.makedirs(self.mountpoint)
        if self.name == "mem":
            argv, env, cwd = [memserver, self.mountpoint, str(size)], None, None
        else:
            cwd, _, assignments = rest.partition(":")
            env = {"PATH": os.environ["PATH"], "PYTHONPATH": cwd}
            env.update(a.split("=", 1) for a in assignments.split(",") if a)
            argv = [python, "-m", "zramfs.daemon", self.mountpoint, "--size", str(size)]
            argv += ["--name", f"zwk{self.name}"]
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        disk = os.path.join(self.mountpoint, "disk")
        while not (is_mounted(self.mountpoint) and os.path.exists(disk)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no mount")
            time.sleep(0.05)
        self.dev = subprocess.run(
            ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def close(self):
        if self.name == "zram":
            if self.dev:
                subprocess.run(["zramctl", "--reset", self.dev], check=False)
            return
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", "-l", self.mountpoint], check=False)
        os.rmdir(self.mountpoint)

    def qd1(self, rw, runtime):
        pid = self.proc.pid if self.proc else None
        before = (task_switches(pid), cpu_s(pid)) if pid else None
        args = [f"--rw={rw}", "--bs=4k", "--ioengine=psync", "--time_based"]
        side = fio(self.dev, self.size, args, runtime)
        n = side["total_ios"]
        pct = side["clat_ns"]["percentile"]
        out = {
            "iops": side["iops"],
            "p5_us": pct["5.000000"] / 1e3,
            "p50_us": pct["50.000000"] / 1e3,
        }
        if pid:
            (v0, n0), c0 = before
            (v1, n1), c1 = task_switches(pid), cpu_s(pid)
            out.update(vcs=(v1 - v0) / n, nvcs=(n1 - n0) / n, cpu_us=(c1 - c0) / n * 1e6)
        return out

    def seqwrite(self):
        subprocess.run(["blkdiscard", self.dev], check=True)
        side = fio(self.dev, self.size, ["--rw=write", "--bs=1M", "--ioengine=psync"], 30)
        return {"mb_s": side["bw_bytes"] / 1e6}


def median(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2]


def report(results, ref):
    for name, jobs in results.items():
        for job, runs in jobs.items():
            cols = [f"{k} {median([r[k] for r in runs]):.2f}" for k in runs[0]]
            if ref in results and name != ref:
                key = next(iter(runs[0]))
                ratios = [a[key] / b[key] for a, b in zip(runs, results[ref][job], strict=True)]
                cols.append(f"vs {ref} {median(ratios):.2f}")
            print(f"{name:8} {job:9} " + "  ".join(cols))
            print(f"{'':18} {next(iter(runs[0]))}: {[round(r[next(iter(r))]) for r in runs]}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("qd1", "seqwrite"))
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--runtime", type=int, default=1, help="seconds per qd1 job (default 1)")
    p.add_argument("--size-mib", type=int, default=None, help="default 64 (qd1), 256 (seqwrite)")
    p.add_argument("--poll-ns", default=None, help="guest_halt_poll_ns for the run")
    p.add_argument("--python", default=sys.executable, help="runs the zramfs daemons")
    args = p.parse_args()
    size = (args.size_mib or (64 if args.mode == "qd1" else 256)) << 20
    saved = None
    if args.poll_ns is not None:
        with open(tuning.HALT_POLL_NS) as f:
            saved = f.read().strip()
        with open(tuning.HALT_POLL_NS, "w") as f:
            f.write(args.poll_ns)
    targets = []
    try:
        with tempfile.TemporaryDirectory(prefix="zramfs-wakeups-") as tmp:
            memserver = None
            if any(s == "mem" for s in args.specs):
                memserver = swap_workload.compile_c("fuse_memserver", tmp, packages=["fuse3"])
            for spec in args.specs:
                targets.append(Target(spec, size, args.python, memserver, tmp))
            jobs = ("randread", "randwrite") if args.mode == "qd1" else ("seqwrite",)
            results = {t.name: {j: [] for j in jobs} for t in targets}
            if args.mode == "qd1":
                for t in targets:  # data to read back, not empty slots
                    fio(t.dev, size, ["--rw=write", "--bs=1M", "--ioengine=psync"], 30)
            for cycle in range(args.cycles):
                for job in jobs:
                    for t in targets if cycle % 2 == 0 else targets[::-1]:
                        res = t.qd1(job, args.runtime) if job != "seqwrite" else t.seqwrite()
                        results[t.name][job].append(res)
            while targets:
                targets.pop().close()
    finally:
        for t in targets:
            t.close()
        if saved is not None:
            with open(tuning.HALT_POLL_NS, "w") as f:
                f.write(saved)
    print(f"guest_halt_poll_ns {args.poll_ns or 'as it was'}; load {os.getloadavg()[0]:.2f}")
    report(results, "mem" if args.mode == "qd1" else "zram")


if __name__ == "__main__":
    sys.exit(main())
