"""The supervisor: one small process per device that outlives its daemon.

Where this sits: beside the data path, above ``zramfs.daemon``, never in it.
The CLI (`zramfs.launch`) starts it instead of the daemon for the ``dev``
FUSE backend:

    python -I -m zramfs.supervisor [--ready-fd FD] [--hold-fd FD]...
        [--control SOCKET] [--fuse-fd FD --kernel-minor N [--state-fd NAME=FD]...
        [--restarts N]] -- DAEMON ARGS...

``zramfs mount --foreground`` execs it (no --ready-fd): the supervisor is
then the process the terminal or systemd sees, and its exit status is the
device's.

It starts the daemon (``python -I -m zramfs.daemon DAEMON ARGS``) and holds
what must outlive it, received on a SOCK_SEQPACKET socket (the daemon's
--supervisor-fd) with SCM_RIGHTS:

* the /dev/fuse fd, once the daemon has mounted and answered INIT.  While
  any process holds it the FUSE connection lives: requests wait in the
  kernel instead of failing;
* the device's state memfds (`BlockDevice.state_fds`): the pool's arena and
  tables and the slot table, so the memory of what is stored is never
  given back while the device exists.

When the daemon dies of a signal (SIGKILL, a crash) it starts a new one
with those fds (--fuse-fd, --state-fd); the new daemon resumes the device,
sends FUSE_NOTIFY_RESEND and serves, so the requests the dead one had read
but not answered are asked again.  The same path upgrades the daemon
(``zramfs restart``, `restart`): the new code is first asked whether it
can read the state (``zramfs.daemon --check-state``), and only then is the
old daemon told (SIGUSR1) to stop at a safe point.

When restart is impossible -- the kernel offered a FUSE minor below 7.40
(no RESEND), the daemon died before it ever served, it failed on its own
(an exit code, not a signal), or keeps dying before it serves -- the
supervisor lets go of every fd and exits: the connection is aborted and
I/O on the device fails at once (EIO), as without a supervisor.  If the
supervisor itself is killed, the daemon serves on; when it dies, the
connection goes with it (unless systemd's fd store holds it: below).

Exit: 0 when the daemon exited 0 (its mount is gone: unmounted, swapoff,
SIGTERM, reset); SIGTERM and SIGINT are passed on to the daemon, which
runs in a process group of its own, so a Ctrl-C at the terminal reaches it
once, through the supervisor.

Under systemd (a Type=notify service's main process: $NOTIFY_SOCKET set and
no --ready-fd, systemd/zramfs@.service) the supervisor also puts what it
holds into the service's fd store (`FdStore`): the /dev/fuse fd
(``fuse-7.MINOR``), each state memfd (``state-NAME``) and a pidfd of its
daemon (``daemon-PID``), and says READY=1 once its daemon serves.  If the
supervisor itself is killed, systemd starts the service again and hands
those fds back (LISTEN_FDS, `listen_fds`): ``zramfs mount --foreground``
then kills the old daemon through its pidfd, waits until it has exited, and
execs a supervisor with --fuse-fd/--state-fd, which starts a daemon that
resumes, as after a daemon's death.  A clean stop, or a supervisor that
gives up, removes everything from the store (FDSTOREREMOVE=1), so the
connection ends as without systemd.  That daemon gets no $NOTIFY_SOCKET:
only the main process speaks to systemd (NotifyAccess=main).

Memory: only the standard library, no zramfs module besides this one; the
supervisor locks what it touched (mlockall) and opts out of the OOM killer,
as the daemon does (`harden`, which the daemon shares).
"""

import array
import ctypes
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time

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

# Daemon exit codes the supervisor acts on (zramfs.daemon uses these).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# --check-state: this code cannot resume that state.
EXIT_STATE_FORMAT = 4
# SIGUSR1: stopped at a safe point for a restart.
EXIT_HANDOVER = 75

# Daemons in a row that die before they serve before the supervisor gives
# up: a daemon that cannot start (bad state, broken install) must not be
# restarted for ever while the device's users wait.
MAX_QUICK_DEATHS = 5
# How long a new daemon may take to serve (the CLI's READY_TIMEOUT_S).
READY_TIMEOUT_S = 30.0
# How long `zramfs restart` waits for the old daemon to stop at a safe point
# before it is killed (a kill is safe too: its requests are resent).
HANDOVER_TIMEOUT_S = 10.0

# madvise(2): map (and so, under mlockall, lock) pages already in memory.
MADV_POPULATE_READ = 22
# How often the supervisor locks the state pages the daemon added (StateLock).
STATE_LOCK_INTERVAL_S = 0.25

# One datagram on the daemon's socket: a short text and at most this many fds.
MSG_BYTES = 4096
MAX_FDS = 64

# systemd's fd store: the names (FDNAME=) the supervisor stores its fds under.
FDNAME_FUSE = "fuse-7."  # + the FUSE minor the kernel offered at INIT
FDNAME_STATE = "state-"  # + the memfd's name in BlockDevice.state_fds
FDNAME_DAEMON = "daemon-"  # + the daemon's pid: a pidfd, to end it after a restart
# sd_listen_fds(3): the first fd systemd passes.
SD_LISTEN_FDS_START = 3
# How long a resuming supervisor waits for the old daemon to die.
OLD_DAEMON_TIMEOUT_S = 10.0
# What a supervisor hides from its daemon: only the main process talks to systemd.
SYSTEMD_ONLY_ENV = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def log(msg, who="zramfs-supervisor"):
    # stderr only, and only outside the request path.
    print(f"{who}: {msg}", file=sys.stderr, flush=True)


def harden(who="zramfs-supervisor"):
    """Lock memory, mark as IO flusher, opt out of the OOM killer (root only).

    A process that holds a swap device's state must never wait on that swap
    (its own pages swapped out to itself) nor be the OOM killer's choice.
    Each failure is logged and the process carries on.
    """
    if os.geteuid() != 0:
        log("not root: memory is not locked, PR_SET_IO_FLUSHER and oom_score_adj not set", who)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        log(f"mlockall failed: {os.strerror(ctypes.get_errno())}", who)
    if libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0:
        log(f"prctl(PR_SET_IO_FLUSHER) failed: {os.strerror(ctypes.get_errno())}", who)
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ_MIN))
    except OSError as e:
        log(f"setting oom_score_adj failed: {e.strerror}", who)


def _one_line(text):
    return " ".join(str(text).split())


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class StateLock(threading.Thread):
    """Keeps the state memfds' pages in memory while no daemon maps them.

    The daemon's mlockall locks the pages it has touched, but only while it
    lives: when it dies they become ordinary shmem pages, which reclaim may
    write to swap -- to this very device, which then has no daemon.  The
    next daemon faults on such a page during its resume and waits for a
    swap-in that only it could serve: a deadlock.  Seen in the swap test
    (a memory cgroup at a third of the working set): a few dozen arena
    pages went out between two kills and the thirteenth restart hung.

    So this thread maps each memfd too (under the supervisor's mlockall:
    locked on fault) and, every STATE_LOCK_INTERVAL_S while a daemon serves
    (`serving` set), maps in the pages that are in memory: mincore over the
    extents SEEK_DATA finds, MADV_POPULATE_READ over the resident runs.  It
    runs beside the event loop, never in it: should a page it maps be on
    its way out to swap, it waits for the daemon, and the loop that starts
    daemons is never the one waiting.  The pages are shared, not copied:
    VmRSS counts them, memory use does not grow.
    """

    def __init__(self):
        super().__init__(name="zramfs-state-lock", daemon=True)
        self.serving = threading.Event()
        self._swap = threading.Lock()  # guards _pending only, never held long
        self._pending = None  # dups of the memfds to map next, or None
        self.maps = []  # (mmap, its address, size, an fd of the file's own)

    def update(self, fds):
        """Hold the memfds `fds` from now on (dups are taken; the caller keeps its own)."""
        dups = [os.dup(fd) for fd in fds]
        with self._swap:
            old, self._pending = self._pending, dups
        for fd in old or ():
            os.close(fd)

    def run(self):
        while True:
            time.sleep(STATE_LOCK_INTERVAL_S)
            with self._swap:
                pending, self._pending = self._pending, None
            if pending is not None:
                self._hold(pending)
            if self.serving.is_set():
                self.lock_resident()

    def _hold(self, fds):
        self.release()
        for fd in fds:
            size = os.fstat(fd).st_size
            if size == 0:
                os.close(fd)
                continue
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            # SEEK_DATA moves the file offset: on an open of our own, not
            # on the one the daemon shares.
            own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            os.close(fd)
            self.maps.append((m, addr, size, own))

    def release(self):
        maps, self.maps = self.maps, []
        for m, _, _, own in maps:
            m.close()
            os.close(own)

    def lock_resident(self):
        """Map in (and so lock) every page of the held memfds that is in memory now."""
        page = mmap.PAGESIZE
        for _, addr, size, own in self.maps:
            for start, end in _data_extents(own, size):
                vec = ctypes.create_string_buffer((end - start) // page)
                if _libc.mincore(addr + start, end - start, vec) != 0:
                    continue
                raw = vec.raw
                i, n = 0, len(raw)
                while i < n:  # runs of resident pages, one madvise each
                    if not raw[i] & 1:
                        i += 1
                        continue
                    j = i
                    while j < n and raw[j] & 1:
                        j += 1
                    _libc.madvise(addr + start + i * page, (j - i) * page, MADV_POPULATE_READ)
                    i = j


def _data_extents(fd, size):
    """[(start, end)] of the parts of a memfd that hold pages (SEEK_DATA/SEEK_HOLE)."""
    found = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data past pos
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        found.append((start, end))
        pos = end
    return found


# -- systemd: readiness, the fd store, fds handed back --------------------------------


def sd_notify(text, fds=(), address=None, who="zramfs-supervisor"):
    """Send `text` (and `fds`, SCM_RIGHTS) to systemd's notify socket; whether it was sent.

    `address`: $NOTIFY_SOCKET when None; nothing is sent without one.  The
    protocol of sd_notify(3), written here so nothing is needed beyond the
    standard library: one datagram, "@" for the abstract namespace.
    """
    address = os.environ.get("NOTIFY_SOCKET") if address is None else address
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendmsg([text.encode()], ancillary, 0, address)
    except OSError as e:
        log(f"cannot notify systemd ({text.splitlines()[0]}): {e.strerror}", who)
        return False
    return True


def _identity(fd):
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


class FdStore:
    """What this supervisor keeps in its service's fd store (FileDescriptorStoreMax=).

    systemd keeps each fd under its FDNAME until the service is stopped for
    good, across restarts of the service, and hands them to the next main
    process.  `stored` maps each name put there to the file behind it, so
    the same state is not stored twice and a clean stop removes exactly
    what was put.
    """

    def __init__(self, address):
        self.address = address
        self.stored: dict[str, tuple[int, int]] = {}

    @classmethod
    def from_env(cls, environ=None):
        """The store of the service we are the main process of; None outside systemd."""
        address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
        return cls(address) if address else None

    def notify(self, text, fds=()):
        return sd_notify(text, fds, self.address)

    def put(self, name, fd):
        if self.notify(f"FDSTORE=1\nFDNAME={name}", [fd]):
            self.stored[name] = _identity(fd)

    def adopt(self, name, fd):
        """`fd` came back from the store under `name` (LISTEN_FDS): it is there already."""
        self.stored[name] = _identity(fd)

    def drop(self, name):
        self.stored.pop(name, None)
        self.notify(f"FDSTOREREMOVE=1\nFDNAME={name}")

    def sync(self, prefix, fds):
        """Make the names starting with `prefix` hold `fds` ({name: fd}, named prefix+name).

        Unchanged files are left alone; a changed set is removed, then stored
        (it changes only at an init or reset, when no page is stored yet).
        """
        wanted = {prefix + name: fd for name, fd in fds.items()}
        have = {k: v for k, v in self.stored.items() if k.startswith(prefix)}
        if {k: _identity(fd) for k, fd in wanted.items()} == have:
            return
        for name in have:
            self.drop(name)
        for name, fd in wanted.items():
            self.put(name, fd)

    def clear(self):
        for name in list(self.stored):
            self.drop(name)


def listen_fds(environ=None, pid=None):
    """[(name, fd)] that systemd passed this process (sd_listen_fds_with_names(3)).

    [] when there are none, or they were meant for another process
    (LISTEN_PID).  ValueError, with one line, when the variables are
    malformed.
    """
    env = os.environ if environ is None else environ
    if "LISTEN_FDS" not in env:
        return []
    pid = os.getpid() if pid is None else pid
    try:
        if int(env.get("LISTEN_PID", "")) != pid:
            return []
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise ValueError(
            f"malformed LISTEN_PID={env.get('LISTEN_PID')!r} LISTEN_FDS={env['LISTEN_FDS']!r}"
        ) from None
    if count < 0:
        raise ValueError(f"malformed LISTEN_FDS={count}")
    names = env.get("LISTEN_FDNAMES")
    names = names.split(":") if names is not None else ["unknown"] * count
    if len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES names {len(names)} fds, LISTEN_FDS says {count}")
    return [(name, SD_LISTEN_FDS_START + i) for i, name in enumerate(names)]


class Inherited:
    """A device's fds as the fd store hands them back (`inherited`)."""

    def __init__(self):
        self.fuse_fd = None
        self.kernel_minor = None
        self.state: dict[str, int] = {}
        self.daemons: dict[str, int] = {}  # FDNAME -> pidfd of a daemon that may still run
        self.unknown: dict[str, int] = {}
        self.restarts = 0  # how many daemons came before the next one

    def fds(self):
        fuse = [] if self.fuse_fd is None else [self.fuse_fd]
        return [*fuse, *self.state.values(), *self.daemons.values(), *self.unknown.values()]


def inherited(pairs):
    """Sort `listen_fds`' (name, fd) pairs by what they are; ValueError if two
    claim to be the connection or a name is malformed."""
    found = Inherited()
    for name, fd in pairs:
        if name.startswith(FDNAME_FUSE):
            if found.fuse_fd is not None:
                raise ValueError(f"two FUSE connections among the fds systemd passed ({name})")
            try:
                found.kernel_minor = int(name[len(FDNAME_FUSE) :])
            except ValueError:
                raise ValueError(f"malformed fd name {name!r}") from None
            found.fuse_fd = fd
        elif name.startswith(FDNAME_STATE) and len(name) > len(FDNAME_STATE):
            found.state[name[len(FDNAME_STATE) :]] = fd
        elif name.startswith(FDNAME_DAEMON):
            found.daemons[name] = fd
        else:
            found.unknown[name] = fd
    return found


def end_daemons(pidfds, timeout=OLD_DAEMON_TIMEOUT_S):
    """SIGKILL the processes behind `pidfds` and wait until each has exited; whether all did.

    A dead supervisor's daemon may still serve; before another daemon takes
    the state over it must be gone, or two would update one table.  Killing
    it loses nothing: what it read and did not answer is resent.
    """
    deadline = time.monotonic() + timeout
    for fd in pidfds:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for fd in pidfds:
        # A pidfd polls readable once its process has exited.
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return False
    return True


class Supervisor:
    """The state and the event loop of one supervisor (see the module docstring)."""

    def __init__(
        self, daemon_args, ready_fd=None, hold_fds=(), control=None, resume=None, fdstore=None
    ):
        self.daemon_args = list(daemon_args)
        self.ready_fd = ready_fd  # the CLI's: READY once, or ERROR
        self.hold_fds = list(hold_fds)
        self.control_path = control
        self.python = sys.executable
        self.fuse_fd = None
        self.kernel_minor = None
        self.can_resend = False
        self.state: dict[str, int] = {}  # name -> memfd
        self.restarts = 0
        self.quick_deaths = 0
        self.stopping = False
        self.pid = None  # the daemon now
        self.pidfd = None
        self.ctl = None  # our end of its --supervisor-fd
        self.ready_r = None  # its --ready-fd, until it answered
        self.ready_deadline = None
        self.serving = False
        self.last_error = None
        self.restart_conn = None  # a `zramfs restart` waiting for the new daemon
        self.handover_deadline = None
        self.listener = None
        self.state_lock = StateLock()
        self.resume = resume  # an Inherited (+ restarts): take a live device over at start
        self.fdstore = fdstore  # systemd's, when we are a service's main process

    # -- starting a daemon -------------------------------------------------------

    def spawn(self, resume):
        """Start a daemon; with `resume`, one that takes over the held fds."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        r, w = os.pipe()
        argv = [self.python, "-I", "-m", "zramfs.daemon", *self.daemon_args]
        argv += ["--ready-fd", str(w), "--supervisor-fd", str(theirs.fileno())]
        passed = [w, theirs.fileno(), *self.hold_fds]
        if resume:
            argv += ["--fuse-fd", str(self.fuse_fd), "--kernel-minor", str(self.kernel_minor)]
            argv += ["--restarts", str(self.restarts)]
            for name, fd in self.state.items():
                argv += ["--state-fd", f"{name}={fd}"]
            passed += [self.fuse_fd, *self.state.values()]
        try:
            for fd in passed:
                os.set_inheritable(fd, True)
            # Its own process group: a Ctrl-C at the terminal reaches the
            # supervisor alone, which passes it on once.
            env = _daemon_env(self.fdstore is not None)
            self.pid = os.posix_spawn(argv[0], argv, env, setpgroup=0)
        finally:
            for fd in passed:
                if fd not in self.hold_fds:
                    os.set_inheritable(fd, False)
            os.close(w)
            theirs.close()
        self.pidfd = os.pidfd_open(self.pid)
        if self.fdstore is not None:
            self.fdstore.put(f"{FDNAME_DAEMON}{self.pid}", self.pidfd)
        self.ctl = ours
        self.ready_r = r
        self.ready_deadline = time.monotonic() + READY_TIMEOUT_S
        self.serving = False

    # -- what the daemon sends -----------------------------------------------------

    def _receive(self):
        """Take one message from the daemon's socket; False at its end."""
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, MSG_BYTES, MAX_FDS)
        except OSError:
            return False
        for fd in fds:
            os.set_inheritable(fd, False)
        if not data:
            return False
        words = data.decode(errors="replace").split()
        if words[0] == "FUSE" and len(fds) == 1:
            if self.fuse_fd is not None:
                os.close(self.fuse_fd)
            self.fuse_fd = fds[0]
            self.kernel_minor = int(words[1])
            self.can_resend = words[2] == "1"
            if self.fdstore is not None and self.can_resend:
                self.fdstore.put(f"{FDNAME_FUSE}{self.kernel_minor}", self.fuse_fd)
        elif words[0] == "STATE" and len(fds) == len(words) - 1:
            old = self.state
            self.state = dict(zip(words[1:], fds, strict=True))
            self.state_lock.update(self.state.values())
            if self.fdstore is not None:
                self.fdstore.sync(FDNAME_STATE, self.state)
            for fd in old.values():
                os.close(fd)
        else:
            log(f"ignored a message from the daemon: {words[0]!r} with {len(fds)} fds")
            for fd in fds:
                os.close(fd)
        return True

    def _drain(self):
        """Everything the daemon sent before it died (a STATE just before a kill)."""
        while self.ctl is not None and select.select([self.ctl], [], [], 0)[0]:
            if not self._receive():
                break

    def _read_ready(self):
        try:
            chunk = os.read(self.ready_r, 4096)
        except OSError:
            chunk = b""
        os.close(self.ready_r)
        self.ready_r = None
        self.ready_deadline = None
        line = chunk.split(b"\n", 1)[0].decode(errors="replace")
        if line == "READY":
            self.serving = True
            self.state_lock.serving.set()
            self.quick_deaths = 0
            self._drain()  # its FUSE fd and STATE came before READY
            self._tell_cli("READY")
            if self.fdstore is not None:
                again = f" (restart {self.restarts})" if self.restarts else ""
                self.fdstore.notify(f"READY=1\nSTATUS=serving, daemon pid {self.pid}{again}")
            if self.restart_conn is not None:
                self._answer_restart(f"OK {self.pid}")
        elif line.startswith("ERROR "):
            self.last_error = line[len("ERROR ") :]

    # -- the daemon's end ----------------------------------------------------------

    def _reap(self):
        """The daemon exited: start the next, or end.  Returns an exit code to end with, or None."""
        pid = self.pid
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        self._drain()
        if self.ready_r is not None:
            os.close(self.ready_r)
            self.ready_r = None
        os.close(self.pidfd)
        self.ctl.close()
        self.pid = self.pidfd = self.ctl = None
        if self.fdstore is not None:
            self.fdstore.drop(f"{FDNAME_DAEMON}{pid}")
        self.handover_deadline = None
        served = self.serving
        self.serving = False
        self.state_lock.serving.clear()
        dead = pid
        if code == EXIT_OK:
            return EXIT_OK  # its mount is gone: so is the device
        why = self._why_not_restart(code, served)
        if why is not None:
            what = f"signal {-code}" if code < 0 else f"exit status {code}"
            log(f"the daemon ended ({what}); not restarting it: {why}")
            detail = self.last_error or f"the daemon ended ({what})"
            self._tell_cli("ERROR " + detail)
            self._answer_restart(f"ERROR {detail}")
            return EXIT_FAILED if code <= 0 or code == EXIT_HANDOVER else code
        if not served:
            self.quick_deaths += 1
        self.restarts += 1
        log(f"the daemon (pid {dead}) ended: starting it again (restart {self.restarts})")
        self.spawn(resume=True)
        return None

    def _why_not_restart(self, code, served):
        """Why a daemon that ended with `code` is not started again, or None."""
        if self.stopping:
            return "stopping"
        if code > 0 and code != EXIT_HANDOVER:
            return "it failed on its own"
        if self.fuse_fd is None:
            return "it never served"
        if not self.can_resend:
            return f"the kernel cannot resend FUSE requests (protocol 7.{self.kernel_minor} < 7.40)"
        if self.quick_deaths >= MAX_QUICK_DEATHS:
            return f"{MAX_QUICK_DEATHS} daemons in a row died before they served"
        return None

    # -- the CLI ---------------------------------------------------------------------

    def _tell_cli(self, line):
        if self.ready_fd is None:
            return
        fd, self.ready_fd = self.ready_fd, None
        try:
            os.write(fd, (_one_line(line) + "\n").encode())
        except OSError:
            pass
        os.close(fd)

    def _answer_restart(self, line):
        conn, self.restart_conn = self.restart_conn, None
        if conn is None:
            return
        try:
            conn.sendall((_one_line(line) + "\n").encode())
        except OSError:
            pass
        conn.close()

    def _listen(self):
        if self.control_path is None:
            return
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.control_path)
        os.chmod(self.control_path, 0o600)
        self.listener.listen(4)

    def _accept(self):
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        try:
            request = conn.recv(256).decode(errors="replace").split()
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        if request != ["restart"]:
            conn.sendall(b"ERROR unknown request\n")
            conn.close()
        elif self.restart_conn is not None or not self.serving:
            conn.sendall(b"ERROR the daemon is starting or restarting; try again\n")
            conn.close()
        else:
            refusal = self.check_new_code()
            if refusal is not None:
                conn.sendall((" ".join(refusal) + "\n").encode())
                conn.close()
                return
            self.restart_conn = conn
            self.restart()

    def check_new_code(self):
        """None if the code installed now can take this device over; else
        ("REFUSED", why) when the state format changed, ("ERROR", why) otherwise."""
        if not self.can_resend:
            return (
                "ERROR",
                f"the kernel cannot resend FUSE requests (protocol 7.{self.kernel_minor} < 7.40)",
            )
        argv = [self.python, "-I", "-m", "zramfs.daemon", "--check-state"]
        state = self.state
        for name, fd in state.items():
            argv += ["--state-fd", f"{name}={fd}"]
        r, w = os.pipe()
        passed = list(state.values())
        try:
            for fd in passed:
                os.set_inheritable(fd, True)
            pid = os.posix_spawn(
                argv[0],
                argv,
                _daemon_env(self.fdstore is not None),
                file_actions=[(os.POSIX_SPAWN_DUP2, w, 2), (os.POSIX_SPAWN_DUP2, w, 1)],
            )
        finally:
            for fd in passed:
                os.set_inheritable(fd, False)
            os.close(w)
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == EXIT_OK:
            return None
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        detail = lines[-1].strip() if lines else f"exit status {code}"
        if code == EXIT_STATE_FORMAT:
            return ("REFUSED", f"the state format changed incompatibly: {_one_line(detail)}")
        return ("ERROR", f"the new code cannot start: {_one_line(detail)}")

    def restart(self):
        """Tell the daemon to stop at a safe point; `_reap` starts the new code."""
        log(f"restart asked: stopping the daemon (pid {self.pid}) at a safe point")
        self.handover_deadline = time.monotonic() + HANDOVER_TIMEOUT_S
        os.kill(self.pid, signal.SIGUSR1)

    # -- the loop ----------------------------------------------------------------------

    def run(self):
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        pending = []

        def on_signal(signum, _frame):
            pending.append(signum)

        signal.set_wakeup_fd(wake_w)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        self._listen()
        self.state_lock.start()
        try:
            if self.resume is not None:
                self._take_over(self.resume)
            self.spawn(resume=self.resume is not None)
            while True:
                watch = [wake_r, self.pidfd, self.ctl]
                if self.ready_r is not None:
                    watch.append(self.ready_r)
                if self.listener is not None and self.restart_conn is None:
                    watch.append(self.listener)
                deadlines = [d for d in (self.ready_deadline, self.handover_deadline) if d]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                readable, _, _ = select.select(watch, [], [], timeout)
                if wake_r in readable:
                    try:
                        os.read(wake_r, 64)
                    except BlockingIOError:
                        pass
                while pending:
                    self._signal(pending.pop(0))
                if self.ctl in readable:
                    self._receive()
                if self.ready_r is not None and self.ready_r in readable:
                    self._read_ready()
                if self.pidfd in readable:
                    code = self._reap()
                    if code is not None:
                        return code
                    continue
                if self.listener is not None and self.listener in readable:
                    self._accept()
                self._check_deadlines()
        finally:
            self._release()

    def _take_over(self, resume):
        """Hold a live device's fds (the fd store's, handed back): the first daemon resumes it."""
        self.fuse_fd = resume.fuse_fd
        self.kernel_minor = resume.kernel_minor
        self.can_resend = True  # the store only ever got a connection that can
        self.state = dict(resume.state)
        self.restarts = resume.restarts
        self.state_lock.update(self.state.values())
        if self.fdstore is not None:
            self.fdstore.adopt(f"{FDNAME_FUSE}{self.kernel_minor}", self.fuse_fd)
            for name, fd in self.state.items():
                self.fdstore.adopt(FDNAME_STATE + name, fd)
        log(f"taking over the device from a supervisor that died (restart {self.restarts})")

    def _signal(self, signum):
        if signum == signal.SIGHUP:
            return  # a closed terminal is no reason to drop a device
        if self.fdstore is not None and not self.stopping:
            self.fdstore.notify("STOPPING=1")
        self.stopping = True
        log(f"{signal.Signals(signum).name}: stopping the daemon (pid {self.pid})")
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _check_deadlines(self):
        now = time.monotonic()
        if self.ready_deadline is not None and now >= self.ready_deadline:
            self.ready_deadline = None
            log(f"the daemon did not serve within {READY_TIMEOUT_S:g} s: killing it")
            self.last_error = f"the daemon did not serve within {READY_TIMEOUT_S:g} s"
            self.quick_deaths = MAX_QUICK_DEATHS
            os.kill(self.pid, signal.SIGKILL)
        if self.handover_deadline is not None and now >= self.handover_deadline:
            self.handover_deadline = None
            log("the daemon did not stop at a safe point: killing it (its requests are resent)")
            os.kill(self.pid, signal.SIGKILL)

    def _release(self):
        """Let go of everything: with the last fd of the connection, the kernel aborts it."""
        if self.fdstore is not None:
            self.fdstore.clear()  # systemd's copies are the last ones
        for fd in self.state.values():
            os.close(fd)
        self.state = {}
        if self.fuse_fd is not None:
            os.close(self.fuse_fd)
            self.fuse_fd = None
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.control_path)
            except OSError:
                pass


def _daemon_env(systemd_is_ours):
    """The daemon's environment: ours, without systemd's variables
    (`SYSTEMD_ONLY_ENV`) when the supervisor speaks to systemd itself."""
    if not systemd_is_ours:
        return dict(os.environ)
    return {k: v for k, v in os.environ.items() if k not in SYSTEMD_ONLY_ENV}


def parse_state_fds(values):
    """{name: fd} of --state-fd NAME=FD arguments (the supervisor's and the daemon's)."""
    fds = {}
    for value in values:
        name, _, fd = value.partition("=")
        fds[name] = int(fd)
    return fds


def parse_args(argv):
    """(daemon args, --ready-fd, --hold-fd list, --control, resume) of a supervisor command line.

    resume: an `Inherited` with its `restarts`, when --fuse-fd is given (a
    device to take over), else None.  ValueError on anything malformed.
    """
    if "--" not in argv:
        raise ValueError("usage: python -m zramfs.supervisor [OPTIONS] -- DAEMON ARGS")
    at = argv.index("--")
    own, daemon_args = argv[:at], argv[at + 1 :]
    ready_fd, hold, control = None, [], None
    resume = Inherited()
    state, restarts = [], 1
    it = iter(own)
    for arg in it:
        value = next(it, None)
        if value is None:
            raise ValueError(f"{arg} needs a value")
        if arg == "--ready-fd":
            ready_fd = int(value)
        elif arg == "--hold-fd":
            hold.append(int(value))
        elif arg == "--control":
            control = value
        elif arg == "--fuse-fd":
            resume.fuse_fd = int(value)
        elif arg == "--kernel-minor":
            resume.kernel_minor = int(value)
        elif arg == "--state-fd":
            state.append(value)
        elif arg == "--restarts":
            restarts = int(value)
        else:
            raise ValueError(f"unknown option {arg}")
    if resume.fuse_fd is None:
        if state or resume.kernel_minor is not None:
            raise ValueError("--state-fd and --kernel-minor need --fuse-fd")
        return daemon_args, ready_fd, hold, control, None
    if resume.kernel_minor is None:
        raise ValueError("--fuse-fd needs --kernel-minor")
    resume.state = parse_state_fds(state)
    resume.restarts = restarts
    return daemon_args, ready_fd, hold, control, resume


def request_restart(control, timeout=120.0):
    """Ask the supervisor listening on `control` to restart its daemon; its one-line answer.

    "OK PID" (the new daemon serves), "REFUSED why" (nothing changed: the old
    daemon serves on) or "ERROR why".  OSError if nobody listens there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control)
        s.sendall(b"restart\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode(errors="replace").strip() or "ERROR the supervisor ended"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        daemon_args, ready_fd, hold, control, resume = parse_args(argv)
    except ValueError as e:
        log(f"usage error: {e}")
        return EXIT_USAGE
    held = resume.fds() if resume is not None else []
    for fd in (ready_fd, *hold, *held):
        if fd is not None:
            try:
                os.fstat(fd)
            except OSError:
                log(f"fd {fd} is not open")
                return EXIT_USAGE
    for fd in (ready_fd, *held):
        if fd is not None:
            os.set_inheritable(fd, False)
    harden()
    # Only the process systemd started speaks to it: `mount --foreground`
    # execs us (no --ready-fd); the CLI's background supervisor is a child
    # of some command, whose daemon says READY=1 with MAINPID, as before.
    fdstore = FdStore.from_env() if ready_fd is None else None
    return Supervisor(daemon_args, ready_fd, hold, control, resume, fdstore).run()


if __name__ == "__main__":
    sys.exit(main())
