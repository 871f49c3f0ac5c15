"""The /dev/fuse request loop: zramfs's default FUSE backend ("dev").

Where this sits: the kernel queues FUSE requests on the fd we opened in
`_mount.mount_fuse`; reader threads here each `readv` one whole request into
their own preallocated buffer, dispatch on the opcode through a list, call
`zramfs.fs.Filesystem` (or, for READ/WRITE on `disk`, the BlockDevice
directly), and answer with one `writev`.  Replies are built with the
precompiled structs of `_abi`.

Why blocking threads and not an event loop: with no work behind it, one
blocking Python thread reading /dev/fuse matched C libfuse on this machine
(29.5k against 30.7k 4 KiB reads per second at QD1; pyfuse3 and trio: 14.1k;
docs/architecture.md).  More threads help only while the GIL is released: lz4 releases
it while it works, and a multi-page read is one lz4 frame (device.py), so
two threads decode the two 512 KiB halves of a 1 MiB read at once.
Default: 2 (DEFAULT_THREADS), the second used only for large reads; see
_reader for why, with the measurements.

Why the first reader spins briefly before it blocks in readv: a request
that finds the reader asleep costs a wakeup, and with the VM's stock
setting (guest_halt_poll_ns=0) a wakeup of a halted vCPU is the dearest
part of a 4 KiB request.  So after each answer the first reader polls the
fd (poll with timeout 0) for up to SPIN_US before it sleeps; an idle
session spins once, after its last request, and then uses no CPU.  On a
busy machine the spin takes the CPU from threads that want it (measured
without a back-off, 4 KiB random read QD1 16.9k -> 14.6k): when the
spinning thread finds it was off the CPU, and no request came meanwhile,
it stops spinning for SPIN_BACKOFF_NS.  Where the idle vCPU polls anyway
(guest_halt_poll_ns at least the spin, as `zramfs swapon` sets it) the
spin only adds CPU time and is left out.  BENCHMARKS.md ("Spin before
sleep") has the numbers; spin_us=0 turns it off.

What the first reader does when no request waits after a WRITE: it faults
in the arena pages of the next zspages (BlockDevice.populate_ahead), one
zspage at a time, polling the fd in between, so the page faults of the next
write happen while fio or the kernel is busy elsewhere.

Concurrency: threads share nothing here but the fd and counters; several
readers on one /dev/fuse fd is what the kernel expects (each request goes to
exactly one reader).  A WRITE to a slow attribute file (a writeback may run
for minutes; `Filesystem.is_slow`) gets a thread of its own, which answers
it: with the helper reader gated on large READs, the first reader would
otherwise hold every other request until it ended.  The Filesystem and BlockDevice do their own locking.
Nothing on this path logs, sleeps or waits on anything that might need swap
I/O; per-request failures are counted (`errors`), never written anywhere.

Error rules from the kernel (fs/fuse/dev.c):
  * read() -> ENOENT: the request was interrupted before we got it; go on.
  * read() -> ENODEV: the connection is gone (unmounted or aborted); stop.
  * writev() of a reply -> ENOENT: the request was interrupted meanwhile; go on.
"""

import ctypes
import errno
import mmap
import os
import select
import threading
import time

from allocator import PAGE_SIZE
from zramfs.fs import DISK_INO
from zramfs.tuning import HALT_POLL_NS

from . import _abi
from ._errors import errno_for
from ._mount import DEFAULT_THREADS, MountedSession, abort_connection, mount_fuse, unmount

# Protocol limits we ask for in INIT.  128 pages = 512 KiB per READ/WRITE:
# the kernel cuts loop's 1 MiB direct I/O into two requests and sends both
# at once, so the two reader threads (DEFAULT_THREADS) each take one.  With
# 256 (FUSE_MAX_MAX_PAGES, one request per MiB) the second thread idled:
# fio 1 MiB sequential read 1288 MB/s with 2 threads against 1924-2153 at
# 128 (same minutes, halt polling on).
MAX_PAGES = 128
MAX_WRITE = MAX_PAGES * PAGE_SIZE
# The kernel refuses reads into a buffer smaller than header + write_in +
# max_write; two spare pages keep us clear of that.
BUFFER_SIZE = MAX_WRITE + 2 * PAGE_SIZE
# A READ this large lets a helper reader take the next request (see
# DevSession._reader): half of MAX_WRITE, so only the halves of large reads do.
HELP_MIN_BYTES = 64 * PAGE_SIZE
# Background (async) requests in flight: async direct I/O from loop is
# background, and the kernel's default of 12 caps a deep loop queue.
# Measured, 4k randread QD32 through `losetup --direct-io=on`: 33k IOPS
# with 12, 40k with 64 (same run, busy 2-core machine).
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48
# The tree never changes, so names may be cached for long; attrs are cheap
# to re-ask and `disk`'s st_blocks follows memory use.
ENTRY_VALID_S = 3600
ATTR_VALID_S = 1

# How long, in microseconds, the first reader polls /dev/fuse after
# answering a request before it blocks in readv (0: never): about the time
# fio and loop take to send the next 4 KiB request on this machine kind.
SPIN_US = 50
# A gap this long between two looks means the spinning thread lost its CPU
# to another: the machine is busy, and spinning stops for SPIN_BACKOFF_NS.
SPIN_PREEMPTED_NS = 20_000
SPIN_BACKOFF_NS = 50_000_000
# How often the reader looks at guest_halt_poll_ns again (`zramfs swapon`
# raises it while a daemon runs): where the idle vCPU polls at least as
# long as the spin would, the spin only adds CPU time, so it is left out.
HALT_POLL_CHECK_NS = 1_000_000_000


def halt_poll_ns():
    """guest_halt_poll_ns, or 0 where there is none (not a KVM guest) or it cannot be read."""
    try:
        with open(HALT_POLL_NS) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


# Overrides SPIN_US for a session made without spin_us (a measurement knob:
# the CLI starts daemons with a clean environment, so it reaches only
# daemons started by hand and in-process sessions).
SPIN_ENV = "ZRAMFS_FUSE_SPIN_US"


def default_spin_us():
    """SPIN_US, or $ZRAMFS_FUSE_SPIN_US when set."""
    value = os.environ.get(SPIN_ENV)
    if value is None:
        return SPIN_US
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"{SPIN_ENV} must be a whole number of microseconds, not {value!r}"
        ) from None


# glibc malloc tuning for the serving process (see _tune_malloc).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Freed heap memory above this is given back to the kernel.  The default,
# 128 KiB, is less than one 1 MiB request's pages: every request then grew
# the heap, page-faulted 256 fresh pages and trimmed them again.  Measured:
# decompressing 256 4 KiB pages 1870 us -> 545 us.  What the heap keeps is
# bounded by the requests in flight (~2 MiB each).
TRIM_THRESHOLD = 32 << 20
# Allocations above this get their own mmap (faulted in and unmapped each
# time); a 1 MiB request buffer stays below it, on the reused heap.
MMAP_THRESHOLD = 4 << 20


def _tune_malloc():
    """Keep glibc from giving the heap back to the kernel after each request."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_WANT_FLAGS = (
    _abi.ASYNC_READ | _abi.BIG_WRITES | _abi.ASYNC_DIO | _abi.PARALLEL_DIROPS | _abi.MAX_PAGES
)

# No reply may be sent for these.
_NO_REPLY = frozenset({_abi.FORGET, _abi.BATCH_FORGET, _abi.INTERRUPT, _abi.NOTIFY_REPLY})


class MalformedRequestError(Exception):
    """Raised when a request is shorter than its opcode's struct says (answered EIO, counted)."""


class _ConnectionGone(Exception):
    """Raised inside the loop when writing a reply finds the connection gone (ENODEV)."""


def _attr_fields(a):
    """Attr -> the 16 fields of struct fuse_attr."""
    return (
        a.ino,
        a.size,
        a.blocks,
        a.atime_ns // 1_000_000_000,
        a.mtime_ns // 1_000_000_000,
        a.ctime_ns // 1_000_000_000,
        a.atime_ns % 1_000_000_000,
        a.mtime_ns % 1_000_000_000,
        a.ctime_ns % 1_000_000_000,
        a.mode,
        a.nlink,
        a.uid,
        a.gid,
        0,  # rdev
        PAGE_SIZE,  # blksize: what st_blksize tells cp and dd to use
        0,  # flags
    )


class DevSession(MountedSession):
    """A FUSE session spoken directly on /dev/fuse (see the module docstring)."""

    # FALLOCATE is answered, so loop's discard and fstrim free memory.
    supports_discard = True

    def __init__(self, fs, mountpoint, fsname="zram0", threads=DEFAULT_THREADS, spin_us=None):
        super().__init__(fs, mountpoint, fsname, threads)
        if spin_us is None:
            spin_us = default_spin_us()
        if spin_us < 0:
            raise ValueError(f"spin_us must be >= 0, not {spin_us}")
        # How long the first reader looks for a next request before it sleeps.
        self.spin_us = spin_us
        self.fd = -1
        # Requests that ended in an exception errno_for did not know (EIO).
        self.errors = 0
        self.last_error = None
        self.proto_minor = None
        # The minor the kernel offered in INIT: whether it can resend (7.40).
        self.kernel_minor = None
        self._fatal = None
        # Helper readers wait on _more between requests (see _reader).
        self._more = None
        self._stopping = False
        self._handlers = self._build_dispatch()
        # disk's size changes when the device is initialised or reset
        # through the attribute files: the kernel must not keep its old size.
        fs.on_resize = self._disk_resized

    # -- lifecycle ----------------------------------------------------------

    def mount(self):
        """Open /dev/fuse and mount; raises MountError subclasses."""
        self.fd = mount_fuse(self.mountpoint, self.fsname)
        self._remember_mount()

    def adopt(self, fd, kernel_minor):
        """Serve a connection another process mounted and initialised: a
        restarted daemon's, whose fd the supervisor kept open (see
        zramfs.supervisor).  No INIT comes again; `kernel_minor` is what the
        kernel offered in the first one."""
        self.fd = fd
        self.kernel_minor = kernel_minor
        self.proto_minor = min(kernel_minor, _abi.KERNEL_MINOR_VERSION)
        self._remember_mount()

    @property
    def can_resend(self):
        """Whether the kernel knows FUSE_NOTIFY_RESEND (it offered 7.40 or later in INIT)."""
        return self.kernel_minor is not None and self.kernel_minor >= _abi.RESEND_MINOR

    def resend(self):
        """FUSE_NOTIFY_RESEND: the kernel queues again every request that was
        read from this connection and never answered (a dead daemon's).
        Replaying them is safe: a block write is idempotent, and every other
        request here only reads or sets a value.  OSError (EINVAL) from a
        kernel without it."""
        os.writev(self.fd, (_abi.out_header.pack(16, _abi.NOTIFY_RESEND, 0),))

    def serve(self):
        """Answer requests until the filesystem is unmounted; blocking."""
        if self.fd < 0:
            raise RuntimeError("serve() before mount()")
        _tune_malloc()
        self._stopping = False
        self._more = threading.Event() if self.threads > 1 else None
        helpers = [
            threading.Thread(
                target=self._reader, args=(True,), name=f"zramfs-fuse-{i}", daemon=True
            )
            for i in range(1, self.threads)
        ]
        for t in helpers:
            t.start()
        self._reader()
        # Wake the helpers that wait for work; those inside readv get ENODEV
        # with everyone else, or, when this reader failed, from the abort.
        self._stopping = True
        if self._more is not None:
            self._more.set()
        if self._fatal is not None:
            self.abort()
        for t in helpers:
            t.join()
        self.close()
        if self._fatal is not None:
            raise self._fatal

    def stop(self):
        """Unmount (lazily) so serve() returns once the last user lets go."""
        if self._mnt_dev is not None and self._is_our_mount():
            unmount(self.mountpoint)

    def abort(self):
        """Cut the connection now, even if `disk` is still open (fusectl's abort).

        Pending and future I/O on the mount fails with ENOTCONN; serve()
        returns.  Returns whether it could abort.
        """
        if self._mnt_dev is None:
            return False
        return abort_connection(self._mnt_dev)

    def close(self):
        """Release the fd (after unmounting if still mounted)."""
        if self.fd < 0:
            return
        # Closing the fd of a live mount leaves it answering ENOTCONN forever.
        if self._mnt_dev is not None and self._is_our_mount():
            unmount(self.mountpoint)
        fd, self.fd = self.fd, -1
        os.close(fd)

    # -- the loop -----------------------------------------------------------

    def _reader(self, helper=False):
        """Answer requests.  The first reader takes every request; a helper
        reader takes one only after the first has a large READ in hand
        (HELP_MIN_BYTES), which is when the kernel has most likely queued
        the other half of the same 1 MiB read.  Measured, same-minute
        pairs, halt polling on:
          * two threads taking turns on every request cost 4 KiB random
            reads and writes 10-15 % (QD1 and QD16); gated, they match one;
          * 1 MiB sequential read: one thread ~1300 MB/s, two ~2000 (each
            decodes its half's lz4 frame with the GIL released);
          * 1 MiB sequential write: one thread ~700 MB/s, two ~570: writes
            are mostly pool work under the GIL, and their lz4 calls are per
            page, so two writers only trade the GIL.  Writes stay on one."""
        more = self._more
        lead = not helper and more is not None
        fd = self.fd
        # Anonymous pages, faulted in (and locked) only where a request
        # lands: a bytearray is zero-filled, so each reader held all of its
        # 520 KiB from the start (an idle daemon 1 MiB of its ~20).  Private:
        # mmap's default, MAP_SHARED, is shmem, and the kernel's copy of each
        # WRITE into it cost ~8 us more CPU per 4 KiB request.
        buf = mmap.mmap(-1, BUFFER_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        mv = memoryview(buf)
        readv = os.readv
        send = self._send
        # The header and the first fields of read_in/write_in in one unpack.
        unpack_head = _abi.in_header_io.unpack_from
        pack_out = _abi.out_header.pack
        pack_write_out = _abi.write_out.pack
        handlers = self._handlers
        nops = len(handlers)
        reply_error = self._reply_error
        header_size = _abi.IN_HEADER_SIZE
        io_min = _abi.WRITE_DATA_OFFSET
        data_at = _abi.WRITE_DATA_OFFSET
        fs = self.fs
        # The device the locals below are bound to; None before init.
        # Bound once per device: the hot path calls these per request.
        device = None
        disksize = 0
        dev_read = dev_read_parts = dev_write = populate = None
        # Is a request waiting?  (Any event counts: POLLERR or POLLHUP on a
        # dead connection sends us back to readv, which ends the loop.)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        waiting = poller.poll
        READ, WRITE = _abi.READ, _abi.WRITE
        spin_ns = 0 if helper else self.spin_us * 1000
        clock = time.monotonic_ns
        spin_again = 0  # no spinning before this time (see SPIN_BACKOFF_NS)
        halt_check = 0  # when to look at guest_halt_poll_ns again
        while True:
            if helper:
                more.wait()
                if self._stopping:
                    return
                more.clear()
            elif spin_ns:
                # After each request, look for the next one for up to
                # spin_us before sleeping in readv (see SPIN_US).
                now = clock()
                if now >= halt_check:
                    halt_check = now + HALT_POLL_CHECK_NS
                    if halt_poll_ns() >= spin_ns:
                        spin_again = halt_check
                if now >= spin_again:
                    end = now + spin_ns
                    while not waiting(0):
                        last, now = now, clock()
                        if now - last > SPIN_PREEMPTED_NS:
                            # Off the CPU meanwhile, and not for the thread
                            # that brought a request: another thread wants
                            # this CPU, and the spin would take its time.
                            if not waiting(0):
                                spin_again = now + SPIN_BACKOFF_NS
                            break
                        if now >= end:
                            break
            try:
                n = readv(fd, (buf,))
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue
                if e.errno == errno.ENODEV:
                    return
                self._fatal = e
                return
            if n < header_size:
                if n == 0:  # EOF: only a non-/dev/fuse fd (the protocol tests' socket) does this
                    return
                self.errors += 1  # the kernel never sends a short request
                continue
            # Past n the buffer holds an older request: fields 9.. mean
            # something only for READ/WRITE of at least io_min bytes.
            _, opcode, unique, nodeid, _, _, _, _, _, _, offset, size = unpack_head(buf)
            if lead and opcode == READ and n >= io_min and size >= HELP_MIN_BYTES:
                more.set()
            try:
                if nodeid == DISK_INO and n >= io_min and fs.device is not None:
                    if fs.device is not device:
                        # First I/O since the device was initialised (reset
                        # needs disk closed, so no I/O crosses a reset).
                        device = fs.device
                        disksize = device.disksize
                        dev_read = device.read
                        dev_read_parts = device.read_parts
                        dev_write = device.write
                        populate = device.populate_ahead
                    # The hot path: block I/O on disk, straight to the device.
                    if opcode == READ:
                        # The reply goes out as the header plus the device's
                        # pages, one writev, never joined into one buffer.
                        if offset >= disksize:
                            send((pack_out(16, 0, unique),))
                            continue
                        if size == PAGE_SIZE and offset + PAGE_SIZE <= disksize:
                            # One block (swap, 4 KiB random I/O): no list.
                            send((pack_out(16 + PAGE_SIZE, 0, unique), dev_read(offset, PAGE_SIZE)))
                            continue
                        if size > disksize - offset:
                            size = disksize - offset
                        parts = dev_read_parts(offset, size)
                        parts.insert(0, pack_out(16 + size, 0, unique))
                        send(parts)
                        continue
                    if opcode == WRITE and n == data_at + size and offset + size <= disksize:
                        dev_write(offset, mv[data_at:n])
                        send((pack_out(24, 0, unique), pack_write_out(size, 0)))
                        if not helper and device.populate_wanted:
                            # Until the next request comes, fault in the
                            # zspages the next writes will take (Pool.
                            # populate_ahead): fio 1 MiB sequential write
                            # onto an emptied device, medians ~690 -> ~770
                            # MB/s (BENCHMARKS.md, 07:38).
                            while not waiting(0) and populate():
                                pass
                        continue
                if opcode < nops:
                    # The view ends where this request ends, so a short body
                    # fails to unpack instead of reading the last request's bytes.
                    handlers[opcode](unique, nodeid, mv[:n], n)
                elif opcode not in _NO_REPLY:
                    reply_error(unique, errno.ENOSYS)
            except _ConnectionGone:
                return
            except Exception as e:  # a bad request must never end the session
                err = errno_for(e)
                if err == errno.EIO:
                    self.errors += 1
                    self.last_error = e
                if opcode not in _NO_REPLY:
                    try:
                        reply_error(unique, err)
                    except _ConnectionGone:
                        return
                    except Exception as e2:
                        self.errors += 1
                        self.last_error = e2

    # -- replies ------------------------------------------------------------

    def _send(self, parts):
        try:
            os.writev(self.fd, parts)
        except OSError as e:
            if e.errno == errno.ENOENT:  # interrupted while we worked
                return
            if e.errno == errno.ENODEV:
                raise _ConnectionGone() from None
            raise

    def _reply(self, unique, payload=b""):
        self._send((_abi.out_header.pack(16 + len(payload), 0, unique), payload))

    def _reply_error(self, unique, err):
        self._send((_abi.out_header.pack(16, -err, unique),))

    # -- dispatch -----------------------------------------------------------

    def _build_dispatch(self):
        table = [None] * _abi.MAX_OPCODE
        enosys = self._enosys
        for op in range(_abi.MAX_OPCODE):
            table[op] = self._no_reply if op in _NO_REPLY else enosys
        table[_abi.INIT] = self._init
        table[_abi.DESTROY] = self._ok
        table[_abi.LOOKUP] = self._lookup
        table[_abi.GETATTR] = self._getattr
        table[_abi.SETATTR] = self._setattr
        table[_abi.OPEN] = self._open
        table[_abi.OPENDIR] = self._opendir
        table[_abi.READ] = self._read
        table[_abi.WRITE] = self._write
        table[_abi.READDIR] = self._readdir
        table[_abi.STATFS] = self._statfs
        table[_abi.FALLOCATE] = self._fallocate
        for op in (_abi.FLUSH, _abi.FSYNC, _abi.RELEASEDIR):
            table[op] = self._ok
        table[_abi.RELEASE] = self._release
        table[_abi.CREATE] = self._create
        table[_abi.MKNOD] = self._mknod
        # The header's nodeid is a directory in each: the parent (LINK: the new one).
        for op in (
            _abi.MKDIR,
            _abi.UNLINK,
            _abi.RMDIR,
            _abi.RENAME,
            _abi.RENAME2,
            _abi.LINK,
            _abi.SYMLINK,
        ):
            table[op] = self._change_tree
        return table

    def _enosys(self, unique, nodeid, mv, n):
        self._reply_error(unique, errno.ENOSYS)

    def _no_reply(self, unique, nodeid, mv, n):
        # FORGET/BATCH_FORGET: our inodes are static, nothing to forget.
        # INTERRUPT: every request here finishes quickly, so we just finish it.
        pass

    def _ok(self, unique, nodeid, mv, n):
        self._reply(unique)

    def _init(self, unique, nodeid, mv, n):
        major, minor, max_readahead, flags, _flags2 = _abi.init_in.unpack_from(
            mv, _abi.IN_HEADER_SIZE
        )
        if major > _abi.KERNEL_VERSION:
            # The kernel will retry INIT with the major we name.
            self._reply(
                unique, _abi.init_out.pack(_abi.KERNEL_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)[:8]
            )
            return
        if major < _abi.KERNEL_VERSION:
            self._reply_error(unique, errno.EPROTO)
            return
        self.kernel_minor = minor
        minor = min(minor, _abi.KERNEL_MINOR_VERSION)
        self.proto_minor = minor
        out = _abi.init_out.pack(
            _abi.KERNEL_VERSION,
            minor,
            max_readahead,
            flags & _WANT_FLAGS,
            MAX_BACKGROUND,
            CONGESTION_THRESHOLD,
            MAX_WRITE,
            1,  # time_gran: we keep nanoseconds
            MAX_PAGES,
            0,  # map_alignment
            0,  # flags2
        )
        if minor < _abi.INIT_OUT_FULL_MINOR:
            out = out[: _abi.COMPAT_22_INIT_OUT_SIZE]
        self._reply(unique, out)

    def _entry(self, a):
        return _abi.entry_out.pack(a.ino, 0, ENTRY_VALID_S, ATTR_VALID_S, 0, 0, *_attr_fields(a))

    def _attr_out(self, a):
        return _abi.attr_out.pack(ATTR_VALID_S, 0, 0, *_attr_fields(a))

    def _lookup(self, unique, nodeid, mv, n):
        name = bytes(mv[_abi.IN_HEADER_SIZE : n]).split(b"\0", 1)[0]
        self._reply(unique, self._entry(self.fs.lookup(nodeid, name)))

    def _getattr(self, unique, nodeid, mv, n):
        self._reply(unique, self._attr_out(self.fs.getattr(nodeid)))

    def _setattr(self, unique, nodeid, mv, n):
        (
            valid, _, _fh, size, _lock_owner, atime, mtime, _ctime,
            atimensec, mtimensec, _ctimensec, mode, _, uid, gid, _,
        ) = _abi.setattr_in.unpack_from(mv, _abi.IN_HEADER_SIZE)  # fmt: skip
        now = None
        if valid & (_abi.FATTR_ATIME_NOW | _abi.FATTR_MTIME_NOW):
            now = time.time_ns()
        if valid & _abi.FATTR_ATIME_NOW:
            atime_ns = now
        elif valid & _abi.FATTR_ATIME:
            atime_ns = atime * 1_000_000_000 + atimensec
        else:
            atime_ns = None
        if valid & _abi.FATTR_MTIME_NOW:
            mtime_ns = now
        elif valid & _abi.FATTR_MTIME:
            mtime_ns = mtime * 1_000_000_000 + mtimensec
        else:
            mtime_ns = None
        a = self.fs.setattr(
            nodeid,
            size=size if valid & _abi.FATTR_SIZE else None,
            mode=mode if valid & _abi.FATTR_MODE else None,
            uid=uid if valid & _abi.FATTR_UID else None,
            gid=gid if valid & _abi.FATTR_GID else None,
            atime_ns=atime_ns,
            mtime_ns=mtime_ns,
        )
        self._reply(unique, self._attr_out(a))

    def _create(self, unique, nodeid, mv, n):
        self.fs.create(nodeid)  # raises: the tree is fixed

    def _mknod(self, unique, nodeid, mv, n):
        mode, _rdev, _umask, _ = _abi.mknod_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        self.fs.mknod(nodeid, mode)  # raises

    def _change_tree(self, unique, nodeid, mv, n):
        self.fs.change_tree(nodeid)  # raises

    def _open(self, unique, nodeid, mv, n):
        flags, _ = _abi.open_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        fh = self.fs.open(nodeid, flags)
        # direct_io for everything: no uncompressed copy of disk in the page
        # cache, and attribute files render fresh on every read.  Parallel
        # direct writes: the device locks per block itself, so the inode lock
        # the kernel would otherwise take around each write only serializes.
        open_flags = _abi.FOPEN_DIRECT_IO
        if nodeid == DISK_INO:
            open_flags |= _abi.FOPEN_PARALLEL_DIRECT_WRITES
        self._reply(unique, _abi.open_out.pack(fh, open_flags, 0))

    def _opendir(self, unique, nodeid, mv, n):
        self.fs.opendir(nodeid)
        self._reply(unique, _abi.open_out.pack(0, 0, 0))

    # READ and WRITE of disk come here only when _reader's hot path did not
    # take them (no device yet, a write across the end, a malformed request);
    # the fs clamps at the end of disk.

    def _read(self, unique, nodeid, mv, n):
        fh, offset, size, _, _, _, _ = _abi.read_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        data = self.fs.read(nodeid, offset, size, fh)
        self._send((_abi.out_header.pack(16 + len(data), 0, unique), data))

    def _write(self, unique, nodeid, mv, n):
        _fh, offset, size, _, _, _, _ = _abi.write_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        data = mv[_abi.WRITE_DATA_OFFSET : _abi.WRITE_DATA_OFFSET + size]
        if len(data) != size:
            raise MalformedRequestError(f"WRITE of {size} bytes carries {len(data)}")
        if self.fs.is_slow(nodeid):
            # A writeback may take minutes: it gets a thread of its own,
            # which answers it, so the readers go on serving disk (the
            # helper reader takes requests only beside a large READ).
            threading.Thread(
                target=self._slow_write,
                args=(unique, nodeid, offset, bytes(data)),
                name="zramfs-slow-write",
                daemon=True,
            ).start()
            return
        written = self.fs.write(nodeid, offset, data)
        self._send((_abi.out_header.pack(24, 0, unique), _abi.write_out.pack(written, 0)))

    def _slow_write(self, unique, nodeid, offset, data):
        """A slow attribute write (Filesystem.is_slow), in its own thread."""
        try:
            written = self.fs.write(nodeid, offset, data)
            self._send((_abi.out_header.pack(24, 0, unique), _abi.write_out.pack(written, 0)))
        except _ConnectionGone:
            pass
        except Exception as e:
            err = errno_for(e)
            if err == errno.EIO:
                self.errors += 1
                self.last_error = e
            try:
                self._reply_error(unique, err)
            except Exception:  # the connection is gone: nobody waits any more
                pass

    def _release(self, unique, nodeid, mv, n):
        (fh,) = _abi.release_in_fh.unpack_from(mv, _abi.IN_HEADER_SIZE)
        self.fs.release(nodeid, fh)
        self._reply(unique)

    def _disk_resized(self):
        """Tell the kernel to drop its cached attributes of disk
        (FUSE_NOTIFY_INVAL_INODE, offset -1: attributes only), so the next
        stat, open or `losetup -c` sees the new size at once, not after
        ATTR_VALID_S.  Attribute-only invalidation takes no inode lock, so
        it is safe from inside a request; ENOENT means the kernel has no
        inode for disk cached, and nothing to drop."""
        if self.fd < 0:
            return
        try:
            os.writev(
                self.fd,
                (
                    _abi.out_header.pack(
                        16 + _abi.notify_inval_inode_out.size, _abi.NOTIFY_INVAL_INODE, 0
                    ),
                    _abi.notify_inval_inode_out.pack(DISK_INO, -1, 0),
                ),
            )
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def _readdir(self, unique, nodeid, mv, n):
        _fh, offset, size, _, _, _, _ = _abi.read_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        entries = self.fs.readdir(nodeid)
        out = bytearray()
        for i in range(offset, len(entries)):
            name, a = entries[i]
            rec = _abi.dirent_size(len(name))
            if len(out) + rec > size:
                break
            out += _abi.dirent.pack(a.ino, i + 1, len(name), a.mode >> 12)
            out += name
            out += bytes(rec - _abi.dirent.size - len(name))
        self._reply(unique, bytes(out))

    def _statfs(self, unique, nodeid, mv, n):
        s = self.fs.statfs()
        self._reply(
            unique,
            _abi.kstatfs.pack(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize, 0
            ),
        )

    def _fallocate(self, unique, nodeid, mv, n):
        _fh, offset, length, mode, _ = _abi.fallocate_in.unpack_from(mv, _abi.IN_HEADER_SIZE)
        self.fs.fallocate(nodeid, mode, offset, length)
        self._reply(unique)
