"""The slot table: one record per 4 KiB block of a device, and its memory.

Where this sits in the data flow::

    zramfs.fs -> zramfs.device (BlockDevice) -> zramfs._slots (this module)
                                             '-> allocator.Pool

``BlockDevice`` turns a byte range into slot indexes (``offset >> 12``) and
keeps, per slot, what zram keeps in ``struct zram_table_entry``: where the
block's data is and what kind of data it is.  This module owns that record:
its layout, its flags and states, and the memory it lives in.

Memory
------
No Python object exists per slot.  The table is one anonymous mapping,
``MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE``, reserved whole for the
device's size and cut into arrays (struct of arrays, so that a run of slots
is one slice of each), viewed through ``memoryview`` casts.  Reserving costs
address space, not memory: the kernel gives a page of the table memory when
it is first written, and a read of a never-written page maps the shared zero
page.  The daemon runs under ``mlockall(MCL_CURRENT | MCL_FUTURE |
MCL_ONFAULT)``, which locks pages as they fault in and leaves the untouched
rest alone, so an empty 1 TiB device (268 million slots, a 4 GiB table)
costs a few pages, where kernel zram allocates its whole table up front.
``NORESERVE`` keeps the reservation out of the commit charge under the
default overcommit policy; under ``vm.overcommit_memory=2`` the kernel
charges it, and may refuse it.  ``check_reservable`` makes the same
reservation and drops it, so the CLI refuses a size the machine cannot
serve before any daemon starts.
"""

import mmap

__all__ = [
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "SLOT_BYTES",
    "SlotTable",
    "SlotTableTooLargeError",
    "check_reservable",
    "table_bytes",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: Bytes of address space a slot reserves: handle (8), info (4) and the
#: last-access stamp (4), the size of kernel zram's ``zram_table_entry``.
SLOT_BYTES = 16

# How release() frees table pages, tried in order; advice the kernel refuses
# is dropped for good.  MADV_DONTNEED_LOCKED (24, <asm-generic/mman-common.h>,
# Linux 5.18) frees pages of a range mlockall has locked and keeps it locked
# for the next fault; plain MADV_DONTNEED refuses locked ranges (EINVAL), but
# serves an older kernel where nothing is locked.  With neither, the pages
# stay, as kernel zram's whole table always does.
_FREE_ADVICE = [getattr(mmap, "MADV_DONTNEED_LOCKED", 24), mmap.MADV_DONTNEED]

_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)


class SlotTableTooLargeError(ValueError):
    """Raised when the kernel refuses to reserve the address space of a slot
    table that big (the process's address space, ``ulimit -v``, or the
    overcommit policy).  The message says how large a device would fit."""


def _round_page(n):
    return (n + PAGE_SIZE - 1) & -PAGE_SIZE


def _layout(nr_slots):
    """Byte offsets of the three arrays in the mapping, and its length.
    Each array starts on a page, so each can be given back page by page."""
    handle = 0
    info = handle + _round_page(8 * nr_slots)
    ac_time = info + _round_page(4 * nr_slots)
    return handle, info, ac_time, ac_time + _round_page(4 * nr_slots)


def table_bytes(nr_slots):
    """The address space a table of ``nr_slots`` slots reserves."""
    return _layout(nr_slots)[3]


def _reserve(length):
    """The table's mapping, or OSError/OverflowError from the kernel or mmap."""
    return mmap.mmap(-1, length, flags=_MAP_FLAGS, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _too_large(nr_slots, exc):
    """SlotTableTooLargeError for ``nr_slots``, with the largest table that
    can be reserved now (found by halving: ~45 mmap calls, a millisecond)."""
    low, high = 0, nr_slots  # low fits (or is 0), high does not
    while high - low > 1:
        mid = (low + high) // 2
        try:
            _reserve(table_bytes(mid)).close()
        except (OSError, OverflowError):
            high = mid
        else:
            low = mid
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SlotTableTooLargeError(
        f"size {_human(nr_slots << PAGE_SHIFT, exact=True)} is more than this machine can serve: its slot table "
        f"needs {_human(table_bytes(nr_slots))} of address space ({SLOT_BYTES} bytes per "
        f"4 KiB page) and the kernel refused it ({reason}); the largest size that fits "
        f"now is {_human(low << PAGE_SHIFT)}"
    )


def _human(n, exact=False):
    """Bytes in the CLI's size grammar: '390T', rounded down to a whole unit,
    or, if ``exact``, in the largest unit that divides ``n``."""
    for shift, unit in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if n >= 1 << shift and not (exact and n & ((1 << shift) - 1)):
            return f"{n >> shift}{unit}"
    return str(n)


def check_reservable(nr_slots):
    """Raise SlotTableTooLargeError unless a table of ``nr_slots`` slots can
    be reserved now: reserves it (no memory is touched) and drops it."""
    try:
        _reserve(table_bytes(nr_slots)).close()
    except (OSError, OverflowError) as exc:
        raise _too_large(nr_slots, exc) from None


class SlotTable:
    """The slots of one device: ``handle`` (memoryview 'Q') and ``info``
    (memoryview 'I'), indexed by slot; ``info_bytes`` is ``info`` as bytes.

    Not thread safe on its own: the device guards it with its lock.
    """

    __slots__ = ("nr_slots", "handle", "info", "info_bytes", "_map", "_arrays", "_views")

    def __init__(self, nr_slots):
        handle_at, info_at, _, length = _layout(nr_slots)
        try:
            self._map = _reserve(length)
        except (OSError, OverflowError) as exc:
            raise _too_large(nr_slots, exc) from None
        self.nr_slots = nr_slots
        whole = memoryview(self._map)
        self.handle = whole[handle_at : handle_at + 8 * nr_slots].cast("Q")
        self.info = whole[info_at : info_at + 4 * nr_slots].cast("I")
        self.info_bytes = self.info.cast("B")
        # (byte offset in the mapping, bytes per slot) of each array release() frees.
        self._arrays = ((handle_at, 8), (info_at, 4))
        self._views = (self.info_bytes, self.info, self.handle, whole)

    def release(self, first, end):
        """Give the kernel back the table pages that hold only slots of
        [first, end), which must all be empty (info and handle 0): they read
        as zeros again, so nothing changes but RSS (see _FREE_ADVICE)."""
        for at, width in self._arrays:
            start = at + _round_page(width * first)
            stop = at + ((width * end) & -PAGE_SIZE)
            while start < stop and _FREE_ADVICE:
                advice = _FREE_ADVICE[0]
                try:
                    self._map.madvise(advice, start, stop - start)
                    break
                except OSError:
                    if advice in _FREE_ADVICE:
                        _FREE_ADVICE.remove(advice)

    def close(self):
        """Unmap the table.  The device is unusable afterwards."""
        if self._map is None:
            return
        for view in self._views:
            view.release()
        self._map.close()
        self._map = None
