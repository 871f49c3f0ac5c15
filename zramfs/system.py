"""The system as zramfs sees it: /proc, /sys and the run directory, read under one root.

Where this sits: beside the data path, under the CLI.  Everything the
commands (and ``scripts/bench.py`` and the tests) know about devices comes
from here, read fresh each time: nothing is cached, and the CLI keeps no
state of its own beyond what a daemon writes into its run directory.

Every path is read under ``root`` (``/`` on a real machine), the way
zram-generator's discovery takes a root prefix, so the tests render a fake
tree -- ``proc/self/mountinfo``, ``proc/swaps``, ``proc/PID/stat``,
``sys/block/loopN/loop/backing_file``, the run directory, the attribute files
at a mountpoint -- and check what is found there, without root.  The
loop-device helpers (``add_loop_device`` and the rest, through
/dev/loop-control) are the exception: they make and remove devices on the
real machine, for ``swapon --loop`` and zramfs-generator's setup.

The run directory (``$ZRAMFS_RUN_DIR``, default ``/run/zramfs``; for a user
without root ``$XDG_RUNTIME_DIR/zramfs``) holds, for each device NAME:

    NAME/               swapon's mountpoint (zram's attribute files and disk)
    .NAME/              the device's own directory, made when the name is claimed
        daemon.json     the daemon's record: pid, start time, its DeviceConfig
        daemon.log      the daemon's log (unless it logs to the journal)
        supervisor.sock where the supervisor hears `zramfs restart`

A device name never starts with "." (`config.check_name`), so ``.NAME``
cannot be another device's mountpoint.  The daemon's pid and FUSE backend
come from ``daemon.json``, written by the daemon once its mount answers; the
start time in it tells a live daemon from a reused pid.

Whoever holds ``.NAME`` holds an exclusive flock(2) on it: the command that
made it, then (the open file inherited) the daemon, until it exits.  So a
name is taken exactly while that lock is held, from the moment it is
claimed, through the daemon's start, to its exit; a directory nobody locks
is left over from a crash (`is_stale`).  The daemon removes its directory
when it exits (`remove_device_dir`).
"""

import errno
import fcntl
import glob
import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, fields

from zramfs import genconf, mountinfo
from zramfs.config import DeviceConfig, mem_total
from zramfs.device import DeviceStats

FSTYPE = "fuse.zramfs"
RECORD = "daemon.json"
LOG = "daemon.log"
# The supervisor's socket, where `zramfs restart` asks for a new daemon.
CONTROL = "supervisor.sock"

# mm_stat's columns, in the kernel's order: the first nine fields of the
# device's own stats (zramfs.device.DeviceStats), which print them.
_GENERATOR_CONF = os.path.basename(genconf.CONF_FILE)

MM_STAT_COLUMNS = tuple(f.name for f in fields(DeviceStats))[:9]


def parse_mm_stat(text):
    """{column: int} of an ``mm_stat`` line (kernel zram's or zramfs's)."""
    return dict(zip(MM_STAT_COLUMNS, map(int, text.split()), strict=False))


def default_run_dir():
    """$ZRAMFS_RUN_DIR; else /run/zramfs for root, $XDG_RUNTIME_DIR/zramfs (or a private /tmp dir) for a user."""
    configured = os.environ.get("ZRAMFS_RUN_DIR")
    if configured:
        return os.path.abspath(configured)
    if os.geteuid() == 0:
        return "/run/zramfs"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(os.path.abspath(runtime), "zramfs")
    return f"/tmp/zramfs-{os.geteuid()}"


@dataclass(frozen=True)
class DaemonRecord:
    """What a daemon writes into its device directory once its mount answers.

    `pid` is the process that lives as long as the device: the supervisor
    (zramfs.supervisor), or the daemon itself when it runs alone (pyfuse3).
    Under a supervisor, `daemon_pid` is the daemon serving now and
    `restarts` how many daemons came before it; each new daemon rewrites
    the record once it serves.
    """

    pid: int
    # /proc/PID/stat's starttime (clock ticks since boot): a pid reused by
    # another process after the daemon died has another one.
    start_time: int
    config: DeviceConfig
    daemon_pid: int | None = None
    daemon_start_time: int | None = None
    restarts: int = 0

    @property
    def supervised(self):
        return self.daemon_pid is not None

    def processes(self):
        """(pid, start time) of the supervisor and the daemon (one pair when unsupervised)."""
        found = [(self.pid, self.start_time)]
        if self.daemon_pid is not None and self.daemon_pid != self.pid:
            found.append((self.daemon_pid, self.daemon_start_time))
        return found

    def write(self, directory):
        """Write ``daemon.json`` into `directory` atomically (readers never see half of it)."""
        path = os.path.join(directory, RECORD)
        tmp = path + ".tmp"
        data = {"pid": self.pid, "start_time": self.start_time, "config": asdict(self.config)}
        if self.supervised:
            data["daemon_pid"] = self.daemon_pid
            data["daemon_start_time"] = self.daemon_start_time
            data["restarts"] = self.restarts
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)

    @classmethod
    def parse(cls, text):
        data = json.loads(text)
        daemon_pid = data.get("daemon_pid")
        return cls(
            int(data["pid"]),
            int(data["start_time"]),
            DeviceConfig(**data["config"]),
            daemon_pid=None if daemon_pid is None else int(daemon_pid),
            daemon_start_time=data.get("daemon_start_time"),
            restarts=int(data.get("restarts", 0)),
        )


# linux/loop.h: /dev/loop-control's requests.
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
LOOP_CTL_GET_FREE = 0x4C82
_LOOP_RE = re.compile(r"/dev/loop(0|[1-9][0-9]{0,6})")


def loop_index(path):
    """N of a loop device path ``/dev/loopN``; ValueError for anything else."""
    m = _LOOP_RE.fullmatch(path)
    if m is None:
        raise ValueError(f"{path!r} is not a loop device path like /dev/loop7")
    return int(m.group(1))


def _loop_control(request, arg=0):
    fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, request, arg)
    finally:
        os.close(fd)


def make_loop_node(index):
    """Make /dev/loopN for the kernel's loop device N, if /dev lacks it.

    A container's /dev is a plain tmpfs that no udev fills in; on a host,
    devtmpfs has every node and this makes nothing.
    """
    path = f"/dev/loop{index}"
    if os.path.exists(path):
        return
    try:
        with open(f"/sys/block/loop{index}/dev") as f:
            major, minor = map(int, f.read().split(":"))
    except OSError:
        return  # removed meanwhile
    os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(major, minor))


def add_loop_device(index):
    """Have loop device N and its node: LOOP_CTL_ADD makes it unless it is there (EEXIST)."""
    try:
        _loop_control(LOOP_CTL_ADD, index)
    except FileExistsError:
        pass
    make_loop_node(index)


def make_free_loop_nodes():
    """Nodes for every loop device, after asking the kernel for a free one.

    ``losetup --find`` gets a number from /dev/loop-control and then opens
    /dev/loopN, which a container's /dev lacks.  LOOP_CTL_GET_FREE first
    makes the kernel add a device when none is free; then every node is made.
    """
    _loop_control(LOOP_CTL_GET_FREE)
    for entry in os.listdir("/sys/block"):
        if entry.startswith("loop") and entry[4:].isdigit():
            make_loop_node(int(entry[4:]))


def remove_loop_device(index, attempts=20):
    """Remove loop device N once it is detached (LOOP_CTL_REMOVE); False if it stays.

    Right after a detach, udev may still hold it open to probe it (EBUSY):
    so a few tries, 50 ms apart.  An attached device is never removed.
    """
    for _ in range(attempts):
        try:
            _loop_control(LOOP_CTL_REMOVE, index)
            return True
        except OSError as e:
            if e.errno == errno.ENODEV:
                return True  # no such device: nothing to remove
            if e.errno != errno.EBUSY:
                raise
        time.sleep(0.05)
    return False


def remove_device_dir(path):
    """Remove a device directory: its record and log, then the directory (only those, never more)."""
    for name in (RECORD, RECORD + ".tmp", LOG, CONTROL):
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def lock_device_dir(path):
    """Open `path` and take its exclusive lock without waiting; the fd, or None if someone holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def start_time(pid, root="/"):
    """/proc/PID/stat's starttime, or None if there is no such process (or it is a zombie)."""
    try:
        with open(os.path.join(root, f"proc/{pid}/stat")) as f:
            # comm may hold spaces and ")": the fields start after the last ")".
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # exited, whoever reaps it
        return None
    return int(fields[19])


@dataclass(frozen=True)
class DeviceState:
    """One mounted zramfs device as `status` shows it; None where something could not be read.

    `record` is its live daemon's record (None when the daemon is gone).
    """

    name: str
    mountpoint: str
    disksize: int | None
    mm_stat: dict | None
    algorithm: str | None
    loops: tuple
    record: DaemonRecord | None

    @property
    def backend(self):
        return self.record.config.fuse_backend if self.record else None


class System:
    """The machine under `root`, with zramfs's run directory `run_dir` (a path on that machine)."""

    def __init__(self, root="/", run_dir=None):
        self.root = os.path.abspath(root)
        self.run_dir = run_dir or default_run_dir()

    def path(self, path):
        """Where the machine's absolute `path` is under root."""
        return os.path.join(self.root, path.lstrip("/"))

    # -- mounts, loops, swaps ----------------------------------------------------

    def mounts(self):
        return mountinfo.mounts(self.path(mountinfo.MOUNTINFO))

    def mount_at(self, mountpoint):
        """The topmost mount at `mountpoint`, or None."""
        found = None
        for m in self.mounts():
            if m.mountpoint == mountpoint:
                found = m
        return found

    def zramfs_mounts(self):
        """The fuse.zramfs mounts (the source is the device NAME), topmost per path."""
        by_path = {m.mountpoint: m for m in self.mounts()}
        return [m for m in by_path.values() if m.fstype == FSTYPE]

    def loops_for(self, backing):
        """Loop devices whose backing file is `backing`, e.g. ['/dev/loop0']."""
        found = []
        for path in glob.glob(self.path("/sys/block/loop*/loop/backing_file")):
            try:
                with open(path) as f:
                    name = f.read().rstrip("\n")
            except OSError:
                continue  # detached between glob and open
            if name == backing:
                found.append(os.path.basename(os.path.dirname(os.path.dirname(path))))
        return ["/dev/" + n for n in sorted(found, key=lambda n: int(n[len("loop") :]))]

    def loop_attached(self, loop):
        """Whether /dev/loopN still has a backing file."""
        return os.path.exists(self.path(f"/sys/block/{os.path.basename(loop)}/loop"))

    def active_swaps(self):
        """The devices and files in /proc/swaps."""
        with open(self.path("/proc/swaps")) as f:
            next(f, None)  # header
            return {mountinfo.unescape(line.split()[0]) for line in f if line.strip()}

    def mem_total(self):
        return mem_total(self.path("/proc/meminfo"))

    # -- a device's attribute files ------------------------------------------------

    def read_attr(self, mountpoint, name):
        """The text of attribute `name` at `mountpoint`, or None (daemon gone: ENOTCONN, or no such file)."""
        try:
            with open(self.path(os.path.join(mountpoint, name))) as f:
                return f.read()
        except OSError:
            return None

    def mm_stat(self, mountpoint):
        text = self.read_attr(mountpoint, "mm_stat")
        return parse_mm_stat(text) if text else None

    # -- the run directory and daemons ---------------------------------------------

    def swap_mountpoint(self, name):
        return os.path.join(self.run_dir, name)

    def device_dir(self, name):
        return os.path.join(self.run_dir, "." + name)

    def daemon_record(self, name):
        """The record the daemon of device `name` wrote, or None."""
        try:
            with open(self.path(os.path.join(self.device_dir(name), RECORD))) as f:
                return DaemonRecord.parse(f.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not written yet (the daemon is starting), or not ours

    def daemon_alive(self, record):
        """Whether a process of `record` (supervisor or daemon) still runs (not a reused pid)."""
        return bool(self.live_processes(record))

    def live_processes(self, record):
        """(pid, start time) of the record's processes that still run."""
        if record is None:
            return []
        return [(p, t) for p, t in record.processes() if start_time(p, self.root) == t]

    def run_entries(self):
        """(mountpoint names, device-directory names) found in the run directory."""
        mountpoints: set[str] = set()
        devices: set[str] = set()
        try:
            entries = list(os.scandir(self.path(self.run_dir)))
        except FileNotFoundError:
            return mountpoints, devices
        for entry in entries:
            # /run/zramfs is also the generator's /run config directory
            # (zram-generator's layout): its file and drop-ins are no device.
            if entry.name.startswith(_GENERATOR_CONF):
                continue
            if entry.is_dir(follow_symlinks=False):
                if entry.name.startswith("."):
                    devices.add(entry.name[1:])
                else:
                    mountpoints.add(entry.name)
        return mountpoints, devices

    def name_taken(self, name):
        """Why device `name` cannot be claimed now, or None."""
        for m in self.zramfs_mounts():
            if m.source == name:
                return f"name {name!r} is in use (mounted at {m.mountpoint})"
        if self.mount_at(self.swap_mountpoint(name)) is not None:
            return f"{self.swap_mountpoint(name)} is already a mount point"
        if os.path.isdir(self.path(self.device_dir(name))) and not self.is_stale(name):
            return f"name {name!r} is in use (claimed: {self.device_dir(name)})"
        return None

    def is_stale(self, name):
        """Whether `name`'s device directory is left over: nobody (no command, no daemon) holds its lock."""
        try:
            fd = lock_device_dir(self.path(self.device_dir(name)))
        except FileNotFoundError:
            return False
        if fd is None:
            return False
        os.close(fd)
        return True

    def swap_names(self):
        """Every device swapon made under the run directory, live or left over."""
        names = set()
        for m in self.zramfs_mounts():
            if os.path.dirname(m.mountpoint) == self.run_dir:
                names.add(os.path.basename(m.mountpoint))
        mountpoints, devices = self.run_entries()
        names |= mountpoints
        for name in devices:
            record = self.daemon_record(name)
            # A `mount` device lives elsewhere; its directory is not swap's.
            if record is None or record.config.mountpoint == self.swap_mountpoint(name):
                names.add(name)
        return sorted(names)

    def device(self, m):
        """The DeviceState of zramfs mount `m`."""
        disksize = self.read_attr(m.mountpoint, "disksize")
        algorithm = None
        for word in (self.read_attr(m.mountpoint, "comp_algorithm") or "").split():
            if word.startswith("[") and word.endswith("]"):
                algorithm = word[1:-1]
        record = self.daemon_record(m.source)
        if not self.daemon_alive(record) or record.config.mountpoint != m.mountpoint:
            record = None  # its daemon is gone (a dead mount), or the record is another mount's
        return DeviceState(
            name=m.source,
            mountpoint=m.mountpoint,
            disksize=int(disksize) if disksize and disksize.strip().isdigit() else None,
            mm_stat=self.mm_stat(m.mountpoint),
            algorithm=algorithm,
            loops=tuple(self.loops_for(os.path.join(m.mountpoint, "disk"))),
            record=record,
        )

    def devices(self):
        """Every mounted zramfs device, by name then mountpoint."""
        return [
            self.device(m)
            for m in sorted(self.zramfs_mounts(), key=lambda m: (m.source, m.mountpoint))
        ]
