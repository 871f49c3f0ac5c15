"""The arena: the memory every zspage and huge object lives in.

Data flow: ``Pool`` lays its zspages and huge pages out at fixed places in
one big sparse mapping and tells the arena when a range is free again; the
arena gives that range's pages back to the kernel.  The arena owns the only
real memory: one ``memfd``, ``ftruncate``\\ d to a large reservation and mapped
``MAP_SHARED``.  Reserving costs nothing: shmem allocates a 4 KiB page when
it is first written, and frees it when its range is punched.

Why a memfd and hole punching, not anonymous memory and ``MADV_DONTNEED``:

* The daemon runs under ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``.
  ``MADV_DONTNEED`` (and ``MADV_REMOVE``) refuse locked ranges with EINVAL,
  and ``munlock`` of single pages splits the mapping into ever more VMAs until
  ``vm.max_map_count`` runs out.  ``fallocate(PUNCH_HOLE | KEEP_SIZE)`` on the
  memfd frees the pages from the file, and so from every mapping, locked or
  not.  The tests check that RSS really falls in both cases.
* A memfd can be handed to another process, and outlives the one that made
  it while anyone holds it: a restarted daemon maps the same memfd again
  (``Arena(size, fd=fd)``) and finds every page where it was.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref

from ._layout import PAGE_SHIFT

#: fallocate mode bits from <linux/falloc.h>: free the range, keep i_size.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


class Arena:
    """One memfd mapped MAP_SHARED; the pool indexes ``map``, ``mv`` and ``mv32``.

    ``mv`` is a byte view of the whole mapping and ``mv32`` the same memory
    as uint32 words (object headers and free links).  Not thread safe on its
    own: the pool calls it under the pool lock.
    """

    __slots__ = ("fd", "map", "mv", "mv32", "size", "closed", "_close_fd", "__weakref__")

    def __init__(self, size: int, name: str = "zramfs-pool", fd: int | None = None):
        """A new memfd of ``size`` bytes, or, given ``fd``, that memfd (of
        that size) taken over as it is: its pages are kept, and the arena
        owns the fd from here on (closes it in ``close``)."""
        self.size = size
        self.closed = False
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC) if fd is None else fd
        try:
            if fd is None:
                os.ftruncate(self.fd, size)
            elif os.fstat(fd).st_size != size:
                raise ValueError(
                    f"memfd {fd} is {os.fstat(fd).st_size} bytes, the layout needs {size}"
                )
            self.map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        # A pool dropped without close() still gives its fd back; the mapping
        # goes away by itself with the last view of it.
        self._close_fd = weakref.finalize(self, os.close, self.fd)
        self.mv = memoryview(self.map)
        self.mv32 = self.mv.cast("I")

    def release(self, addr: int, length: int) -> None:
        """Give the pages of [addr, addr + length) back to the kernel.

        Both must be page aligned.  The range reads as zeros afterwards.
        """
        if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, addr, length) != 0:
            err = ctypes.get_errno()
            # The kernel refusing to free memory is nothing the pool can
            # recover from or hide; the range stays the pool's.
            raise OSError(
                err,
                f"fallocate(PUNCH_HOLE) of {length >> PAGE_SHIFT} pages failed: {os.strerror(err)}",
            )

    def close(self) -> None:
        """Unmap and close.  Views handed out must have been released."""
        if self.closed:
            return
        self.mv32.release()
        self.mv.release()
        self.map.close()
        self._close_fd()
        self.closed = True
