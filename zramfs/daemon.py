"""The zramfs daemon: one device, one mount, its whole lifecycle (trio).

Where this sits: beside the data path.  It builds the stack
``BlockDevice -> Filesystem -> zramfs.fuse.Session``, mounts it, runs the
session's blocking request loop in a worker thread, and owns everything
around it: signals, readiness, hardening against swap deadlocks, cleanup.
The CLI (``zramfs mount``/``swapon``) starts it through `zramfs.launch`,
isolated from the caller's directory and environment.

    python -I -m zramfs.daemon MOUNTPOINT [--size BYTES] [--algorithm lz4]
        [--algorithm-params TEXT] [--mem-limit BYTES] [--name zram0]
        [--fuse-backend dev] [--threads N] [--run-dir DIR] [--ready-fd FD]

Without --size the device starts uninitialised, as zram's does: a write to
MOUNTPOINT/disksize initialises it.

The arguments are a `zramfs.config.DeviceConfig`, written by its `argv` and
read back by its one parser.

Lifecycle, in order:
  1. As root: mlockall(MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT),
     prctl(PR_SET_IO_FLUSHER), oom_score_adj=-1000.  The daemon may sit
     under swap; if its own pages could be swapped out (to itself), or it
     were OOM-killed, the machine would hang.  Each failure is logged to
     stderr and the daemon carries on.  Without root all three are skipped
     with one log line: mlockall under a user's RLIMIT_MEMLOCK would make
     the pool's large reservations fail, and such a mount cannot be swap.
  2. Build the device, mount (mount(2) as root; without root through
     fusermount3, owner-only: see zramfs.fuse._mount).  Any failure:
     "ERROR <message>" on --ready-fd, exit 1, nothing left mounted.
  3. Serve in a thread; stat MOUNTPOINT/disk from another thread.  Only when
     that answers: the record (pid, start time, config) into --run-dir
     (`zramfs.system.DaemonRecord`, how the CLI finds this process and its
     backend), "READY" on --ready-fd and READY=1 to $NOTIFY_SOCKET.
  4. SIGTERM/SIGINT: unmount (lazily: a loop device still holding `disk` is
     served until it lets go), exit 0 when the session ends.  A second
     signal aborts the connection.  An unmount by anyone else: exit 0.

One nursery; every cleanup is pushed on one AsyncExitStack as soon as the
thing it undoes exists (S3QL's mount.py does the same).  Nothing here runs
per request: the request path is `zramfs.fuse` alone.
"""

import argparse
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from contextlib import AsyncExitStack

import trio

from zramfs.config import DeviceConfig
from zramfs.device import DeviceError
from zramfs.fs import Filesystem, FsError
from zramfs.fuse import BACKENDS, DEFAULT_THREADS, MountError, Session

# The starting side lives in zramfs.launch (it must not import trio, which
# this module needs); re-exported for callers that start daemons themselves.
from zramfs.launch import DaemonStartError, spawn_daemon, start_background  # noqa: F401
from zramfs.system import DaemonRecord, remove_device_dir, start_time

# mlockall(2) flags: lock what is mapped now, what gets mapped later, and
# only once touched (so reserved-but-unused memory, e.g. thread stacks, is
# not pinned).
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
# prctl(2): this process does I/O on behalf of memory reclaim, so its own
# allocations must not recurse into reclaim I/O (loop and nbd daemons use it).
PR_SET_IO_FLUSHER = 57
# oom_score_adj's minimum: never pick the process that holds swapped-out memory.
OOM_SCORE_ADJ_MIN = -1000

# How long the mount may take to answer its first stat before setup fails.
READY_TIMEOUT_S = 10.0
# Exit codes.
EXIT_OK = 0
EXIT_SETUP_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVE_FAILED = 3


class SetupError(Exception):
    """Raised when the daemon cannot set up its device or mount; the message is one line."""


def _log(msg):
    # stderr only, and only outside the request path.
    print(f"zramfs-daemon: {msg}", file=sys.stderr, flush=True)


# -- hardening: a swap daemon must never wait on swap or on the OOM killer -------


def harden():
    """Lock memory, mark as IO flusher, opt out of the OOM killer (root only)."""
    if os.geteuid() != 0:
        _log("not root: memory is not locked, PR_SET_IO_FLUSHER and oom_score_adj not set")
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        _log(f"mlockall failed: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        _log(f"prctl(PR_SET_IO_FLUSHER) failed: {os.strerror(ctypes.get_errno())}")
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ_MIN))
    except OSError as e:
        _log(f"setting oom_score_adj failed: {e.strerror}")


# -- readiness -----------------------------------------------------------------


class ReadyPipe:
    """The --ready-fd protocol: exactly one line, "READY" or "ERROR <message>", then close."""

    def __init__(self, fd):
        self.fd = fd

    def _send(self, line):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.write(fd, line.encode() + b"\n")
        except OSError as e:
            _log(f"cannot write to --ready-fd: {e.strerror}")
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    def ready(self):
        self._send("READY")

    def error(self, message):
        self._send("ERROR " + " ".join(str(message).split()))


def sd_notify(state):
    """Send `state` to systemd's $NOTIFY_SOCKET if set; returns whether it was sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
    except OSError as e:
        _log(f"cannot notify systemd ({state.split(chr(10))[0]}): {e.strerror}")
        return False
    return True


# -- the lifecycle -------------------------------------------------------------


async def _serve(session, outcome, cancel_scope):
    try:
        await trio.to_thread.run_sync(session.serve, abandon_on_cancel=True)
    except Exception as e:  # the loop itself failed (not a request: those are answered)
        outcome["error"] = e
    outcome["done"] = True
    cancel_scope.cancel()


async def _watch_signals(signals, session):
    stopping = False
    async for signum in signals:
        if not stopping:
            stopping = True
            _log(f"{signal.Signals(signum).name}: unmounting")
            sd_notify("STOPPING=1")
            try:
                session.stop()
            except OSError as e:
                _log(f"unmount failed: {e}")
        else:
            # Still busy (a loop device holds disk) and asked again: cut it off.
            _log(f"{signal.Signals(signum).name} again: aborting the connection")
            if not session.abort():
                _log("cannot abort the connection (no fusectl at /sys/fs/fuse/connections)")


async def _wait_until_answering(mountpoint):
    """Return once MOUNTPOINT/disk answers stat (which needs INIT and LOOKUP served)."""
    path = os.path.join(mountpoint, "disk")
    try:
        with trio.fail_after(READY_TIMEOUT_S):
            await trio.to_thread.run_sync(os.stat, path, abandon_on_cancel=True)
    except trio.TooSlowError:
        raise SetupError(f"{mountpoint} did not answer within {READY_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise SetupError(f"{path} does not answer: {e.strerror}") from None


def build_filesystem(config):
    """The Filesystem of `config`, set up through the same calls as zram's
    attribute files: comp_algorithm, algorithm_params, mem_limit,
    recomp_algorithm and backing_dev, then,
    with a size, disksize (a daemon started with --size is initialised at
    once; without, it waits for a write to `disksize`).  FsError when a
    setting is refused, with the message the attribute write would get.
    The watermark's settings go through writeback_watermark's calls."""
    fs = Filesystem()
    fs.set_algorithm(config.algorithm)
    if config.algorithm_params:
        fs.set_algorithm_params(config.algorithm_params)
    fs.set_mem_limit(str(config.mem_limit))
    for text in config.recomp_algorithms:
        fs.set_recomp_algorithm(text)
    if config.backing_dev is not None:
        fs.set_backing_dev(config.backing_dev)
    # The watermark, then its low mark (checked as a pair).
    for name in ("writeback_watermark", "writeback_low_watermark"):
        if getattr(config, name):
            fs.set_watermark(name, str(getattr(config, name)))
    if config.size is not None:
        fs.init_size(config.size)
    return fs


async def run(config, ready):
    """The daemon's body; returns the exit code."""
    mountpoint = config.mountpoint
    outcome = {"done": False, "error": None}
    # Signals first: a SIGTERM that lands between mount and serve must
    # unmount, not kill us with the mount left behind.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            try:
                fs = build_filesystem(config)
                # Last out: the device closes after the unmount (a backing
                # file is emptied then, see zramfs._backing).
                stack.callback(fs.close)
                session = Session(
                    fs,
                    mountpoint,
                    fsname=config.name,
                    backend=config.fuse_backend,
                    threads=DEFAULT_THREADS if config.threads is None else config.threads,
                )
                session.mount()
            except (MountError, DeviceError, FsError, ValueError) as e:
                raise SetupError(str(e)) from None
            # LIFO: stop (unmount) runs before close (release the fd).
            stack.callback(session.close)
            stack.callback(session.stop)
            # Keep no directory busy under the mount's parents.
            os.chdir("/")
            setup_error = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve, session, outcome, nursery.cancel_scope)
                nursery.start_soon(_watch_signals, signals, session)
                try:
                    await _wait_until_answering(mountpoint)
                except SetupError as e:
                    # Raised outside the nursery, so it is not wrapped in an
                    # ExceptionGroup; the exit stack unmounts on the way out.
                    setup_error = e
                    nursery.cancel_scope.cancel()
                else:
                    if fs.device is None:
                        _log(
                            f"serving {mountpoint} (uninitialised: write its disksize file to start)"
                        )
                    else:
                        _log(f"serving {mountpoint} ({config.size} bytes, {fs.algorithm})")
                    if config.run_dir is not None:
                        _write_record(config)
                    ready.ready()
                    sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {mountpoint}")
            if setup_error is not None:
                raise setup_error
    if outcome["error"] is not None:
        _log(f"the FUSE session failed: {outcome['error']!r}")
        return EXIT_SERVE_FAILED
    if session.errors:
        _log(f"{session.errors} requests failed with unexpected errors (answered EIO)")
    return EXIT_OK


def _write_record(config):
    """Say who serves this device (pid, start time, config), for the CLI to find; a failure is logged."""
    pid = os.getpid()
    try:
        DaemonRecord(pid, start_time(pid), config).write(config.run_dir)
    except (OSError, TypeError) as e:
        _log(f"cannot write the daemon record into {config.run_dir}: {e}")


class _UsageError(Exception):
    """Raised by the argument parser instead of exiting, so --ready-fd can hear about it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def _ready_fd_in(argv):
    """--ready-fd's value from a command line that failed to parse, if it is there."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--ready-fd=") else None
        if a == "--ready-fd" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def parse_args(argv=None):
    """(DeviceConfig, --ready-fd) of a daemon command line."""
    p = _Parser(prog="python -m zramfs.daemon", description="Serve one zramfs device.")
    DeviceConfig.add_arguments(p, backends=BACKENDS)
    p.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        help='write "READY" or "ERROR <msg>" here, then close it',
    )
    args = p.parse_args(argv)
    return DeviceConfig.from_args(args), args.ready_fd


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, ready_fd = parse_args(argv)
    except _UsageError as e:
        print(f"usage error: {e}", file=sys.stderr)
        ReadyPipe(_ready_fd_in(argv)).error(e)
        return EXIT_USAGE
    ready = ReadyPipe(ready_fd)
    if ready_fd is not None:
        try:
            os.set_inheritable(ready_fd, False)
        except OSError:
            _log(f"--ready-fd {ready_fd} is not open")
            ready.fd = None
    harden()
    try:
        code = trio.run(run, config, ready)
    except SetupError as e:
        _log(f"error: {e}")
        ready.error(str(e))
        return EXIT_SETUP_FAILED
    finally:
        # The device is gone: so is its directory (record, log), and the
        # name is free again once this process has exited (its lock goes).
        if config.run_dir is not None:
            _forget(config.run_dir)
    # Stopped before the mount ever answered (a signal during setup).
    ready.error("stopped before the mount was ready")
    return code


def _forget(run_dir):
    try:
        remove_device_dir(run_dir)
    except OSError as e:
        _log(f"cannot remove {run_dir}: {e.strerror}")


if __name__ == "__main__":
    sys.exit(main())
