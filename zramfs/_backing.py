"""The backing store: where writeback puts pages that leave RAM.

Where this sits in the data flow::

    zramfs.fs -> zramfs.device (BlockDevice.writeback, reads of WB slots)
                      '-> zramfs._backing (this module) -> a block device or a file

zram's ``backing_dev`` is a partition; zram reserves one 4 KiB block of it
per written-back page (a bitmap, ``bd_count`` blocks in use) and keeps the
block number in the slot's ``handle``.  ``BackingStore`` does the same over
either a block device or a regular file.  A file is beyond zram: it is
created sparse, sized to the disk, mode 0600, and a freed block becomes a
hole again (``fallocate(PUNCH_HOLE)``), so the file holds disk space only
for the pages written back now.  A block device's freed blocks are simply
reused.

Why its I/O can never wait on zramfs's own swap: every read and write is
``O_DIRECT`` from an anonymous, page-aligned ``mmap`` buffer.  The daemon
runs under ``mlockall``, so those buffers are locked in RAM once touched and
never need a swap-in, and ``O_DIRECT`` goes around the page cache, so there
are no dirty cache pages whose writeout would need memory reclaim (and so,
perhaps, swap) first.  A backing file must of course not live on a
filesystem that zramfs itself holds; zramfs does not check that.

Blocks are allocated from a ``bytearray``, one byte per block (no Python
object per block; ``find`` runs in C), next-fit from a cursor, handing out
runs of consecutive blocks so that a batch of pages is one ``pwritev``.
Block 0 is used like any other (the slot's WB flag, not a non-zero handle,
says the handle is a block).

Frees are deferred: ``free`` only queues the blocks (it is called under the
device's lock, where no I/O may happen), and ``reclaim`` -- called by the
device outside its lock, before each allocation and after a discard --
punches the holes and only then lets the blocks be allocated again, so a
late hole punch can never hit a block that already holds new data.

Surviving the process: the store keeps nothing that cannot be rebuilt.  A
daemon that takes a device over (``BlockDevice.resume``) opens the store
again (``BackingStore.attach``: the fd the supervisor kept, or the path)
and rebuilds the bitmap from the written-back slots (``adopt``); blocks no
slot names (written by a writeback killed before it installed them, or
freed by a rewrite whose punch was still queued) are free again, and a
file's are punched.  At most 2**31 blocks (8 TiB) are used, so that a
block number fits the word a slot parks while it changes state
(zramfs._slots).

Thread safety: one small lock guards the bitmap and the queue; reads may run
in any number of threads at once (each has its own buffer); writes come from
one writeback at a time (the device ensures it).
"""

import errno
import mmap
import os
import stat
import threading

from allocator import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, PAGE_SHIFT, PAGE_SIZE
from allocator._arena import _fallocate

__all__ = [
    "BackingIOError",
    "BackingStore",
    "BackingStoreError",
    "BackingStoreFullError",
]

_PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

#: Most blocks used: a block number must fit 31 bits (see "Surviving").
_MAX_BLOCKS = 1 << 31


class BackingStoreError(Exception):
    """Raised when a backing store cannot be set up: the path is neither a
    block device nor a regular file, an existing file is not empty, it
    cannot be opened with O_DIRECT, or it has no room for one block."""


class BackingStoreFullError(BackingStoreError):
    """Raised when writeback needs a block and every block is in use
    (zram's writeback fails with ENOSPC then)."""


class BackingIOError(BackingStoreError):
    """Raised when a read or write of the backing store fails; ``errno``
    is the system's (EIO, ENOSPC of a full filesystem under a file, ...)."""

    def __init__(self, message, errno_):
        super().__init__(message)
        self.errno = errno_


class BackingStore:
    """``nr_blocks`` 4 KiB blocks of the file or block device at ``path``.

    A block device is used whole and opened ``O_EXCL`` (no filesystem or
    other user may hold it, the kernel's claim).  A regular file that does
    not exist is created with mode 0600; an empty one is taken; either is
    sized to ``size`` bytes (the disk's size: every page could be written
    back) and stays sparse.  A non-empty file is refused, so a mistyped
    path cannot overwrite someone's data.
    """

    def __init__(self, path, size, _fd=None):
        self.path = os.fspath(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._fd = -1
        self._wbuf = None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise BackingStoreError(f"backing store {self.path}: {exc.strerror}") from None
        if _fd is not None:
            # Taken over (attach): a store this device set up before.
            fd = _fd
            st = os.fstat(fd)
            self.is_file = stat.S_ISREG(st.st_mode)
            length = os.lseek(fd, 0, os.SEEK_END)
        elif st is not None and stat.S_ISBLK(st.st_mode):
            self.is_file = False
            fd = self._open(os.O_RDWR | os.O_EXCL)
            try:
                length = os.lseek(fd, 0, os.SEEK_END)
            except OSError as exc:
                os.close(fd)
                raise BackingStoreError(f"backing store {self.path}: {exc.strerror}") from None
        elif st is None or stat.S_ISREG(st.st_mode):
            self.is_file = True
            if st is not None and st.st_size:
                raise BackingStoreError(
                    f"backing file {self.path} exists and is not empty ({st.st_size} bytes); "
                    "give a new path or an empty file"
                )
            fd = self._open(os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, size)
            except OSError as exc:
                os.close(fd)
                raise BackingStoreError(f"backing file {self.path}: {exc.strerror}") from None
            length = size
        else:
            raise BackingStoreError(
                f"backing store {self.path} is neither a block device nor a regular file"
            )
        self._fd = fd
        self.nr_blocks = min(length >> PAGE_SHIFT, _MAX_BLOCKS)
        if not self.nr_blocks:
            self.close()
            raise BackingStoreError(f"backing store {self.path} has no room for one 4 KiB block")
        self._bitmap = bytearray(self.nr_blocks)  # 1 = in use or waiting for reclaim
        self._cursor = 0
        self._pending = []  # freed blocks, not yet punched
        self.blocks_used = 0  # blocks allocated and not freed

    @classmethod
    def attach(cls, path, size, fd=None):
        """The store a device used before it was taken over: ``fd`` if the
        supervisor kept it (taken over: closed by ``close``), else ``path``
        opened again, whatever it holds (BackingStoreError if it cannot
        be).  Every block is free until ``adopt``."""
        if fd is None:
            st = None
            try:
                st = os.stat(path)
            except OSError as exc:
                raise BackingStoreError(f"backing store {path}: {exc.strerror}") from None
            flags = os.O_RDWR | (os.O_EXCL if stat.S_ISBLK(st.st_mode) else 0)
            try:
                fd = os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
            except OSError as exc:
                raise BackingStoreError(f"backing store {path}: {exc.strerror}") from None
        return cls(path, size, _fd=fd)

    @property
    def fd(self):
        """The store's fd (what a supervisor keeps for a restart)."""
        return self._fd

    def adopt(self, blocks):
        """Mark ``blocks`` (the written-back slots') in use, every other
        block free; punch the free ones of a file (a writeback or a rewrite
        cut short may have left data there).  BackingStoreError if a block
        is out of range or named twice."""
        bitmap = bytearray(self.nr_blocks)
        for block in blocks:
            if not 0 <= block < self.nr_blocks or bitmap[block]:
                raise BackingStoreError(
                    f"backing block {block} is out of range or named by two slots"
                )
            bitmap[block] = 1
        with self._lock:
            self._bitmap = bitmap
            self._pending = []
            self._cursor = 0
            self.blocks_used = len(blocks)
        if self.is_file:
            pos = 0
            while pos < self.nr_blocks:
                first = bitmap.find(0, pos)
                if first < 0:
                    break
                stop = bitmap.find(1, first)
                if stop < 0:
                    stop = self.nr_blocks
                _fallocate(self._fd, _PUNCH, first << PAGE_SHIFT, (stop - first) << PAGE_SHIFT)
                pos = stop

    def _open(self, flags, mode=0o600):
        try:
            return os.open(self.path, flags | os.O_DIRECT | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                reason = "its filesystem does not support O_DIRECT"
            else:
                reason = exc.strerror
            raise BackingStoreError(f"backing store {self.path}: {reason}") from None

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._wbuf is not None:
            self._wbuf.close()
            self._wbuf = None

    # --- blocks ----------------------------------------------------------------

    def allocate(self, count):
        """Up to ``count`` free blocks, as a list of (first, length) runs of
        consecutive blocks; fewer (or none) when the store is that full.
        Reclaims freed blocks first."""
        if self._pending:
            self.reclaim()
        runs = []
        with self._lock:
            bitmap = self._bitmap
            nr = self.nr_blocks
            wrapped = False
            pos = self._cursor
            while count:
                start = bitmap.find(0, pos)
                if start < 0:
                    if wrapped or not pos:
                        break
                    wrapped, pos = True, 0
                    continue
                end = bitmap.find(1, start, start + count)
                if end < 0:
                    end = min(start + count, nr)
                bitmap[start:end] = b"\x01" * (end - start)
                runs.append((start, end - start))
                count -= end - start
                pos = end
            self._cursor = pos if pos < nr else 0
            self.blocks_used += sum(length for _, length in runs)
        return runs

    def free(self, blocks):
        """Queue ``blocks`` to be freed (no I/O: safe under the device lock).
        They stay unallocatable until ``reclaim`` has punched them."""
        with self._lock:
            self._pending.extend(blocks)
            self.blocks_used -= len(blocks)

    def reclaim(self):
        """Punch holes for the queued blocks (a file; a block device's are
        just reused) and make them allocatable.  A failed punch leaves the
        block allocatable anyway: its old data is only wasted space."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        if self.is_file:
            for block in pending:
                _fallocate(self._fd, _PUNCH, block << PAGE_SHIFT, PAGE_SIZE)
        with self._lock:
            bitmap = self._bitmap
            for block in pending:
                bitmap[block] = 0

    def unallocate(self, runs):
        """Give back blocks from ``allocate`` that were never written."""
        blocks = [b for first, length in runs for b in range(first, first + length)]
        self.free(blocks)

    # --- I/O ---------------------------------------------------------------------

    def write(self, first, pages):
        """Write ``pages`` (bytes-likes of 4096 bytes) to blocks first,
        first + 1, ... in one O_DIRECT pwritev.  BackingIOError on failure
        (the blocks' content is then undefined)."""
        n = len(pages)
        buf = self._wbuf
        if buf is None or len(buf) < n * PAGE_SIZE:
            if buf is not None:
                buf.close()
            buf = self._wbuf = mmap.mmap(-1, max(n, 32) * PAGE_SIZE)
        view = memoryview(buf)
        try:
            for i, page in enumerate(pages):
                view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] = page
            try:
                done = os.pwritev(self._fd, [view[: n * PAGE_SIZE]], first << PAGE_SHIFT)
            except OSError as exc:
                raise BackingIOError(
                    f"write of {n} blocks at block {first} of {self.path} failed: {exc.strerror}",
                    exc.errno,
                ) from None
        finally:
            view.release()
        if done != n * PAGE_SIZE:
            # A short write: the filesystem under a file ran out of room.
            raise BackingIOError(
                f"write of {n} blocks at block {first} of {self.path} was cut short "
                f"at {done} bytes",
                errno.ENOSPC,
            )

    def read(self, block, count=1):
        """The bytes of ``count`` blocks from ``block`` (one O_DIRECT
        preadv into this thread's own aligned buffer).  BackingIOError on
        failure or a short read."""
        length = count * PAGE_SIZE
        local = self._local
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < length:
            if buf is not None:
                buf.close()
            buf = local.buf = mmap.mmap(-1, length)
        view = memoryview(buf)
        try:
            done = os.preadv(self._fd, [view[:length]], block << PAGE_SHIFT)
        except OSError as exc:
            raise BackingIOError(
                f"read of {count} blocks at block {block} of {self.path} failed: {exc.strerror}",
                exc.errno,
            ) from None
        finally:
            view.release()
        if done != length:
            raise BackingIOError(
                f"read of {count} blocks at block {block} of {self.path} returned {done} bytes",
                errno.EIO,
            )
        return buf[:length]
