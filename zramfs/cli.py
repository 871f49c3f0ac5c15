"""The ``zramfs`` command: mount, umount, swapon, swapoff, status.

Where this sits: beside the data path, never in it.  The CLI starts
``zramfs.daemon`` (which owns the FUSE session, the Filesystem, the
BlockDevice and the pool) and drives the kernel's own tools around it --
``losetup --direct-io=on --sector-size 4096``, ``mkswap``, ``swapon``,
``swapoff`` -- the way ``zramctl`` and ``zram-generator`` drive ``/dev/zramN``.
It keeps no state of its own: what ``status`` and ``swapoff`` know comes from
the system as it is now (``fuse.zramfs`` mounts in ``/proc/self/mountinfo``,
whose source is the device NAME; the attribute files at the mountpoint; loop
devices' ``backing_file``; ``/proc/swaps``; the daemon's command line).

``swapon`` mounts at ``$ZRAMFS_RUN_DIR/NAME`` (default ``/run/zramfs/NAME``);
``swapoff --all`` acts on every device under that directory and nothing else.

Errors: the layers below raise typed exceptions; this module alone turns them
into one line on stderr (``zramfs: error: ...``) and an exit code, through
the one table ``EXIT_CODES``.  Anything ``swapon`` set up before a failure is
undone in reverse order (swapoff, losetup -d, umount, daemon stopped) before
the line is printed.

Exit codes:

====  =======================================================================
0     success
1     runtime failure: a system tool, the daemon or the kernel refused
      (what was set up has been undone)
2     bad input: usage, size, name, algorithm, priority, mountpoint missing
3     needs root: swapon and swapoff; mount (without root, through
      fusermount3) on a directory this user may not write
4     FUSE unavailable: no /dev/fuse, no fusermount3 for a mount without
      root, or the --fuse-backend is not installed
5     in use: the name is taken, the mountpoint is busy, or a loop device
      (or swap) still holds the disk
6     not found: no zramfs device by that name, no zramfs mount there
130   interrupted (Ctrl-C); what swapon had set up has been undone
====  =======================================================================
"""

import argparse
import errno
import glob
import importlib.util
import json
import os
import signal
import stat
import subprocess
import sys
import time

from zramfs import config, tuning
from zramfs.codecs import (
    CODECS,
    DEFAULT_ALGORITHM,
    InvalidCodecParamsError,
    UnknownAlgorithmError,
    get_codec,
)
from zramfs.config import ConfigError
from zramfs.fuse import BACKENDS as FUSE_BACKENDS
from zramfs.mountinfo import mount_at, mounts, unescape

__all__ = ["main", "EXIT_CODES", "CliError", "NameInUseError", "DeviceNotFoundError", "CommandError"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_ROOT = 3
EXIT_NO_FUSE = 4
EXIT_IN_USE = 5
EXIT_NOT_FOUND = 6
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

DEFAULT_BACKEND = "dev"

# swapon's default priority, zram-generator's default: above any disk swap
# (which the kernel numbers from -2 down), so zramfs is used first.
DEFAULT_PRIORITY = 100

# How long umount/swapoff wait for the daemon to exit after its filesystem
# is gone before they send SIGTERM, and then before they give up.  A daemon
# that is unmounted exits within milliseconds; the margin is for a loaded box.
DAEMON_EXIT_TIMEOUT = 30.0

# How long swapoff retries an unmount that fails with EBUSY: `losetup -d`
# only sets autoclear while udev or blkid still has the loop device open,
# and the loop lets go of `disk` a moment later.
UNMOUNT_BUSY_TIMEOUT = 10.0


# -- errors this module raises itself ------------------------------------------


class CliError(Exception):
    """Base of the errors the CLI raises itself; the message is one line."""


class NameInUseError(CliError):
    """Raised when a device name or mountpoint is already taken."""


class DiskBusyError(CliError):
    """Raised when a loop device, swap or an open file still holds a zramfs mount."""


class DeviceNotFoundError(CliError):
    """Raised when no zramfs device has the given name, or no zramfs mount is at a path."""


class NeedsRootError(CliError):
    """Raised when a command that sets devices up runs without root."""


class BackendUnavailableError(CliError):
    """Raised when /dev/fuse is missing or the chosen FUSE backend is not installed."""


class CommandError(CliError):
    """Raised when a system tool (losetup, mkswap, swapon, swapoff) fails."""


class DaemonError(CliError):
    """Raised when the daemon fails to start, or does not exit when unmounted."""


def _exit_code_table():
    """(exception class, exit code), most specific first; walked along the MRO."""
    table = {
        ConfigError: EXIT_USAGE,  # SizeError, InvalidNameError
        UnknownAlgorithmError: EXIT_USAGE,
        InvalidCodecParamsError: EXIT_USAGE,
        NameInUseError: EXIT_IN_USE,
        DiskBusyError: EXIT_IN_USE,
        DeviceNotFoundError: EXIT_NOT_FOUND,
        NeedsRootError: EXIT_NOT_ROOT,
        BackendUnavailableError: EXIT_NO_FUSE,
        CommandError: EXIT_FAILURE,
        DaemonError: EXIT_FAILURE,
        tuning.TuningError: EXIT_FAILURE,
    }
    from zramfs import fuse
    from zramfs.daemon import DaemonStartError

    table.update(
        {
            DaemonStartError: EXIT_FAILURE,
            fuse.MountpointPermissionError: EXIT_NOT_ROOT,
            fuse.NoFuseDeviceError: EXIT_NO_FUSE,
            fuse.FusermountMissingError: EXIT_NO_FUSE,
            fuse.MountpointBusyError: EXIT_IN_USE,
            fuse.MountpointMissingError: EXIT_USAGE,
            fuse.MountpointNotDirectoryError: EXIT_USAGE,
            fuse.MountError: EXIT_FAILURE,
        }
    )
    return table


EXIT_CODES = _exit_code_table()


def exit_code_for(exc):
    """The exit code for a typed error, walking its MRO; None if it is not one we know."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return None


# -- real state: mounts, loop devices, swaps, daemons ---------------------------


def run_dir():
    """Where swapon mounts its devices: $ZRAMFS_RUN_DIR, default /run/zramfs."""
    return os.path.abspath(os.environ.get("ZRAMFS_RUN_DIR") or "/run/zramfs")


def zramfs_mounts():
    """The fuse.zramfs mounts (the source is the device NAME), topmost per path."""
    by_path = {}
    for m in mounts():
        by_path[m.mountpoint] = m
    return [m for m in by_path.values() if m.fstype == "fuse.zramfs"]


def loops_for(backing):
    """Loop devices whose backing file is `backing`, e.g. ['/dev/loop0']."""
    found = []
    for path in sorted(glob.glob("/sys/block/loop*/loop/backing_file")):
        try:
            with open(path) as f:
                name = f.read().rstrip("\n")
        except OSError:
            continue  # detached between glob and open
        if name == backing:
            found.append("/dev/" + path.split("/")[3])
    return sorted(found, key=lambda d: int(d[len("/dev/loop") :]))


def active_swaps():
    """The devices and files in /proc/swaps."""
    with open("/proc/swaps") as f:
        next(f, None)  # header
        return {unescape(line.split()[0]) for line in f if line.strip()}


def _daemon_argv(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
    # "python -m zramfs.daemon MOUNTPOINT ...", or its path run as a script.
    for i, arg in enumerate(argv):
        if arg == "zramfs.daemon" or arg.endswith("/zramfs/daemon.py"):
            return argv[i + 1 :]
    return None


def daemons(mountpoint):
    """{pid: daemon argv} of the zramfs daemons serving `mountpoint`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        args = _daemon_argv(entry)
        if not args:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            cwd = "/"
        # The MOUNTPOINT is the one positional argument; options take values.
        if any(os.path.normpath(os.path.join(cwd, a)) == mountpoint for a in args if not a.startswith("-")):
            found[int(entry)] = args
    return found


def _pid_alive(pid):
    """Whether pid is running (a zombie has exited, whoever reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _backend_of(args):
    """The --fuse-backend in a daemon's argv (the default if absent)."""
    for i, a in enumerate(args):
        if a == "--fuse-backend" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--fuse-backend="):
            return a.split("=", 1)[1]
    return DEFAULT_BACKEND


def backend_supports_discard(backend):
    """Whether the backend answers FUSE FALLOCATE, so discard frees memory (pyfuse3: no)."""
    from zramfs.fuse import UnknownBackendError, supports_discard

    try:
        return supports_discard(backend)
    except (ImportError, UnknownBackendError):
        return False


# -- small helpers ---------------------------------------------------------------

def _human(size, *, long=False):
    """zramctl's sizes ('4G', '1.5M', '63B'); long: '4 GiB', '512 MiB'."""
    units = "BKMGTPE"
    exp = 0
    value = float(size)
    while value >= 1024 and exp < len(units) - 1:
        value /= 1024
        exp += 1
    text = f"{value:.1f}".removesuffix(".0") if exp else str(size)
    if long:
        return f"{text} {units[exp] + 'iB' if exp else 'B'}"
    return text + units[exp]


def _run(argv, what=None):
    """Run a system tool; CommandError with its last stderr line if it fails."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except FileNotFoundError:
        raise CommandError(f"{argv[0]} not found (install util-linux)") from None
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).splitlines() if l.strip()]
        detail = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise CommandError(f"{what or ' '.join(argv)} failed: {detail}")
    return proc.stdout


# Why each command needs root, for its one-line error.  mount and umount
# do not: without root they go through fusermount3 (zramfs.fuse._mount).
_ROOT_REASONS = {
    "swapon": "it mounts, attaches a loop device and enables swap",
    "swapoff": "it disables swap, detaches a loop device and unmounts",
}


def _need_root(command):
    if os.geteuid() != 0:
        raise NeedsRootError(f"{command} needs root ({_ROOT_REASONS[command]})")


def _need_fuse(backend):
    from zramfs.fuse import BACKENDS

    if not os.path.exists("/dev/fuse"):
        raise BackendUnavailableError("/dev/fuse does not exist (is the fuse module loaded?)")
    if backend == "pyfuse3" and importlib.util.find_spec("pyfuse3") is None:
        raise BackendUnavailableError(
            "the pyfuse3 backend needs pyfuse3 (pip install 'zramfs[pyfuse3]')"
        )
    if backend not in BACKENDS:
        raise BackendUnavailableError(
            f"the {backend} FUSE backend is not available in this zramfs "
            f"(available: {', '.join(BACKENDS)})"
        )


def _check_algorithm(name):
    """The algorithm name if zramfs.codecs has it; else its UnknownAlgorithmError."""
    return get_codec(name).name


def _disksize(text):
    return config.check_disksize(config.parse_size(text))


def _mem_limit(text):
    """--mem-limit in bytes; 0 (zram's "no limit") when not given."""
    return 0 if text is None else config.parse_size(text)


def _name_in_use(name, mountpoint):
    """Why `name` cannot be used, or None."""
    for m in zramfs_mounts():
        if m.source == name:
            return f"name {name!r} is in use (mounted at {m.mountpoint})"
    if mount_at(mountpoint) is not None:
        return f"{mountpoint} is already a mount point"
    if daemons(mountpoint):
        return f"name {name!r} is in use (a zramfs daemon is serving {mountpoint})"
    return None


def _first_free_name():
    """The first zramN that no zramfs mount uses as name and /run/zramfs/zramN is free."""
    base = run_dir()
    taken = {m.source for m in zramfs_mounts()}
    n = 0
    while f"zram{n}" in taken or mount_at(os.path.join(base, f"zram{n}")) is not None:
        n += 1
    return f"zram{n}"


class _Undo:
    """What swapon/mount did so far, to undo in reverse order if a later step fails."""

    def __init__(self):
        self._steps = []

    def push(self, what, fn, *args, **kwargs):
        self._steps.append((what, fn, args, kwargs))

    def run(self):
        failures = []
        while self._steps:
            what, fn, args, kwargs = self._steps.pop()
            try:
                fn(*args, **kwargs)
            except Exception as e:  # keep undoing the rest
                failures.append(f"{what}: {e}")
        return failures


# -- the daemon --------------------------------------------------------------------


def _daemon_stderr():
    """Where a background daemon's log lines go.

    Our stderr when it is the journal (a socket under systemd) or a file.
    Not a pipe: whoever reads it would wait for EOF until the daemon exits.
    Not a terminal: lines would appear there long after the command ended.
    """
    try:
        mode = os.fstat(sys.stderr.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return subprocess.DEVNULL
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return subprocess.DEVNULL
    return None  # inherit


def _start_daemon(mountpoint, *, size, algorithm, mem_limit, backend, name):
    """Start the daemon in the background; return its pid once the mount answers."""
    from zramfs.daemon import start_background

    return start_background(
        mountpoint,
        size,
        algorithm=algorithm,
        mem_limit=mem_limit,
        name=name,
        fuse_backend=backend,
        stderr=_daemon_stderr(),
    )


def _wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _pid_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _stop_daemons(mountpoint, pids):
    """Wait for the daemons of an unmounted `mountpoint` to exit; SIGTERM stragglers."""
    alive = _wait_gone(pids, DAEMON_EXIT_TIMEOUT)
    if not alive:
        return
    for pid in alive:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    alive = _wait_gone(alive, DAEMON_EXIT_TIMEOUT)
    if alive:
        raise DaemonError(
            f"the daemon for {mountpoint} (pid {', '.join(map(str, alive))}) did not exit"
        )


def _unmount(mountpoint, *, busy_timeout=0.0):
    """umount(2) (fusermount3 -u without root), not lazy: refuse while a loop device or a file holds it."""
    from zramfs.fuse._mount import unmount

    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            unmount(mountpoint, lazy=False)
            return  # unmounted, or nothing mounted there any more
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise CommandError(f"umount {mountpoint} failed: {os.strerror(e.errno)}") from None
        if time.monotonic() >= deadline:
            raise DiskBusyError(f"{mountpoint} is busy (a process or loop device has files open)")
        time.sleep(0.05)


def _teardown(mountpoint, *, busy_timeout=0.0):
    """Unmount `mountpoint` (if mounted) and wait for its daemon(s) to exit."""
    pids = list(daemons(mountpoint))
    m = mount_at(mountpoint)
    if m is not None:
        _unmount(mountpoint, busy_timeout=busy_timeout)
    _stop_daemons(mountpoint, pids)


# -- commands ------------------------------------------------------------------------


def cmd_mount(args):
    """zramfs mount MOUNTPOINT --size SIZE: mount a device; return once it answers."""
    size = _disksize(args.size)
    algorithm = _check_algorithm(args.algorithm)
    mem_limit = _mem_limit(args.mem_limit)
    if args.name is not None:
        config.check_name(args.name)
    _need_fuse(args.fuse_backend)
    mountpoint = os.path.abspath(args.mountpoint)
    from zramfs.fuse import _mount

    # Missing, not a directory, already a mount point: typed MountErrors.
    _mount.check_mountpoint(mountpoint)
    if args.name is not None:
        name = args.name
        reason = _name_in_use(name, mountpoint)
        if reason:
            raise NameInUseError(reason)
    else:
        name = _first_free_name()
    from zramfs.daemon import daemon_argv

    argv = daemon_argv(
        mountpoint,
        size,
        algorithm=algorithm,
        mem_limit=mem_limit,
        fuse_backend=args.fuse_backend,
        name=name,
    )
    if args.foreground:
        # The daemon becomes this process: systemd (Type=notify) or the
        # terminal sees its readiness, logs and exit status directly.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
    _start_daemon(
        mountpoint,
        size=size,
        algorithm=algorithm,
        mem_limit=mem_limit,
        backend=args.fuse_backend,
        name=name,
    )
    print(f"{name}: {_human(size, long=True)} {algorithm}, mounted at {mountpoint}")
    return EXIT_OK


def cmd_umount(args):
    """zramfs umount MOUNTPOINT: unmount and wait for its daemon to exit."""
    mountpoint = os.path.abspath(args.mountpoint)
    m = mount_at(mountpoint)
    if m is None or m.fstype != "fuse.zramfs":
        real = os.path.realpath(mountpoint)
        m = mount_at(real)
        mountpoint = real
    if m is None or m.fstype != "fuse.zramfs":
        raise DeviceNotFoundError(f"{args.mountpoint} is not a zramfs mount")
    loops = loops_for(os.path.join(mountpoint, "disk"))
    if loops:
        raise DiskBusyError(
            f"{mountpoint}/disk is still attached to {', '.join(loops)} "
            f"(zramfs swapoff {m.source}, or swapoff/umount it and losetup -d)"
        )
    _teardown(mountpoint)
    return EXIT_OK


def cmd_swapon(args):
    """zramfs swapon [NAME]: mount a device, attach a loop device, mkswap, swapon."""
    size = _disksize(args.size) if args.size is not None else config.default_swap_size()
    algorithm = _check_algorithm(args.algorithm)
    mem_limit = _mem_limit(args.mem_limit)
    if not -1 <= args.priority <= 32767:
        raise ConfigError(f"priority {args.priority} is not between -1 and 32767")
    if args.name is not None:
        config.check_name(args.name)
    _need_root("swapon")
    _need_fuse(args.fuse_backend)
    base = run_dir()
    if args.name is not None:
        name = args.name
        mountpoint = os.path.join(base, name)
        reason = _name_in_use(name, mountpoint)
        if reason:
            raise NameInUseError(reason)
    else:
        name = _first_free_name()
        mountpoint = os.path.join(base, name)
    discard = backend_supports_discard(args.fuse_backend)

    undo = _Undo()
    try:
        while True:
            os.makedirs(base, mode=0o755, exist_ok=True)
            try:
                os.mkdir(mountpoint, 0o700)
                undo.push("remove " + mountpoint, _rmdir_if_empty, mountpoint)
            except FileExistsError:
                pass
            except FileNotFoundError:
                continue  # the last swapoff removed the run directory meanwhile
            break
        _start_daemon(
            mountpoint,
            size=size,
            algorithm=algorithm,
            mem_limit=mem_limit,
            backend=args.fuse_backend,
            name=name,
        )
        undo.push("unmount " + mountpoint, _teardown, mountpoint, busy_timeout=UNMOUNT_BUSY_TIMEOUT)
        disk = os.path.join(mountpoint, "disk")
        loop = _run(
            ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk],
            what=f"losetup {disk}",
        ).strip()
        undo.push("detach " + loop, _run, ["losetup", "-d", loop])
        _run(["mkswap", "--label", name, loop], what=f"mkswap {loop}")
        swapon = ["swapon", "--priority", str(args.priority)]
        if discard:
            swapon.append("--discard")
        else:
            print(
                f"zramfs: notice: the {args.fuse_backend} backend cannot discard, "
                "so swap runs without --discard and freed slots keep their memory until rewritten",
                file=sys.stderr,
            )
        _run(swapon + [loop], what=f"swapon {loop}")
        # Last, so a failed swapon never leaves a setting changed.
        tuning.apply(base)
    except BaseException as e:
        failures = undo.run()
        for failure in failures:
            print(f"zramfs: warning: could not undo: {failure}", file=sys.stderr)
        raise e
    print(
        f"{name}: {_human(size, long=True)} {algorithm} swap on {loop} "
        f"(priority {args.priority}{'' if discard else ', no discard'}), mounted at {mountpoint}"
    )
    return EXIT_OK


def _rmdir_if_empty(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise


def _swapoff_one(name):
    """Tear down one swapon-made device; each step only if its part is still there."""
    mountpoint = os.path.join(run_dir(), name)
    m = mount_at(mountpoint)
    if m is not None and m.fstype != "fuse.zramfs":
        raise DeviceNotFoundError(f"{mountpoint} is a {m.fstype} mount, not zramfs")
    pids = daemons(mountpoint)
    if m is None and not pids and not os.path.isdir(mountpoint):
        raise DeviceNotFoundError(f"no zramfs device named {name!r} (nothing at {mountpoint})")
    swaps = active_swaps()
    for loop in loops_for(os.path.join(mountpoint, "disk")):
        if loop in swaps:
            _run(["swapoff", loop])
        try:
            _run(["losetup", "-d", loop])
        except CommandError:
            if os.path.exists(f"/sys/block/{os.path.basename(loop)}/loop"):
                raise  # still attached: a real failure
    if m is not None:
        _unmount(mountpoint, busy_timeout=UNMOUNT_BUSY_TIMEOUT)
    _stop_daemons(mountpoint, list(pids))
    _rmdir_if_empty(mountpoint)
    if not _swap_names():
        # The last zramfs swap is gone: the machine's own settings come
        # back, and the run directory goes if nothing else is in it.
        tuning.restore(run_dir())
        _rmdir_if_empty(run_dir())


def _swap_names():
    """Every device under the run dir: zramfs mounts there and leftover directories."""
    base = run_dir()
    names = set()
    for m in zramfs_mounts():
        if os.path.dirname(m.mountpoint) == base:
            names.add(os.path.basename(m.mountpoint))
    try:
        for entry in os.scandir(base):
            if entry.is_dir(follow_symlinks=False):
                names.add(entry.name)
    except FileNotFoundError:
        pass
    return sorted(names)


def cmd_swapoff(args):
    """zramfs swapoff NAME|--all: swapoff, losetup -d, unmount, wait, remove the dir."""
    if args.all and args.name is not None:
        raise ConfigError("give a NAME or --all, not both")
    if not args.all and args.name is None:
        raise ConfigError("give a NAME or --all")
    if args.name is not None:
        config.check_name(args.name)
    _need_root("swapoff")
    if args.all:
        first = None
        for name in _swap_names():
            try:
                _swapoff_one(name)
            except Exception as e:
                code = exit_code_for(e)
                if code is None:
                    raise
                _print_error(e)
                first = first or code
        return first or EXIT_OK
    _swapoff_one(args.name)
    return EXIT_OK


def _read_attr(mountpoint, name):
    try:
        with open(os.path.join(mountpoint, name)) as f:
            return f.read()
    except OSError:
        return None  # daemon gone (ENOTCONN) or not there


def device_status(m):
    """One device's row for `status`, from the mount, its attribute files and the system."""
    mm_stat = _read_attr(m.mountpoint, "mm_stat")
    disksize = _read_attr(m.mountpoint, "disksize")
    algorithms = _read_attr(m.mountpoint, "comp_algorithm")
    orig = compr = total = None
    if mm_stat:
        fields = mm_stat.split()
        orig, compr, total = int(fields[0]), int(fields[1]), int(fields[2])
    algorithm = None
    if algorithms:
        for word in algorithms.split():
            if word.startswith("[") and word.endswith("]"):
                algorithm = word[1:-1]
    pids = daemons(m.mountpoint)
    backend = _backend_of(next(iter(pids.values()))) if pids else None
    return {
        "name": m.source,
        "disksize": int(disksize) if disksize and disksize.strip().isdigit() else None,
        "data": orig,
        "compr": compr,
        "total": total,
        "algorithm": algorithm,
        "loop": ",".join(loops_for(os.path.join(m.mountpoint, "disk"))) or None,
        "mountpoint": m.mountpoint,
        "backend": backend,
        "discard": backend_supports_discard(backend) if backend else None,
    }


# zramctl's columns, then ours, only ever appended.
STATUS_COLUMNS = (
    "NAME",
    "DISKSIZE",
    "DATA",
    "COMPR",
    "TOTAL",
    "ALGORITHM",
    "LOOP",
    "MOUNTPOINT",
    "BACKEND",
    "DISCARD",
)
_NUMERIC = {"DISKSIZE", "DATA", "COMPR", "TOTAL"}


def cmd_status(args):
    """zramfs status [--json]: one line per device, like zramctl."""
    rows = [device_status(m) for m in sorted(zramfs_mounts(), key=lambda m: (m.source, m.mountpoint))]
    if args.json:
        print(json.dumps({"zramfs": rows}, indent=2))
        return EXIT_OK
    if not rows:
        return EXIT_OK  # like zramctl: no devices, no output

    def cell(row, col):
        value = row[col.lower()]
        if value is None:
            return "-"
        if col in _NUMERIC:
            return _human(value)
        if col == "DISCARD":
            return "yes" if value else "no"
        return str(value)

    table = [list(STATUS_COLUMNS)] + [[cell(r, c) for c in STATUS_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(STATUS_COLUMNS))]
    for line in table:
        cells = [
            text.rjust(w) if col in _NUMERIC else text.ljust(w)
            for text, w, col in zip(line, widths, STATUS_COLUMNS)
        ]
        print(" ".join(cells).rstrip())
    return EXIT_OK


# -- argument parsing ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other error."""

    def error(self, message):
        command = self.prog.removeprefix("zramfs").strip()
        raise _UsageError(f"{command}: {message}" if command else message)


class _UsageError(Exception):
    pass


def build_parser():
    parser = _Parser(
        prog="zramfs",
        description="zram in userspace: compressed swap and disks over FUSE.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad input, 3 needs root, "
        "4 FUSE unavailable, 5 in use, 6 not found, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def device_options(p, *, size_required):
        p.add_argument(
            "--size",
            required=size_required,
            help="disksize: bytes, K/M/G/T suffix or N%% of RAM; a multiple of 4 KiB"
            + ("" if size_required else " (default min(ram/2, 4G))"),
        )
        p.add_argument(
            "--algorithm",
            default=DEFAULT_ALGORITHM,
            help=f"compression algorithm: {', '.join(CODECS)} (default {DEFAULT_ALGORITHM})",
        )
        p.add_argument("--mem-limit", help="memory limit for compressed data (like zram's mem_limit)")
        p.add_argument(
            "--fuse-backend",
            choices=FUSE_BACKENDS,
            default=DEFAULT_BACKEND,
            help="FUSE transport (default dev: /dev/fuse directly; pyfuse3 cannot discard)",
        )

    p = sub.add_parser("mount", help="mount a zramfs device (its `disk` file) on MOUNTPOINT")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    device_options(p, size_required=True)
    p.add_argument("--name", help="device name, the mount's source (default first free zramN)")
    p.add_argument("--foreground", action="store_true", help="run the daemon in this process")
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount MOUNTPOINT and wait for its daemon to exit")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("swapon", help="set up compressed swap: mount, losetup, mkswap, swapon")
    p.add_argument("name", metavar="NAME", nargs="?", help="device name (default first free zramN)")
    device_options(p, size_required=False)
    p.add_argument(
        "--priority",
        type=int,
        default=DEFAULT_PRIORITY,
        help=f"swap priority, -1 to 32767 (default {DEFAULT_PRIORITY})",
    )
    p.set_defaults(func=cmd_swapon)

    p = sub.add_parser("swapoff", help="tear down swap made by swapon; nothing is left behind")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--all", action="store_true", help=f"every device under {run_dir()}")
    p.set_defaults(func=cmd_swapoff)

    p = sub.add_parser("status", help="one line per device, like zramctl")
    p.add_argument("--json", action="store_true", help="JSON, sizes in bytes")
    p.set_defaults(func=cmd_status)
    return parser


def _print_error(exc):
    print(f"zramfs: error: {exc}", file=sys.stderr)


def main(argv=None):
    """The console script ``zramfs``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"zramfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("zramfs: error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = exit_code_for(e)
        if code is None:
            raise
        _print_error(e)
        return code
