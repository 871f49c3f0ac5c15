"""Helpers for the system tier: the real zramfs command, and cleanup that always runs.

Every test gets a `ZramfsEnv` rooted in its own tmp_path.  Its ZRAMFS_RUN_DIR
is private, so `zramfs swapon`/`swapoff --all` in a test only ever see that
test's devices, never the machine's own.  Whatever the test did or failed to
do, teardown removes -- without going through the zramfs CLI, so a CLI bug
cannot hide behind its own cleanup -- every swap area, loop device, mount and
daemon that belongs under that root, and then fails the test if it had to.
`test_cleanup.py` tests that path on purpose-made messes.  The fixture
itself is in conftest.py.

What is left behind is found here on purpose independently of
`zramfs.system` (its own reads of /proc and /sys, daemons found by their
command line, not by the record a daemon writes): the seam under test must
not be the judge of its own cleanup.  Only mm_stat, a format rather than
a piece of state, goes through the one parser.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from memcg import memory_cgroup

from zramfs import mountinfo, tuning
from zramfs.fuse import BACKENDS  # noqa: F401  (the tests' backend parameters)
from zramfs.system import parse_mm_stat

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO, "scripts")  # on sys.path already: tests/conftest.py


def _under(path, root):
    return path == root or path.startswith(root + os.sep)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _saved_settings(run_dir):
    try:
        with open(os.path.join(run_dir, tuning.STATE_FILE)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


# -- small steps the system tests share ------------------------------------------


def sh(*argv):
    """Run a system tool and require success; its stdout."""
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (argv, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def attach(disk):
    """A loop device on `disk` as zramfs attaches one (direct I/O, 4 KiB sectors)."""
    return sh(
        "losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk
    ).strip()


def detach(env, loop):
    """Detach `loop` and wait until it is gone (autoclear ends with its last opener)."""
    sh("losetup", "-d", loop)
    deadline = time.monotonic() + 10
    while loop in env.loops() and time.monotonic() < deadline:
        time.sleep(0.05)


def swap_workload_argv(mib, touches, *extra):
    """scripts/swap_workload.py over `mib` MiB of pages and `touches` random touches, every page checked."""
    return [
        sys.executable,
        os.path.join(SCRIPTS, "swap_workload.py"),
        "--mib",
        str(mib),
        "--touches",
        str(touches),
        *extra,
    ]


def swap_under_pressure(limit, mib, touches, sample, interval, timeout):
    """Run the swap workload in a memory cgroup of `limit` bytes, calling
    `sample()` every `interval` seconds meanwhile; the workload's JSON report,
    once it has exited 0."""
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            sample()
            stop.wait(interval)

    thread = threading.Thread(target=sampler)
    thread.start()
    try:
        with memory_cgroup(limit) as cg:
            result = cg.run(
                swap_workload_argv(mib, touches), capture_output=True, text=True, timeout=timeout
            )
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def store(mnt, name, text):
    """Write `text` to attribute file `name` at mount root `mnt`, in one write(2), as echo does."""
    fd = os.open(os.path.join(mnt, name), os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def attr(mnt, name):
    """Attribute file `name` at mount root `mnt`, as cat shows it."""
    with open(os.path.join(mnt, name)) as f:
        return f.read()


@contextlib.contextmanager
def tmpfs(path, size):
    """A tmpfs of `size` bytes mounted at `path` (made if missing), unmounted afterwards."""
    os.makedirs(path, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        sh("umount", str(path))


class ZramfsEnv:
    """The zramfs command, run for real, with everything it makes kept under `root`."""

    def __init__(self, root):
        self.root = os.path.realpath(str(root))
        self.run_dir = os.path.join(self.root, "run")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO, os.environ.get("PYTHONPATH")) if p
        )
        self.env["ZRAMFS_RUN_DIR"] = self.run_dir

    # -- running things ------------------------------------------------------

    def cli(self, *args, timeout=120, prefix=(), **kwargs):
        """Run `[PREFIX...] python -m zramfs ARGS`; returns the CompletedProcess (text)."""
        return subprocess.run(
            [*prefix, sys.executable, "-m", "zramfs", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )

    def start(self, *args, **kwargs):
        """Start `python -m zramfs ARGS` without waiting; returns the Popen (text, stdout and stderr piped)."""
        return subprocess.Popen(
            [sys.executable, "-m", "zramfs", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    def ok(self, *args, **kwargs):
        """Run the CLI and require success."""
        proc = self.cli(*args, **kwargs)
        assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def status(self):
        """`zramfs status --json`, only this env's devices."""
        rows = json.loads(self.ok("status", "--json").stdout)["zramfs"]
        return [r for r in rows if _under(r["dir"], self.root)]

    def device(self, name):
        (row,) = [r for r in self.status() if r["name"] == name]
        return row

    def mm_stat(self, mountpoint):
        """mm_stat's columns at `mountpoint`, as a list in the kernel's order."""
        with open(os.path.join(mountpoint, "mm_stat")) as f:
            return list(parse_mm_stat(f.read()).values())

    # -- what is left ----------------------------------------------------------

    def loops(self):
        """{'/dev/loopN': backing file} for loop devices backed by files under root."""
        found = {}
        for dev in os.listdir("/sys/block"):
            try:
                with open(f"/sys/block/{dev}/loop/backing_file") as f:
                    backing = f.read().rstrip("\n")
            except OSError:
                continue
            if _under(backing, self.root):
                found["/dev/" + dev] = backing
        return found

    def mounts(self):
        """[(mountpoint, fstype, source)] for mounts under root or of our loop devices, top last."""
        loops = self.loops()
        found = []
        for m in mountinfo.mounts():
            if _under(m.mountpoint, self.root) or m.source in loops:
                found.append((m.mountpoint, m.fstype, m.source))
        return found

    def swaps(self):
        """Swap areas (in /proc/swaps) on our loop devices: {device: used bytes}."""
        loops = self.loops()
        found = {}
        with open("/proc/swaps") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields and fields[0] in loops:
                    found[fields[0]] = int(fields[3]) * 1024
        return found

    def _processes(self, module):
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = _cmdline(entry)
            if module not in argv or not _alive(int(entry)):
                continue
            args = argv[argv.index(module) + 1 :]
            if any(_under(a, self.root) for a in args):
                found[int(entry)] = argv
        return found

    def daemons(self):
        """{pid: argv} of zramfs daemons whose mountpoint is under root."""
        return self._processes("zramfs.daemon")

    def supervisors(self):
        """{pid: argv} of zramfs supervisors (zramfs.supervisor) whose daemon's mountpoint is under root."""
        return self._processes("zramfs.supervisor")

    def record(self, name):
        """Device `name`'s daemon.json as a dict (None when there is none yet)."""
        try:
            with open(os.path.join(self.run_dir, "." + name, "daemon.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def kill_daemon(self, name, timeout=30):
        """SIGKILL device `name`'s daemon and wait until its supervisor's next
        daemon serves (its record names it); returns the seconds that took."""
        before = self.record(name)
        os.kill(before["daemon_pid"], signal.SIGKILL)
        start = time.monotonic()
        return self.wait_restarted(name, before, start + timeout) - start

    def wait_restarted(self, name, before, deadline):
        """Wait until a daemon other than `before`'s serves device `name`; when it did (monotonic)."""
        while time.monotonic() < deadline:
            now = self.record(name)
            if now is not None and now["restarts"] > before["restarts"]:
                return time.monotonic()
            time.sleep(0.005)
        raise AssertionError(
            f"{name}: no new daemon within the timeout (record {self.record(name)})"
        )

    def kill_device(self, mountpoint):
        """SIGKILL the supervisor, then the daemon, of the device at `mountpoint`: what a
        device whose processes all died looks like (a dead mount, ENOTCONN)."""
        for found in (self.supervisors(), self.daemons()):
            for pid, argv in found.items():
                if mountpoint in argv:
                    with _suppress_lookup():
                        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            mountpoint in argv for argv in [*self.daemons().values(), *self.supervisors().values()]
        ):
            time.sleep(0.05)

    def leftovers(self):
        """Everything zramfs-related still alive under root; empty when clean."""
        state = {
            "swaps": sorted(self.swaps()),
            "loops": sorted(self.loops()),
            "mounts": [m[0] for m in self.mounts()],
            "daemons": sorted(self.daemons()),
            "supervisors": sorted(self.supervisors()),
            "run_dirs": self._run_dirs(),
            # Machine settings a swapon changed and no swapoff has put back.
            "saved_settings": sorted(_saved_settings(self.run_dir)),
        }
        return {k: v for k, v in state.items() if v}

    def _run_dirs(self):
        if not os.path.isdir(self.run_dir):
            return []
        return sorted(e.name for e in os.scandir(self.run_dir) if e.is_dir(follow_symlinks=False))

    # -- cleanup ------------------------------------------------------------------

    def cleanup(self):
        """Remove every leftover, whatever state it is in; return what there was.

        Order mirrors set-up in reverse: swap areas, filesystems on our loop
        devices, loop devices, FUSE mounts, daemons, directories.  Each step
        retries, then falls back to the forceful way (lazy unmount, SIGKILL).
        """
        found = self.leftovers()
        errors = []

        def attempt(argv):
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            return proc.returncode == 0

        for dev in self.swaps():
            if not attempt(["swapoff", dev]):
                errors.append(f"swapoff {dev}")
        # Filesystems on our loop devices and mounts under root, topmost first.
        for mountpoint, fstype, source in reversed(self.mounts()):
            if fstype == "fuse.zramfs":
                continue  # after the loop devices that hold them
            if not attempt(["umount", mountpoint]) and not attempt(["umount", "-l", mountpoint]):
                errors.append(f"umount {mountpoint}")
        for dev in self.loops():
            attempt(["losetup", "-d", dev])
        deadline = time.monotonic() + 10
        while self.loops() and time.monotonic() < deadline:
            time.sleep(0.05)  # autoclear finishes when the last opener lets go
        for dev in self.loops():
            errors.append(f"losetup -d {dev}")
        for mountpoint, fstype, source in reversed(self.mounts()):
            if not attempt(["umount", mountpoint]) and not attempt(["umount", "-l", mountpoint]):
                errors.append(f"umount {mountpoint}")
        # Supervisors first, so that none starts a daemon again.
        daemons = {**self.supervisors(), **self.daemons()}
        for pid in daemons:
            with _suppress_lookup():
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in daemons) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in daemons:
            if _alive(pid):
                with _suppress_lookup():
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in daemons) and time.monotonic() < deadline:
            time.sleep(0.05)
        errors += [f"daemon {p} survived SIGKILL" for p in daemons if _alive(p)]
        if os.path.isdir(self.run_dir) and not self.mounts():
            # No zramfs swap is left: the machine's own settings come back,
            # as the last swapoff would have done.
            try:
                tuning.restore(self.run_dir)
            except OSError as e:
                errors.append(f"restore settings: {e}")
            for name in self._run_dirs():
                try:
                    if name.startswith("."):  # a device's directory: its record and log
                        shutil.rmtree(os.path.join(self.run_dir, name))
                    else:  # a mountpoint: empty once unmounted
                        os.rmdir(os.path.join(self.run_dir, name))
                except OSError as e:
                    errors.append(f"rmdir {name}: {e.strerror}")
        if errors:
            raise RuntimeError(f"cleanup failed: {errors}; leftovers {self.leftovers()}")
        return found


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is ProcessLookupError
