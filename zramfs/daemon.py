"""The zramfs daemon: one device, one mount, its whole lifecycle.

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
     backend), "READY" on --ready-fd and READY=1 to $NOTIFY_SOCKET (none
     under a supervisor that speaks to systemd itself: zramfs@.service).
  4. SIGTERM/SIGINT: unmount (lazily: a loop device still holding `disk` is
     served until it lets go), exit 0 when the session ends.  A second
     signal aborts the connection.  An unmount by anyone else: exit 0.

Under a supervisor (zramfs.supervisor, how the CLI starts the dev
backend) the daemon also gets --supervisor-fd, a SOCK_SEQPACKET socket on
which it hands over what must outlive it: the /dev/fuse fd once INIT is
answered ("FUSE <kernel minor>" + the fd) and the device's state memfds
whenever they change ("STATE NAME..." + the fds: at READY, after an init
or reset through the attribute files).  A daemon the supervisor starts
again gets them back (--fuse-fd, --kernel-minor, --state-fd NAME=FD) and:
  1'. resumes the device from the memfds (BlockDevice.resume), checking and
      rebuilding what must be; an incompatible format is a setup error;
  2'. adopts the connection (no mount, no INIT) and sends
      FUSE_NOTIFY_RESEND, so what the dead daemon read but never answered
      is asked again (a block write is idempotent);
  3'. serves, as in 3.
SIGUSR1 (`zramfs restart`): stop at a safe point -- take the device's lock,
so no table or pool update is half done -- and exit EXIT_HANDOVER at once,
without unmounting; the supervisor starts the new code.  --check-state
(with only --state-fd) asks this code whether it can resume that state.

The main thread waits in one place (`_Events`): for a signal, for the
serving thread to end, for the readiness stat.  Threads and a wakeup pipe,
not trio: trio and what it imports (ssl, attrs, idna, ...) were 10 of an
idle daemon's 31 MiB, all of it locked.  Every cleanup is pushed on one
ExitStack as soon as the thing it undoes exists (S3QL's mount.py does the
same).  Nothing here runs per request: the request path is `zramfs.fuse`
alone.
"""

import argparse
import dataclasses
import os
import select
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack

import allocator
from zramfs import supervisor
from zramfs.config import DeviceConfig
from zramfs.device import BlockDevice, DeviceError, StateFormatError
from zramfs.fs import Filesystem, FsError
from zramfs.fuse import BACKENDS, DEFAULT_THREADS, MountError, Session, is_mounted
from zramfs.system import DaemonRecord, remove_device_dir, start_time

# How long the mount may take to answer its first stat before setup fails.
READY_TIMEOUT_S = 10.0
# Exit codes.
EXIT_OK = 0
EXIT_SETUP_FAILED = supervisor.EXIT_FAILED
EXIT_USAGE = supervisor.EXIT_USAGE
EXIT_SERVE_FAILED = 3
# --check-state: this code cannot resume that state (StateFormatError).
EXIT_STATE_FORMAT = supervisor.EXIT_STATE_FORMAT
# SIGUSR1: stopped at a safe point for a restart; the supervisor starts the next daemon.
EXIT_HANDOVER = supervisor.EXIT_HANDOVER


class SetupError(Exception):
    """Raised when the daemon cannot set up its device or mount; the message is one line."""


def _log(msg):
    # stderr only, and only outside the request path.
    print(f"zramfs-daemon: {msg}", file=sys.stderr, flush=True)


def harden():
    """Lock memory, mark as IO flusher, opt out of the OOM killer (root only); shared with the supervisor."""
    supervisor.harden("zramfs-daemon")


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
    """Send `state` to systemd's $NOTIFY_SOCKET if set; returns whether it was sent.

    A supervisor that systemd started (``mount --foreground`` under
    zramfs@.service) keeps it for itself: its daemon has none.
    """
    return supervisor.sd_notify(state, who="zramfs-daemon")


# -- the supervisor's side: what must outlive this process -----------------------


class SupervisorLink:
    """The --supervisor-fd socket: hands the supervisor the fds it must hold.

    Messages are one SOCK_SEQPACKET datagram each, fds attached with
    SCM_RIGHTS; sending only copies fds, it never waits on the supervisor
    for long (it reads at once).  A failure is logged: the device still
    works, it just could not be restarted without loss.
    """

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd) if fd is not None else None
        self.supervisor_pid = os.getppid() if fd is not None else None

    def _send(self, text, fds=()):
        if self.sock is None:
            return
        try:
            socket.send_fds(self.sock, [text.encode()], list(fds))
        except OSError as e:
            _log(f"cannot hand {text.split()[0]} to the supervisor: {e.strerror}")

    def fuse(self, fd, kernel_minor, can_resend):
        self._send(f"FUSE {kernel_minor} {int(can_resend)}", [fd])

    def state(self, device):
        """The device's state memfds (none: uninitialised), replacing the ones sent before."""
        fds = device.state_fds() if device is not None else {}
        self._send(" ".join(["STATE", *fds]), fds.values())


parse_state_fds = supervisor.parse_state_fds


def resume_device(fds):
    """The BlockDevice rebuilt from a dead daemon's state memfds; None if it held none."""
    if not fds:
        return None
    return BlockDevice.resume(fds)


def check_state(fds):
    """Raise StateFormatError if this code could not resume the state in `fds`.

    Only reads (the header): the daemon serving that state keeps running.
    """
    BlockDevice.check_state_format(fds)


def _handover(fs):
    """SIGUSR1: exit at a safe point, leaving the mount to the next daemon.

    Holding the Filesystem's lock and the device's, nothing is half updated:
    a write either stored its block or did not, and its request (read, not
    answered) is resent to the next daemon.  os._exit: no unmount, no
    cleanup, the supervisor holds the connection and the state.
    """
    fs._lock.acquire()
    device = fs.device
    if device is not None:
        device._lock.acquire()
    os._exit(EXIT_HANDOVER)


# -- the lifecycle -------------------------------------------------------------

# The signals the daemon acts on (see _serve_until_done).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class _Thread:
    """A function run in a daemon thread; its end wakes `_Events.wait`.

    A daemon thread, so one stuck (a stat of a mount that never answers)
    is abandoned at exit rather than waited for."""

    def __init__(self, events, fn, *args, name):
        self.done = False
        self.error = None
        self._events = events
        self._fn = fn
        self._args = args
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self):
        try:
            self._fn(*self._args)
        except BaseException as e:  # handed to the main thread, which decides
            self.error = e
        self.done = True
        self._events.wake()


class _Events:
    """The main thread's one wait: SIGNALS and the end of a `_Thread`.

    Signals reach it through signal.set_wakeup_fd: the C-level handler
    writes the signal's number into a pipe, from whichever thread the
    kernel picked, and the main thread reads it.  A signal that lands
    before the main thread waits (during setup) waits in the pipe.  A
    thread's end writes a 0, which no signal is."""

    def __init__(self):
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._noop) for s in SIGNALS}

    @staticmethod
    def _noop(signum, frame):
        pass  # the wakeup fd carries it

    def wake(self):
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:  # a full pipe wakes the reader anyway
            pass

    def wait(self, timeout=None):
        """The signals received, once something happened or `timeout` passed."""
        ready, _, _ = select.select([self._r], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self._r, 256)
        except BlockingIOError:
            return []
        return [b for b in data if b]

    def close(self):
        signal.set_wakeup_fd(self._old_fd)
        for s, handler in self._old.items():
            signal.signal(s, handler)
        os.close(self._r)
        os.close(self._w)


def _on_signal(signum, stopping, session, fs):
    """Act on one signal; returns the new `stopping`."""
    if signum == signal.SIGUSR1:
        if not stopping:
            _log("SIGUSR1: stopping for a restart")
            _handover(fs)
        return stopping
    if not stopping:
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
    return True


def _serve_until_done(events, session, fs, mountpoint, announce, check):
    """Serve in a thread until the session ends; returns its thread.

    With `check`, MOUNTPOINT/disk must answer stat (which needs INIT and
    LOOKUP served) within READY_TIMEOUT_S before `announce` is called:
    SetupError otherwise.  Signals are handled throughout, readiness or
    not; a session that ends before it was ready is no SetupError (the
    caller tells "stopped before the mount was ready")."""
    serving = _Thread(events, session.serve, name="zramfs-serve")
    path = os.path.join(mountpoint, "disk")
    answer = _Thread(events, os.stat, path, name="zramfs-ready") if check else None
    deadline = time.monotonic() + READY_TIMEOUT_S
    if answer is None:
        announce()
    stopping = False
    while not serving.done:
        timeout = None
        if answer is not None:
            if answer.done:
                if isinstance(answer.error, OSError):
                    raise SetupError(f"{path} does not answer: {answer.error.strerror}")
                if answer.error is not None:
                    raise answer.error
                answer = None
                announce()
                continue
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise SetupError(f"{mountpoint} did not answer within {READY_TIMEOUT_S:g} s")
        for signum in events.wait(timeout):
            stopping = _on_signal(signum, stopping, session, fs)
    return serving


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


class Resume:
    """What a restarted daemon takes over (see the module docstring): the
    connection's fd and INIT minor, the state memfds, how many restarts."""

    def __init__(self, fuse_fd, kernel_minor, state_fds, restarts):
        self.fuse_fd = fuse_fd
        self.kernel_minor = kernel_minor
        self.state_fds = state_fds
        self.restarts = restarts


def _resumed_filesystem(config, resume):
    """The Filesystem over the device rebuilt from `resume`'s memfds (uninitialised if none)."""
    device = resume_device(resume.state_fds)
    if device is None:
        return build_filesystem(dataclasses.replace(config, size=None))
    fs = Filesystem(device)
    # The kernel does not open disk again for a new daemon: count the opens
    # still alive, one per loop device on it, so reset keeps refusing
    # while it is attached (an open by any other process is not counted).
    from zramfs.system import System

    fs._disk_openers = len(System().loops_for(os.path.join(config.mountpoint, "disk")))
    return fs


def run(config, ready, link=None, resume=None):
    """The daemon's body, in the main thread; returns the exit code."""
    link = link or SupervisorLink(None)
    mountpoint = config.mountpoint
    # Signals first: a SIGTERM that lands between mount and serve must
    # unmount, not kill us with the mount left behind.
    with ExitStack() as stack:
        events = _Events()
        stack.callback(events.close)
        try:
            fs = build_filesystem(config) if resume is None else _resumed_filesystem(config, resume)
            # Last out: the device closes after the unmount (a backing
            # file is emptied then, see zramfs._backing); a handover for a
            # restart leaves by os._exit and keeps everything.
            stack.callback(fs.close)
            session = Session(
                fs,
                mountpoint,
                fsname=config.name,
                backend=config.fuse_backend,
                threads=DEFAULT_THREADS if config.threads is None else config.threads,
            )
            if resume is None:
                session.mount()
            else:
                session.adopt(resume.fuse_fd, resume.kernel_minor)
                session.resend()
        except (MountError, DeviceError, FsError, ValueError) as e:
            raise SetupError(str(e)) from None
        except OSError as e:  # resend refused: a kernel without FUSE_NOTIFY_RESEND
            raise SetupError(f"cannot resume the connection: {e.strerror}") from None
        # LIFO: stop (unmount) runs before close (release the fd).
        stack.callback(session.close)
        stack.callback(session.stop)
        # Every init or reset through the attribute files hands the new
        # state to the supervisor (after the backend's own hook).
        resized = fs.on_resize

        def on_resize():
            if resized is not None:
                resized()
            link.state(fs.device)

        fs.on_resize = on_resize
        # Keep no directory busy under the mount's parents.
        os.chdir("/")

        def announce():
            if resume is None and link.sock is not None:
                link.fuse(session.fd, session.kernel_minor, session.can_resend)
            link.state(fs.device)
            if fs.device is None:
                _log(f"serving {mountpoint} (uninitialised: write its disksize file to start)")
            elif resume is None:
                _log(f"serving {mountpoint} ({config.size} bytes, {fs.algorithm})")
            else:
                _log(f"serving {mountpoint} again (restart {resume.restarts})")
            # Which pool runs: mypyc's build, or the source (ZRAMFS_PURE_PYTHON=1, or no build).
            _log("allocator: " + ("compiled with mypyc" if allocator.COMPILED else "from source"))
            if config.run_dir is not None:
                _write_record(config, link, resume)
            ready.ready()
            mainpid = link.supervisor_pid or os.getpid()
            sd_notify(f"READY=1\nMAINPID={mainpid}\nSTATUS=serving {mountpoint}")

        # A restarted daemon of a lazily unmounted device has no path to
        # ask through; its connection answers anyway.
        check = resume is None or is_mounted(mountpoint)
        serving = _serve_until_done(events, session, fs, mountpoint, announce, check)
    if serving.error is not None:  # the loop itself failed (not a request: those are answered)
        _log(f"the FUSE session failed: {serving.error!r}")
        return EXIT_SERVE_FAILED
    if session.errors:
        _log(f"{session.errors} requests failed with unexpected errors (answered EIO)")
    return EXIT_OK


def _write_record(config, link, resume):
    """Say who serves this device (supervisor and daemon, start times, config,
    restarts), for the CLI to find; a failure is logged."""
    pid = os.getpid()
    try:
        if link.supervisor_pid is None:
            record = DaemonRecord(pid, start_time(pid), config)
        else:
            sup = link.supervisor_pid
            record = DaemonRecord(
                sup,
                start_time(sup),
                config,
                daemon_pid=pid,
                daemon_start_time=start_time(pid),
                restarts=resume.restarts if resume is not None else 0,
            )
        record.write(config.run_dir)
    except (OSError, TypeError) as e:
        _log(f"cannot write the daemon record into {config.run_dir}: {e}")


class _UsageError(Exception):
    """Raised by the argument parser instead of exiting, so --ready-fd can hear about it."""


class _Formatter(argparse.HelpFormatter):
    """A fixed width: argparse otherwise imports shutil (and with it bz2 and
    lzma, 0.6 MiB) to ask for the terminal's, at every add_argument, and
    the daemon would keep them loaded and locked."""

    def __init__(self, prog):
        super().__init__(prog, width=100)


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        super().__init__(formatter_class=_Formatter, **kwargs)

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
    p.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    # A restart (zramfs.supervisor): the connection and the state to take over.
    p.add_argument("--fuse-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--kernel-minor", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--state-fd", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--restarts", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    resume = None
    if args.fuse_fd is not None:
        if args.kernel_minor is None:
            raise _UsageError("--fuse-fd needs --kernel-minor")
        try:
            state = parse_state_fds(args.state_fd)
        except ValueError:
            raise _UsageError(f"--state-fd takes NAME=FD, not {args.state_fd}") from None
        resume = Resume(args.fuse_fd, args.kernel_minor, state, args.restarts)
    return DeviceConfig.from_args(args), args.ready_fd, args.supervisor_fd, resume


def check_main(argv):
    """``--check-state --state-fd NAME=FD...``: exit 0 if this code can resume
    that state, EXIT_STATE_FORMAT with one line on stderr if not."""
    p = _Parser(prog="python -m zramfs.daemon --check-state")
    p.add_argument("--check-state", action="store_true")
    p.add_argument("--state-fd", action="append", default=[])
    try:
        args = p.parse_args(argv)
        fds = parse_state_fds(args.state_fd)
    except (_UsageError, ValueError) as e:
        print(f"usage error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not fds:
        return EXIT_OK  # an uninitialised device: nothing to read
    try:
        check_state(fds)
    except StateFormatError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return EXIT_STATE_FORMAT
    return EXIT_OK


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--check-state" in argv:
        return check_main(argv)
    try:
        config, ready_fd, supervisor_fd, resume = parse_args(argv)
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
    link = SupervisorLink(supervisor_fd)
    code = EXIT_SETUP_FAILED
    try:
        code = run(config, ready, link, resume)
    except SetupError as e:
        _log(f"error: {e}")
        ready.error(str(e))
        return EXIT_SETUP_FAILED
    finally:
        # The device is gone: so is its directory (record, log), and the
        # name is free again once this process has exited (its lock goes).
        # A restarted daemon that failed leaves the device to teardown.
        if config.run_dir is not None and (resume is None or code == EXIT_OK):
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
