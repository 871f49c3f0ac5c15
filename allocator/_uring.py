"""An io_uring that runs madvise(MADV_POPULATE_WRITE) on kernel workers.

Where this sits: beside the arena, under ``Pool.populate_ahead``.  The pool
faults in the pages of zspages a coming malloc will want; done with a plain
``madvise`` the faults cost the calling thread (the FUSE session's first
reader) 2-4 us a page.  Submitted here as ``IORING_OP_MADVISE``, which the
kernel always hands to an io-wq worker thread, the faults run on that
worker, on whichever core is free, while the caller goes on.

Pure Python: the ring is set up with the raw ``io_uring_setup`` and
``io_uring_enter`` system calls through ctypes and read through ``mmap``
(no compiled extension).  `open_ring` returns None wherever io_uring is
absent or refused (ENOSYS; EPERM or EACCES under
``kernel.io_uring_disabled`` or a seccomp filter; ZRAMFS_NO_URING set),
and the caller falls back to a plain ``madvise``.

Not thread safe: the pool calls it under its lock.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct

#: Fewer zspages than this wanted at once are faulted in by madvise on the
#: caller's thread: a submission and a worker's wakeup cost more than the
#: faults of one zspage (4 KiB random writes QD1, which want one at a time:
#: 12.1k IOPS through the ring against 13.0k without, same minutes).
RING_MIN_BATCH = 4

#: Set (to anything but "" or "0") to keep io_uring unused: the plain madvise path.
NO_URING_ENV = "ZRAMFS_NO_URING"

# x86-64 and arm64 agree on these numbers (the "generic" syscall table).
_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_ENTER = 426
_IORING_OFF_SQ_RING = 0
_IORING_OFF_CQ_RING = 0x8000000
_IORING_OFF_SQES = 0x10000000
_IORING_FEAT_SINGLE_MMAP = 1 << 0
_IORING_ENTER_GETEVENTS = 1 << 0
_IORING_OP_MADVISE = 25
#: madvise(2): fault the range in, writable, without writing to it (5.14).
MADV_POPULATE_WRITE = 23
_SQE_SIZE = 64
_CQE_SIZE = 16

# struct io_uring_params: 7 u32 + resv[3], then io_sqring_offsets and
# io_cqring_offsets (8 u32 + one u64 each): 120 bytes.
_PARAMS = struct.Struct("=10I 8IQ 8IQ")
# The SQE fields an madvise uses: opcode, flags, ioprio, fd, off, addr,
# len, fadvise_advice, user_data; the rest stays zero.
_SQE = struct.Struct("=BBHiQQIIQ")
_SQE_TAIL = bytes(_SQE_SIZE - _SQE.size)
_CQE = struct.Struct("=QiI")

# x86-64 keeps loads in order (TSO), so the CQ tail read before the CQEs
# is enough; elsewhere reap() enters the kernel first, a full barrier.
_NEEDS_FENCE = platform.machine() not in ("x86_64", "AMD64", "i686")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _setup(entries: int, params: ctypes.Array) -> int:
    fd = _syscall(ctypes.c_long(_SYS_IO_URING_SETUP), ctypes.c_uint(entries), ctypes.byref(params))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"io_uring_setup: {os.strerror(err)}")
    return fd


def buffer_address(buf) -> int:
    """The address of a writable buffer (an mmap): what an SQE's addr wants."""
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c  # let go of the export, or the mmap could never close


class Ring:
    """An io_uring of ``entries`` submissions, for MADV_POPULATE_WRITE only.

    `madvise` queues and submits one; `reap` returns the finished ones'
    ``(user_data, result)`` without waiting; `wait` waits for one.
    ``in_flight`` counts submitted and not reaped.
    """

    def __init__(self, entries: int = 32):
        params = (ctypes.c_ubyte * _PARAMS.size)()
        self.fd = _setup(entries, params)
        self.in_flight = 0
        self._queued = 0
        try:
            f = _PARAMS.unpack(bytes(params))
            sq_entries, cq_entries, features = f[0], f[1], f[5]
            sq_head, sq_tail, sq_mask, _, _, _, sq_array = f[10:17]
            cq_head, cq_tail, cq_mask, _, _, cqes = f[19:25]
            sq_size = sq_array + sq_entries * 4
            cq_size = cqes + cq_entries * _CQE_SIZE
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            if features & _IORING_FEAT_SINGLE_MMAP:
                self._sq = mmap.mmap(
                    self.fd, max(sq_size, cq_size), flags, prot, offset=_IORING_OFF_SQ_RING
                )
                self._cq = self._sq
            else:
                self._sq = mmap.mmap(self.fd, sq_size, flags, prot, offset=_IORING_OFF_SQ_RING)
                self._cq = mmap.mmap(self.fd, cq_size, flags, prot, offset=_IORING_OFF_CQ_RING)
            self._sqes = mmap.mmap(
                self.fd, sq_entries * _SQE_SIZE, flags, prot, offset=_IORING_OFF_SQES
            )
        except BaseException:
            os.close(self.fd)
            raise
        self.entries = sq_entries
        self._sq32 = memoryview(self._sq).cast("I")
        self._cq32 = memoryview(self._cq).cast("I")
        self._sq_head = sq_head >> 2
        self._sq_tail = sq_tail >> 2
        self._sq_mask = self._sq32[sq_mask >> 2]
        self._sq_array = sq_array >> 2
        self._cq_head = cq_head >> 2
        self._cq_tail = cq_tail >> 2
        self._cq_mask = self._cq32[cq_mask >> 2]
        self._cqes = cqes
        self.closed = False

    def madvise(self, addr: int, length: int, advice: int, user_data: int) -> bool:
        """Queue madvise(addr, length, advice); False if the ring is full.

        Nothing reaches the kernel before `submit`.
        """
        if self.in_flight + self._queued >= self.entries:
            return False
        sq32 = self._sq32
        tail = sq32[self._sq_tail]
        i = tail & self._sq_mask
        at = i * _SQE_SIZE
        _SQE.pack_into(
            self._sqes, at, _IORING_OP_MADVISE, 0, 0, -1, 0, addr, length, advice, user_data
        )
        self._sqes[at + _SQE.size : at + _SQE_SIZE] = _SQE_TAIL
        sq32[self._sq_array + i] = i
        # The tail store publishes the SQE; the kernel reads it only in
        # io_uring_enter, a system call, which orders the stores before it.
        sq32[self._sq_tail] = (tail + 1) & 0xFFFFFFFF
        self._queued += 1
        return True

    def submit(self) -> None:
        """Hand every queued madvise to the kernel (one system call).  On
        OSError nothing queued was submitted, and the queue is emptied."""
        n = self._queued
        if not n:
            return
        self._queued = 0
        try:
            self._enter(n, 0, 0)
        except OSError:
            sq32 = self._sq32
            sq32[self._sq_tail] = (sq32[self._sq_tail] - n) & 0xFFFFFFFF
            raise
        self.in_flight += n

    def reap(self) -> list[tuple[int, int]]:
        """The finished submissions' (user_data, result: 0 or -errno); never waits."""
        if _NEEDS_FENCE and self.in_flight:
            # Python's loads carry no acquire order: a system call stands in.
            self._enter(0, 0, _IORING_ENTER_GETEVENTS)
        cq32 = self._cq32
        head = cq32[self._cq_head]
        tail = cq32[self._cq_tail]
        done = []
        while head != tail:
            user_data, res, _ = _CQE.unpack_from(
                self._cq, self._cqes + (head & self._cq_mask) * _CQE_SIZE
            )
            done.append((user_data, res))
            head = (head + 1) & 0xFFFFFFFF
        if done:
            cq32[self._cq_head] = head
            self.in_flight -= len(done)
        return done

    def wait(self) -> list[tuple[int, int]]:
        """`reap`, after waiting for at least one if any is in flight."""
        done = self.reap()
        if not done and self.in_flight:
            self._enter(0, 1, _IORING_ENTER_GETEVENTS)
            done = self.reap()
        return done

    def _enter(self, to_submit: int, min_complete: int, flags: int) -> None:
        while True:
            r = _syscall(
                ctypes.c_long(_SYS_IO_URING_ENTER),
                ctypes.c_uint(self.fd),
                ctypes.c_uint(to_submit),
                ctypes.c_uint(min_complete),
                ctypes.c_uint(flags),
                None,
                ctypes.c_size_t(0),
            )
            if r >= 0:
                return
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def close(self) -> list[tuple[int, int]]:
        """Wait for what is in flight (it writes into the caller's memory),
        then let go; returns what ended meanwhile, as `reap`.  Whatever is
        queued and not submitted is dropped."""
        done: list[tuple[int, int]] = []
        if self.closed:
            return done
        while self.in_flight:
            done += self.wait()
        self._sq32.release()
        self._cq32.release()
        self._sqes.close()
        if self._cq is not self._sq:
            self._cq.close()
        self._sq.close()
        os.close(self.fd)
        self.closed = True
        return done


def open_ring(entries: int = 32) -> Ring | None:
    """A Ring, or None where io_uring is absent, refused or turned off (NO_URING_ENV)."""
    if os.environ.get(NO_URING_ENV, "") not in ("", "0"):
        return None
    try:
        return Ring(entries)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOMEM):
            return None
        raise


class Populator:
    """Faults in arena ranges for ``Pool.populate_ahead``: through a Ring
    when there is one, else with a plain madvise on the caller's thread.

    The ring is opened on the first `start`, so a pool that never
    populates holds no ring.  ``pending`` and ``pending_pages`` count
    zspages whose madvise is queued or in flight: they are in no ready
    stack yet; `finished` hands them over as ``(id, pages, result)``,
    result 0 or -errno.  The pool counts them against READY_MAX and its
    page cap.
    """

    __slots__ = (
        "_map",
        "_base",
        "_ring",
        "_opened",
        "_flight",
        "_queued",
        "_ended",
        "pending_pages",
    )

    def __init__(self, arena_map: mmap.mmap):
        self._map = arena_map
        self._base = 0
        self._ring: Ring | None = None
        self._opened = False
        # zspage id -> its pages, for each madvise queued or in flight.
        self._flight: dict[int, int] = {}
        # Ids queued since the last flush (not yet seen by the kernel).
        self._queued: list[int] = []
        # Results known without the ring (a ring given up on).
        self._ended: list[tuple[int, int, int]] = []
        self.pending_pages = 0

    @property
    def pending(self) -> int:
        """Zspages whose madvise is queued or in flight."""
        return len(self._flight)

    def flying(self) -> dict[int, int]:
        """zspage id -> pages, for each madvise queued or in flight (a copy)."""
        return dict(self._flight)

    @property
    def uses_ring(self) -> bool:
        """Whether madvise goes through io_uring (known after the first `start`)."""
        return self._ring is not None

    def start(self, z: int, offset: int, length: int, pages: int, batch: int) -> bool:
        """Fault in arena [offset, offset + length) for zspage z, one of
        ``batch`` the caller is about to start.

        True: queued on the ring (`flush` submits it, `finished` reports
        it).  False: done here and now by madvise, which raises its
        OSError: a batch under RING_MIN_BATCH, or no ring.
        """
        if batch < RING_MIN_BATCH:
            self._map.madvise(MADV_POPULATE_WRITE, offset, length)
            return False
        if not self._opened:
            self._opened = True
            self._ring = open_ring()
            if self._ring is not None:
                self._base = buffer_address(self._map)
        ring = self._ring
        if ring is not None and ring.madvise(self._base + offset, length, MADV_POPULATE_WRITE, z):
            self._flight[z] = pages
            self._queued.append(z)
            self.pending_pages += pages
            return True
        self._map.madvise(MADV_POPULATE_WRITE, offset, length)
        return False

    def flush(self) -> None:
        """Submit what `start` queued, in one system call.  If the kernel
        refuses, the ring is given up: the queued zspages end with -errno,
        what was in flight is waited for, and madvise is used from then on."""
        ring = self._ring
        if ring is None or not self._queued:
            return
        try:
            ring.submit()
        except OSError as e:
            res = -(e.errno or errno.EIO)
            for z in self._queued:
                self._ended.append((z, self._forget(z), res))
            self._ring = None
            self._ended += self._done(ring.close())
        self._queued.clear()

    def finished(self) -> list[tuple[int, int, int]]:
        """The zspages whose madvise ended since the last call; never waits."""
        ended = self._take_ended()
        if self._ring is not None and self._flight:
            ended += self._done(self._ring.reap())
        return ended

    def drain(self) -> list[tuple[int, int, int]]:
        """`finished`, after waiting for every madvise queued or in flight."""
        self.flush()
        ended = self._take_ended()
        ring = self._ring
        while ring is not None and self._flight:
            ended += self._done(ring.wait())
        return ended

    def close(self) -> list[tuple[int, int, int]]:
        """`drain`, then close the ring."""
        ended = self.drain()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        return ended

    def _forget(self, z: int) -> int:
        pages = self._flight.pop(z)
        self.pending_pages -= pages
        return pages

    def _done(self, cqes: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
        return [(z, self._forget(z), res) for z, res in cqes]

    def _take_ended(self) -> list[tuple[int, int, int]]:
        ended, self._ended = self._ended, []
        return ended
