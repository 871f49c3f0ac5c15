"""The zramfs daemon: one device, one mount, its whole lifecycle (trio).

Where this sits: beside the data path.  It builds the stack
``BlockDevice -> Filesystem -> zramfs.fuse.Session``, mounts it, runs the
session's blocking request loop in a worker thread, and owns everything
around it: signals, readiness, hardening against swap deadlocks, cleanup.
The CLI (``zramfs mount``/``swapon``) starts it with `start_background`.

    python -m zramfs.daemon MOUNTPOINT --size BYTES [--algorithm lz4]
        [--mem-limit BYTES] [--name zram0] [--threads N] [--ready-fd FD]
        [--fuse-backend dev]

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
     that answers: "READY" on --ready-fd and READY=1 to $NOTIFY_SOCKET.
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
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from zramfs.device import BlockDevice, DeviceError
from zramfs.config import SizeError, memparse
from zramfs.fs import Filesystem
from zramfs.fuse import BACKENDS, DEFAULT_THREADS, MountError, Session, is_mounted

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

_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class SetupError(Exception):
    """Raised when the daemon cannot set up its device or mount; the message is one line."""


class DaemonStartError(Exception):
    """Raised by `start_background` when the daemon reports an error, dies or never becomes ready.

    The message is the daemon's own one-line message when it sent one.
    """


def _log(msg):
    # stderr only, and only outside the request path.
    print(f"zramfs-daemon: {msg}", file=sys.stderr, flush=True)


# -- hardening (Decision 4 in design.md) ---------------------------------------


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


async def run(args, ready):
    """The daemon's body; returns the exit code."""
    mountpoint = os.path.abspath(args.mountpoint)
    outcome = {"done": False, "error": None}
    # Signals first: a SIGTERM that lands between mount and serve must
    # unmount, not kill us with the mount left behind.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            try:
                device = BlockDevice(args.size, algorithm=args.algorithm, mem_limit=args.mem_limit)
                session = Session(
                    Filesystem(device),
                    mountpoint,
                    fsname=args.name,
                    backend=args.fuse_backend,
                    threads=args.threads,
                )
                session.mount()
            except (MountError, DeviceError, ValueError) as e:
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
                    _log(f"serving {mountpoint} ({args.size} bytes, {device.algorithm})")
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


def _size_arg(text):
    try:
        return memparse(text)
    except SizeError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None


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
    p = _Parser(prog="python -m zramfs.daemon", description="Serve one zramfs device.")
    p.add_argument("mountpoint")
    p.add_argument("--size", type=_size_arg, required=True, help="disksize in bytes (K/M/G suffixes accepted)")
    p.add_argument("--algorithm", default="lz4")
    p.add_argument("--mem-limit", type=_size_arg, default=0, help="bytes; 0 = no limit")
    p.add_argument("--name", default="zram0", help="the mount's source name (shown in /proc/mounts)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"FUSE reader threads (default {DEFAULT_THREADS})")
    p.add_argument("--ready-fd", type=int, default=None, help='write "READY" or "ERROR <msg>" here, then close it')
    p.add_argument("--fuse-backend", default="dev", choices=BACKENDS)
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
    except _UsageError as e:
        print(f"usage error: {e}", file=sys.stderr)
        ReadyPipe(_ready_fd_in(argv)).error(e)
        return EXIT_USAGE
    ready = ReadyPipe(args.ready_fd)
    if args.ready_fd is not None:
        try:
            os.set_inheritable(args.ready_fd, False)
        except OSError:
            _log(f"--ready-fd {args.ready_fd} is not open")
            ready.fd = None
    harden()
    try:
        code = trio.run(run, args, ready)
    except SetupError as e:
        _log(f"error: {e}")
        ready.error(str(e))
        return EXIT_SETUP_FAILED
    # Stopped before the mount ever answered (a signal during setup).
    ready.error("stopped before the mount was ready")
    return code


# -- starting a daemon from the CLI or tests ------------------------------------


def daemon_argv(mountpoint, size, *, algorithm="lz4", mem_limit=0, name="zram0", threads=DEFAULT_THREADS,
                fuse_backend="dev", python=None):
    """The daemon's command line (without --ready-fd): what spawn_daemon runs and `mount --foreground` execs."""
    return [
        python or sys.executable,
        "-m",
        "zramfs.daemon",
        os.path.abspath(mountpoint),
        "--size",
        str(size),
        "--algorithm",
        algorithm,
        "--mem-limit",
        str(mem_limit),
        "--name",
        name,
        "--threads",
        str(threads),
        "--fuse-backend",
        fuse_backend,
    ]


def _read_line(fd, deadline):
    """Read one line from `fd` until `deadline`; None on timeout, "" on EOF."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def spawn_daemon(
    mountpoint,
    size,
    *,
    algorithm="lz4",
    mem_limit=0,
    name="zram0",
    threads=DEFAULT_THREADS,
    fuse_backend="dev",
    timeout=30.0,
    stderr=None,
    python=None,
):
    """Start ``python -m zramfs.daemon`` and wait until it is READY; returns its Popen.

    Raises DaemonStartError with the daemon's own message if it reports an
    error or exits, or if it is not ready within `timeout` seconds (then it
    is stopped and anything it mounted is unmounted).  `stderr` goes to
    subprocess.Popen (None: inherit ours).  The daemon runs in its own
    session, so a Ctrl-C at the terminal does not reach it.
    """
    mountpoint = os.path.abspath(mountpoint)
    was_mounted = is_mounted(mountpoint)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    r, w = os.pipe()
    try:
        argv = daemon_argv(mountpoint, size, algorithm=algorithm, mem_limit=mem_limit, name=name,
                           threads=threads, fuse_backend=fuse_backend, python=python)
        proc = subprocess.Popen(
            [*argv, "--ready-fd", str(w)],
            pass_fds=(w,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        line = _read_line(r, time.monotonic() + timeout)
    finally:
        os.close(r)
    if line == "READY":
        return proc
    if line is None:
        _stop_failed(proc, mountpoint, was_mounted)
        raise DaemonStartError(f"the zramfs daemon did not become ready within {timeout:g} s")
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _stop_failed(proc, mountpoint, was_mounted)
        rc = proc.returncode
    if line.startswith("ERROR "):
        raise DaemonStartError(line[len("ERROR ") :])
    raise DaemonStartError(f"the zramfs daemon exited with status {rc} before it was ready")


def _stop_failed(proc, mountpoint, was_mounted):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not was_mounted and is_mounted(mountpoint):
        from zramfs.fuse._mount import unmount

        unmount(mountpoint)


def start_background(mountpoint, size, **kwargs):
    """Start a daemon for `mountpoint` in the background, return its pid once READY.

    Keyword arguments as `spawn_daemon`: algorithm="lz4", mem_limit=0,
    name="zram0", threads=DEFAULT_THREADS, fuse_backend="dev", timeout=30.0, stderr=None,
    python=None.  Raises DaemonStartError(one-line message).
    """
    proc = spawn_daemon(mountpoint, size, **kwargs)
    # Keep the Popen alive: dropping it while the daemon runs would warn
    # (ResourceWarning) from Popen.__del__.  The daemon outlives a CLI process.
    _background.append(proc)
    return proc.pid


_background = []


if __name__ == "__main__":
    sys.exit(main())
