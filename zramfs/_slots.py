"""The slot table: one record per 4 KiB block of a device, and its memory.

Where this sits in the data flow::

    zramfs.fs -> zramfs.device (BlockDevice) -> zramfs._slots (this module)
                                             '-> allocator.Pool

``BlockDevice`` turns a byte range into slot indexes (``offset >> 12``) and
keeps, per slot, what zram keeps in ``struct zram_table_entry``: where the
block's data is and what kind of data it is.  This module owns that record
(its layout, flags and states), the counters that follow from the states
(``mm_stat``'s orig_data_size, compr_data_size, same_pages, huge_pages,
huge_pages_since), and the memory the table lives in.  The device makes
every change of state through ``BlockDevice._commit_locked``, which calls
``SlotTable.account`` once per change; nothing else writes a slot or a
counter.  The device's lock guards all of it (the concurrency rule is in
``zramfs.device``).

Layout
------
Three arrays, indexed by slot, 16 bytes a slot, kernel zram's size:

``handle``: 8 bytes
    the pool handle of the slot's object, or, for a same-filled slot, the
    repeated 8-byte word (read little-endian).  Written-back slots will keep
    their backing-file block number here, as zram keeps it in ``handle``.
``info``: 4 bytes
    bits 0-12 (``SIZE_MASK``): the object's size in the pool (1..4096;
    4096 = 1 << 12 needs 13 bits).  It is non-zero exactly when the slot
    owns a pool object.
    bits 13-20: flags, named after zram's ``enum zram_pageflags``: ``SAME``,
    ``HUGE``, ``IDLE``, ``WB`` (written back), ``INCOMPRESSIBLE``, ``DEDUP``,
    and two ``COMP_PRIORITY`` bits (non-zero: recompressed with a secondary
    algorithm).  ``IDLE`` stays unused (the idle mark is in ``ac_time``) and
    ``DEDUP`` is reserved for deduplication.
    bit 21: ``PP_SLOT`` (zram's ZRAM_PP_SLOT): the slot was picked by a
    running writeback or recompression, which copied its data out of the
    lock.  Any write or discard replaces the whole info word and so drops
    it; the post-processing installs its result only where it is still set.
    bits 22-31: free.
``ac_time``: 4 bytes
    the last access (a read or a write), seconds since the device was
    created (zram's ``ac_time``), in bits 0-30, and the idle mark in bit 31
    (``AC_IDLE``).  zram keeps its idle mark in the flags word; here it
    lives in the stamp, so that marking a device idle leaves every object
    slot's info word below PAGE_SIZE and its reads and rewrites on the fast
    paths (a flag in ``info`` would send them to the per-slot path until
    rewritten).  An access stores the plain time, which clears the mark in
    the same store.  Only slots that hold something are stamped, so a read
    of never-written slots still costs no table memory; a discard zeroes
    the stamp, as zram's slot_free does.

States
------
A slot's state is a function of its info word:

* empty (info 0): never written, or discarded; reads as zeros.  A page of
  zeros that was written is same-filled, not empty.
* same-filled (``SAME``): every 8-byte word of the page equal; the word is
  in ``handle``, nothing in the pool.
* object (info = size, 1..huge_class_size-1, no flag): the compressed page
  in a pool object.  ``0 < info < PAGE_SIZE`` tests it in one comparison,
  which is how the device spots a run of ordinary objects in C
  (``min``/``max`` over a slice).
* huge (``HUGE | 4096``): the page, stored raw, because it compressed to
  ``huge_class_size`` bytes or more.

* written back (``WB``): no pool object (size 0); ``handle`` is the block
  of the backing store that holds the raw page.  Counted in orig_data_size
  (zram's pages_stored) and in ``wb_pages`` (bd_stat's bd_count), not in
  compr_data_size.
* recompressed: an object (or a former huge page) with ``COMP_PRIORITY``
  set, stored by that secondary algorithm; ``INCOMPRESSIBLE`` marks an
  object no secondary algorithm could shrink.  Both are flags on the
  object state: they move no counter.

Idle (the ``AC_IDLE`` bit of ``ac_time``) is orthogonal to all of these.
Deduplicated (``DEDUP``, the object shared) is still to come.  ``account``
counts a state from its info word alone, so each new state is one more
case there.

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
serve before any daemon starts.  A discard hands back the table pages whose
slots it emptied, all of them (``release``), so an fstrim of a used device
gives its table memory back as well as its pool memory.
"""

import mmap

from allocator import PAGE_SHIFT, PAGE_SIZE

__all__ = [
    "COMP_PRIORITY_MASK",
    "COMP_PRIORITY_SHIFT",
    "DEDUP",
    "HUGE",
    "HUGE_INFO",
    "AC_IDLE",
    "IDLE",
    "INCOMPRESSIBLE",
    "PP_SLOT",
    "SAME",
    "SIZE_MASK",
    "SLOT_BYTES",
    "WB",
    "SlotTable",
    "SlotTableTooLargeError",
    "check_reservable",
    "state_of",
    "table_bytes",
]

#: Bytes of address space a slot reserves: handle (8), info (4) and the
#: last-access stamp (4), the size of kernel zram's ``zram_table_entry``.
SLOT_BYTES = 16

# The info word (see Layout above).  13 bits hold sizes up to 4096.
SIZE_BITS = 13
SIZE_MASK = (1 << SIZE_BITS) - 1
SAME = 1 << 13
HUGE = 1 << 14
IDLE = 1 << 15  # unused: the idle mark is AC_IDLE, in ac_time
WB = 1 << 16  # written back: handle is the backing store's block
INCOMPRESSIBLE = 1 << 17  # no secondary algorithm could shrink it
DEDUP = 1 << 18  # reserved: shares its object with another slot
COMP_PRIORITY_SHIFT = 19  # 2 bits, 0 = primary algorithm
COMP_PRIORITY_MASK = 3 << COMP_PRIORITY_SHIFT
PP_SLOT = 1 << 21  # picked by a running writeback or recompression

#: The idle mark, bit 31 of a slot's ac_time (bits 0-30: seconds, 68 years).
AC_IDLE = 1 << 31

#: A huge slot's info: the raw page, size 4096.
HUGE_INFO = HUGE | PAGE_SIZE

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
        f"size {_human(nr_slots << PAGE_SHIFT, exact=True)} is more than this machine can "
        f"serve: its slot table needs {_human(table_bytes(nr_slots))} of address space "
        f"({SLOT_BYTES} bytes per 4 KiB page) and the kernel refused it ({reason}); the "
        f"largest size that fits now is {_human(low << PAGE_SHIFT)}"
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


def state_of(info):
    """The name of the state an info word is in: "empty", "same", "object",
    "huge" or "wb" (for tests and tools; the hot paths test bits)."""
    if not info:
        return "empty"
    if info & SAME:
        return "same"
    if info & WB:
        return "wb"
    if info & HUGE:
        return "huge"
    return "object"


def _tally(infos):
    """(stored, same, huge, compressed bytes, written back) of slots with
    these info words."""
    stored = same = huge = compr = wb = 0
    for info in infos:
        if info:
            stored += 1
            compr += info & SIZE_MASK
            if info & SAME:
                same += 1
            elif info & HUGE:
                huge += 1
            elif info & WB:
                wb += 1
    return stored, same, huge, compr, wb


class SlotTable:
    """The slots of one device: ``handle`` (memoryview 'Q'), ``info`` and
    ``ac_time`` (memoryviews 'I'), indexed by slot; ``info_bytes`` is
    ``info`` as bytes; and the counters of their states, kept by ``account``.

    Not thread safe on its own: the device guards it with its lock.
    """

    __slots__ = (
        "nr_slots",
        "handle",
        "info",
        "info_bytes",
        "ac_time",
        "_map",
        "_arrays",
        "_views",
        "pages_stored",
        "compr_data_size",
        "same_pages",
        "huge_pages",
        "huge_pages_since",
        "wb_pages",
    )

    def __init__(self, nr_slots):
        handle_at, info_at, ac_time_at, length = _layout(nr_slots)
        try:
            self._map = _reserve(length)
        except (OSError, OverflowError) as exc:
            raise _too_large(nr_slots, exc) from None
        self.nr_slots = nr_slots
        whole = memoryview(self._map)
        self.handle = whole[handle_at : handle_at + 8 * nr_slots].cast("Q")
        self.info = whole[info_at : info_at + 4 * nr_slots].cast("I")
        self.info_bytes = self.info.cast("B")
        self.ac_time = whole[ac_time_at : ac_time_at + 4 * nr_slots].cast("I")
        # (byte offset in the mapping, bytes per slot) of each array release() frees.
        self._arrays = ((handle_at, 8), (info_at, 4), (ac_time_at, 4))
        self._views = (self.info_bytes, self.info, self.handle, self.ac_time, whole)
        # mm_stat's columns that follow from the slots' states.
        self.pages_stored = 0  # slots not empty: orig_data_size / 4096
        self.compr_data_size = 0  # bytes in pool objects (a huge page: 4096)
        self.same_pages = 0
        self.huge_pages = 0
        self.huge_pages_since = 0  # slots that became huge, ever (never falls)
        self.wb_pages = 0  # slots written back (bd_stat's bd_count)

    def account(self, old, new):
        """Count a change of state: slots whose info words were ``old`` now
        hold ``new`` (sequences of one length, in any order).  The one place
        the counters move, called once per change, for one slot or a run.

        When no word on either side has a flag (each slot empty or an
        ordinary object: every word below PAGE_SIZE, a power of two, so
        below it or-ed together) only two counters move, by scalar
        arithmetic for one slot (a 4 KiB write) and by sums run in C for a
        run (a 1 MiB write).
        """
        if len(new) == 1:
            was = old[0]
            now = new[0]
            if was | now < PAGE_SIZE:
                self.pages_stored += (not was) - (not now)
                self.compr_data_size += now - was
                return
        elif max(old) | max(new) < PAGE_SIZE:
            self.pages_stored += old.count(0) - new.count(0)
            self.compr_data_size += sum(new) - sum(old)
            return
        was, now = _tally(old), _tally(new)
        self.pages_stored += now[0] - was[0]
        self.same_pages += now[1] - was[1]
        self.huge_pages += now[2] - was[2]
        self.huge_pages_since += now[2]
        self.compr_data_size += now[3] - was[3]
        self.wb_pages += now[4] - was[4]

    def release(self, first, end):
        """Give the kernel back the table pages that hold only slots of
        [first, end), which must all be empty (info, handle, ac_time 0): they read
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
