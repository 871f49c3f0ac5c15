#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Run a command in a memory cgroup with a limit, and always remove the cgroup.

Test and benchmark tooling, not part of zramfs: it is how tests/system and
scripts/bench.py put a workload under memory pressure so that its pages go
to swap (and so through zramfs).  Works with cgroup v1 (the ``memory``
hierarchy: ``memory.limit_in_bytes``) and v2 (``memory.max``; ``memory.swap.max``
is left alone, i.e. unlimited).  The cgroup is made below the caller's own
cgroup where the hierarchy allows it, so it stays inside whatever limits the
caller already runs under.

Only the RAM limit is set: the workload may swap as much as it likes.

    with memory_cgroup(96 << 20) as cg:
        result = cg.run([sys.executable, "swap_workload.py", "--mib", "256"])

or from a shell:  scripts/memcg.py --limit-mib 96 -- python3 scripts/swap_workload.py

``proc_status_kib`` reads how much memory a process holds (VmRSS, VmHWM):
the other half of measuring a workload or a daemon under pressure.
"""

import argparse
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time

__all__ = [
    "CgroupError",
    "MemoryCgroup",
    "memory_cgroup",
    "find_memory_hierarchy",
    "proc_status_kib",
]


def proc_status_kib(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM, VmLck, ...), in KiB:
    how much of a workload's or a daemon's memory is resident."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class CgroupError(RuntimeError):
    """Raised when no memory cgroup can be made, or one cannot be removed."""


def _mounts():
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target, fstype, options = line.split()[:4]
            yield target.replace("\\040", " "), fstype, options.split(",")


def _own_cgroup(version):
    """This process's cgroup path in the v1 memory hierarchy or in v2."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if version == 1 and "memory" in controllers.split(","):
                return path
            if version == 2 and hid == "0" and controllers == "":
                return path
    return "/"


def find_memory_hierarchy():
    """Return (version, directory to make the cgroup in).

    v1 when a cgroup v1 hierarchy has the memory controller (the kernel then
    does not give it to v2 as well); else v2, below the nearest cgroup whose
    children get the memory controller.
    """
    for target, fstype, options in _mounts():
        if fstype == "cgroup" and "memory" in options:
            own = os.path.join(target, _own_cgroup(1).lstrip("/"))
            return 1, own if os.path.isdir(own) else target
    for target, fstype, options in _mounts():
        if fstype != "cgroup2":
            continue
        # v2's "no internal processes" rule: a cgroup that holds processes
        # cannot hand controllers to children, so walk up from our own cgroup
        # to one that already does (the root always may).
        path = os.path.join(target, _own_cgroup(2).lstrip("/"))
        while True:
            try:
                with open(os.path.join(path, "cgroup.subtree_control")) as f:
                    if "memory" in f.read().split():
                        return 2, path
            except OSError:
                pass
            if os.path.normpath(path) == os.path.normpath(target):
                break
            path = os.path.dirname(path)
        with open(os.path.join(target, "cgroup.controllers")) as f:
            if "memory" in f.read().split():
                try:
                    with open(os.path.join(target, "cgroup.subtree_control"), "w") as f:
                        f.write("+memory")
                except OSError as e:
                    raise CgroupError(f"cannot enable the v2 memory controller: {e}") from e
                return 2, target
    raise CgroupError("no memory cgroup controller (neither cgroup v1 memory nor v2 memory)")


class MemoryCgroup:
    """One memory cgroup with a RAM limit; use through ``memory_cgroup()``."""

    def __init__(self, limit, name=None):
        self.limit = int(limit)
        self.version, parent = find_memory_hierarchy()
        name = name or f"zramfs-memcg-{os.getpid()}-{time.monotonic_ns()}"
        self.path = os.path.join(parent, name)

    def _write(self, filename, value):
        with open(os.path.join(self.path, filename), "w") as f:
            f.write(str(value))

    def _read(self, filename):
        with open(os.path.join(self.path, filename)) as f:
            return f.read()

    def create(self):
        try:
            os.mkdir(self.path)
        except OSError as e:
            raise CgroupError(f"cannot make cgroup {self.path}: {e.strerror}") from e
        try:
            if self.version == 1:
                self._write("memory.limit_in_bytes", self.limit)
            else:
                self._write("memory.max", self.limit)
        except BaseException:
            self.remove()
            raise

    def procs(self):
        try:
            return [int(p) for p in self._read("cgroup.procs").split()]
        except FileNotFoundError:
            return []

    def popen(self, argv, **kwargs):
        """Start argv inside the cgroup (it joins before exec, so every page counts)."""
        procs = os.path.join(self.path, "cgroup.procs")

        def join():
            with open(procs, "w") as f:
                f.write("0")  # "0" means the writing process itself

        return subprocess.Popen(argv, preexec_fn=join, **kwargs)

    def run(self, argv, *, timeout=None, capture_output=False, **kwargs):
        """Like subprocess.run(argv), inside the cgroup.  Kills it on timeout."""
        if capture_output:
            kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
        with self.popen(argv, **kwargs) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

    def peak(self):
        """The most memory the cgroup has been charged, in bytes (v2: needs 5.19+)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return int(self._read(name))

    def remove(self, timeout=30.0):
        """Kill what is left inside, wait for it to go, remove the cgroup."""
        if not os.path.isdir(self.path):
            return
        deadline = time.monotonic() + timeout
        while True:
            pids = self.procs()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                # EBUSY while killed processes are still exiting (a process
                # swapping its pages back in to exit can take a moment).
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise CgroupError(
                        f"cannot remove cgroup {self.path}: {e.strerror} (pids {pids})"
                    ) from e
            time.sleep(0.05)


@contextlib.contextmanager
def memory_cgroup(limit, name=None):
    """A memory cgroup limited to ``limit`` bytes of RAM, removed on exit whatever happened."""
    cg = MemoryCgroup(limit, name)
    cg.create()
    try:
        yield cg
    finally:
        cg.remove()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="memcg.py", description="Run a command in a memory cgroup with a RAM limit."
    )
    parser.add_argument("--limit-mib", type=int, required=True, help="RAM limit in MiB")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    with memory_cgroup(args.limit_mib << 20) as cg:
        result = cg.run(command)
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


if __name__ == "__main__":
    sys.exit(main())
