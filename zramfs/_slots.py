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
No Python object exists per slot.  The table lives in a memfd (so that it
outlives the process: a restarted daemon takes it over, see "Surviving the
process" below), cut into arrays (struct of arrays, so that a run of slots
is one slice of each), viewed through ``memoryview`` casts of one mapping.
A memfd costs memory only for pages written, but a *read* of a page never
written allocates one too (shmem has no zero page to map), and the device
reads the table where nothing was ever written (reads of empty blocks,
scans for idle slots).  So the mapping is first reserved whole as
anonymous memory, ``MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE``, where an
unwritten page reads as the shared zero page, and the memfd is mapped
over it (``MAP_SHARED | MAP_FIXED``) a chunk at a time (``CHUNK_SLOTS``
slots: 64 MiB of device, 256 KiB of table) when the device first writes a
slot of that chunk (``map_chunks``, called by the one commit path before
it stores).  Reserving costs address space, not memory.  The daemon runs
under ``mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)``, which locks
pages as they fault in and leaves the untouched rest alone, so an empty 1
TiB device (268 million slots, a 4 GiB table) costs a few pages, where
kernel zram allocates its whole table up front.  ``NORESERVE`` keeps the
reservation out of the commit charge under the default overcommit policy;
under ``vm.overcommit_memory=2`` the kernel charges it, and may refuse it.
``check_reservable`` makes the same reservation and drops it, so the CLI
refuses a size the machine cannot serve before any daemon starts.  A
discard hands back the table pages whose slots it emptied, all of them
(``release``: the memfd's pages are punched, and a chunk emptied whole
goes back to the anonymous zero page), so an fstrim of a used device gives
its table memory back as well as its pool memory.

Surviving the process
---------------------
The memfd starts with a header page (magic, format version, nr_slots, and
``huge_pages_since``, the one counter no scan can give back); the other
counters are recounted from the info words when a device is taken over.
A slot is two words, ``handle`` and ``info``, and no store writes both at
once, so ``install`` orders its stores such that a process killed between
any two leaves a slot that ``settle`` (run on every slot by
``BlockDevice.resume``) turns into exactly the old or exactly the new
state:

* to empty: info first (the slot is empty from there; the old handle
  left in ``handle`` means nothing), then handle.
* from empty: handle first (meaningless while info is 0), then info.
* between two states of one kind (object to object with the same flags,
  huge to huge, same-filled to same-filled): handle first, then info.  A
  slot with the new handle and the old info holds the new object, and its
  size, all the old info can have wrong, is the pool's (``settle`` takes
  it from there).
* any other change (to or from same-filled, written back, huge, a new
  priority): the 31-bit word that does not fit the slot is first parked in
  the slot's ``ac_time`` (a stamp, not data), then info is written with
  ``TRANSIT`` set, then the handle, then the final info, then the stamp is
  put back.  When the new handle word fits 31 bits (a pool handle, a
  backing block), it is the one parked and ``settle`` completes the change
  (roll forward: the new object or block exists before the slot names
  it).  When it does not (a same-filled page's word), the old handle word
  is parked, the transit info is the old info plus ``TO_SAME``, and
  ``settle`` undoes the change while the handle still equals the parked
  word, or completes it once the handle was written.

A store of one aligned word is never torn by the death of a process (a
signal lands between instructions).  A slice assignment is a memmove,
which copies in vector-sized, aligned pieces from first to last, so a batch
cut short is new slots followed by old ones, each settled alone.  (That
assumes the C library's memmove: a ``rep movsb`` interrupted inside an
8-byte word could, in principle, leave that one word half written; glibc
uses it only above 2 KiB; ``resume`` would most likely find such a word
naming no object, or one another slot names, and raise StateCorruptError.)
"""

import ctypes
import errno
import mmap
import os
from array import array

from allocator import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, PAGE_SHIFT, PAGE_SIZE
from allocator._arena import _fallocate

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
    "TO_SAME",
    "TRANSIT",
    "SLOT_BYTES",
    "WB",
    "SlotTable",
    "SlotTableFormatError",
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
# A change of state in progress (see "Surviving the process"); never seen
# outside install() in a running process.
TRANSIT = 1 << 22
TO_SAME = 1 << 23  # with TRANSIT: the new state is same-filled; the rest is the old info
_STASH_MAX = (1 << 31) - 1  # what ac_time can park

#: The idle mark, bit 31 of a slot's ac_time (bits 0-30: seconds, 68 years).
AC_IDLE = 1 << 31

#: A huge slot's info: the raw page, size 4096.
HUGE_INFO = HUGE | PAGE_SIZE

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
_MAP_FIXED = 0x10  # <asm-generic/mman-common.h>
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

#: Slots per chunk of the table mapped from the memfd at once: 64 MiB of
#: device, 128 KiB of handles and 64 KiB each of info and stamps.  A chunk is
#: a mapping of its own until its neighbours are mapped too (adjacent ones
#: merge), so a sparsely written 1 TiB device has at most 3 * 16384 of them,
#: under vm.max_map_count's 65530; what a read of a never-written slot of a
#: mapped chunk allocates is at most the chunk (0.4 % of 64 MiB).
CHUNK_SHIFT = 14
CHUNK_SLOTS = 1 << CHUNK_SHIFT

_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_mmap.restype = ctypes.c_void_p
_MAP_FAILED = ctypes.c_void_p(-1).value

#: The slot memfd's header page: 64-bit words.
_MAGIC = int.from_bytes(b"zramslot", "little")
_VERSION = 1
_H_MAGIC = 0
_H_VERSION = 1
_H_NR_SLOTS = 2
_H_HUGE_SINCE = 3

#: Fault injection for the crash tests (see allocator._pool._fault): None in
#: every real run.
_fault = None


class SlotTableFormatError(ValueError):
    """Raised when a memfd given as a slot table is not one, is of another
    format version, or is for another number of slots."""


class SlotTableTooLargeError(ValueError):
    """Raised when the kernel refuses to reserve the address space of a slot
    table that big (the process's address space, ``ulimit -v``, or the
    overcommit policy).  The message says how large a device would fit."""


def _round_page(n):
    return (n + PAGE_SIZE - 1) & -PAGE_SIZE


def _layout(nr_slots):
    """Byte offsets of the three arrays in the mapping (after the header
    page), and its length.  Each array starts on a page, so each can be
    given back page by page."""
    handle = PAGE_SIZE
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
    ``fd`` is the memfd; given one, the table in it is taken over (and
    owned from then on: ``close`` closes it).

    Not thread safe on its own: the device guards it with its lock.
    """

    __slots__ = (
        "nr_slots",
        "fd",
        "handle",
        "info",
        "info_bytes",
        "ac_time",
        "present",
        "_map",
        "_base",
        "_arrays",
        "_header",
        "_views",
        "pages_stored",
        "compr_data_size",
        "same_pages",
        "huge_pages",
        "wb_pages",
    )

    def __init__(self, nr_slots, fd=None):
        handle_at, info_at, ac_time_at, length = _layout(nr_slots)
        try:
            self._map = _reserve(length)
        except (OSError, OverflowError) as exc:
            raise _too_large(nr_slots, exc) from None
        # The reservation's address, for the memfd's chunks mapped over it.
        anchor = ctypes.c_char.from_buffer(self._map)
        self._base = ctypes.addressof(anchor)
        del anchor
        try:
            if fd is None:
                fd = os.memfd_create("zramfs-slots", os.MFD_CLOEXEC)
                try:
                    os.ftruncate(fd, length)
                    os.pwrite(fd, _header_bytes(nr_slots), 0)
                except BaseException:
                    os.close(fd)
                    raise
            else:
                _check_header(fd, nr_slots, length)
        except BaseException:
            self._map.close()
            raise
        self.fd = fd
        self.nr_slots = nr_slots
        # (byte offset in the mapping, bytes per slot) of each array.
        self._arrays = ((handle_at, 8), (info_at, 4), (ac_time_at, 4))
        self.present = bytearray((nr_slots + CHUNK_SLOTS - 1) >> CHUNK_SHIFT)
        self._overlay(0, PAGE_SIZE)  # the header page
        whole = memoryview(self._map)
        self._header = whole[:PAGE_SIZE].cast("Q")
        self.handle = whole[handle_at : handle_at + 8 * nr_slots].cast("Q")
        self.info = whole[info_at : info_at + 4 * nr_slots].cast("I")
        self.info_bytes = self.info.cast("B")
        self.ac_time = whole[ac_time_at : ac_time_at + 4 * nr_slots].cast("I")
        self._views = (
            self.info_bytes,
            self.info,
            self.handle,
            self.ac_time,
            self._header,
            whole,
        )
        # mm_stat's columns that follow from the slots' states (recount()
        # makes them again from a table taken over).
        self.pages_stored = 0  # slots not empty: orig_data_size / 4096
        self.compr_data_size = 0  # bytes in pool objects (a huge page: 4096)
        self.same_pages = 0
        self.huge_pages = 0
        self.wb_pages = 0  # slots written back (bd_stat's bd_count)
        if length > PAGE_SIZE:
            self._map_present()

    @property
    def huge_pages_since(self):
        """Slots that became huge, ever (never falls; in the memfd's header)."""
        return self._header[_H_HUGE_SINCE]

    # --- the memfd's chunks over the reservation ---------------------------------

    def _overlay(self, start, length):
        """Map bytes [start, start + length) of the memfd over the reservation."""
        addr = _mmap(
            self._base + start, length, _PROT_RW, mmap.MAP_SHARED | _MAP_FIXED, self.fd, start
        )
        if addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mapping the slot table's memfd: {os.strerror(err)}")

    def _unoverlay(self, start, length):
        """Put anonymous zero pages back over [start, start + length)."""
        addr = _mmap(self._base + start, length, _PROT_RW, _MAP_FLAGS | _MAP_FIXED, -1, 0)
        if addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"unmapping the slot table's memfd: {os.strerror(err)}")

    def _chunk_ranges(self, chunk):
        """(start, length) in the mapping of each array's part of ``chunk``."""
        first = chunk << CHUNK_SHIFT
        end = min(first + CHUNK_SLOTS, self.nr_slots)
        for at, width in self._arrays:
            yield at + width * first, _round_page(width * end) - width * first

    def map_chunks(self, first, end):
        """Make sure slots [first, end) are the memfd's before a store to them
        (the commit path calls this first when ``present`` says a chunk of
        the range is not)."""
        present = self.present
        for chunk in range(first >> CHUNK_SHIFT, ((end - 1) >> CHUNK_SHIFT) + 1):
            if not present[chunk]:
                for start, length in self._chunk_ranges(chunk):
                    self._overlay(start, length)
                present[chunk] = 1

    def _map_present(self):
        """Map every chunk that holds data in the memfd (a table taken over):
        its data extents, found with SEEK_DATA / SEEK_HOLE."""
        fd = self.fd
        pos = PAGE_SIZE
        chunks = set()
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            for at, width in self._arrays:
                end_at = at + _round_page(width * self.nr_slots)
                lo, hi = max(start, at), min(stop, end_at)
                if lo < hi:
                    chunks.update(
                        range(
                            ((lo - at) // width) >> CHUNK_SHIFT,
                            (((hi - at - 1) // width) >> CHUNK_SHIFT) + 1,
                        )
                    )
            pos = stop
        for chunk in sorted(chunks):
            if chunk < len(self.present):
                self.map_chunks(chunk << CHUNK_SHIFT, (chunk << CHUNK_SHIFT) + 1)

    # --- changes of state -----------------------------------------------------------

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
        if now[2]:
            self._header[_H_HUGE_SINCE] += now[2]
        self.compr_data_size += now[3] - was[3]
        self.wb_pages += now[4] - was[4]

    def install(self, index, new_info, new_handle):
        """Store slot ``index``'s new info word and handle word, in the order
        that ``settle`` can finish or undo after a kill at any point (see
        "Surviving the process").  The device's per-slot path; a run of
        ordinary objects is stored as slices instead (handles, then infos)."""
        info = self.info
        handle = self.handle
        old = info[index]
        if not new_info:
            info[index] = 0
            if _fault is not None:
                _fault("slot:emptied")
            handle[index] = 0
            return
        if (
            not old
            or (old & new_info & SAME)
            or (
                not (old | new_info) & (SAME | WB)
                and old & ~(SIZE_MASK | PP_SLOT) == new_info & ~SIZE_MASK
            )
        ):
            # From empty, or within one kind: the handle, then the info.
            handle[index] = new_handle
            if _fault is not None:
                _fault("slot:handle")
            info[index] = new_info
            return
        ac_time = self.ac_time
        stamp = ac_time[index]
        if new_handle <= _STASH_MAX:
            # Roll forward: park the new handle word.
            ac_time[index] = new_handle
            info[index] = new_info | TRANSIT
        else:
            # To same-filled: park the old handle word (a pool handle or a
            # backing block, both below 2**31).
            ac_time[index] = handle[index]
            info[index] = (old & ~PP_SLOT) | TRANSIT | TO_SAME
        if _fault is not None:
            _fault("slot:transit")
        handle[index] = new_handle
        if _fault is not None:
            _fault("slot:handle")
        info[index] = new_info
        ac_time[index] = stamp

    def settle(self, index):
        """After a takeover: finish or undo a change slot ``index`` was in
        the middle of (TRANSIT), drop PP_SLOT (its post-processing died
        with the process), and zero the handle of an empty slot.  Returns
        the slot's (info, handle) now.  An object's size is not settled
        here: the pool knows it (``BlockDevice.resume``)."""
        info = self.info[index]
        handle = self.handle[index]
        if info & TRANSIT:
            parked = self.ac_time[index]
            if not info & TO_SAME:
                info, handle = info & ~TRANSIT, parked
            elif handle == parked:
                info = info & ~(TRANSIT | TO_SAME)
            else:
                info = SAME
            self.handle[index] = handle
            self.ac_time[index] = 0
        info &= ~PP_SLOT
        if not info and handle:
            self.handle[index] = handle = 0
        self.info[index] = info
        return info, handle

    def recount(self):
        """Count the states of every slot again (after a takeover): the
        counters ``account`` keeps, from the info words."""
        stored = same = huge = compr = wb = 0
        info_bytes = self.info_bytes
        for start in range(0, self.nr_slots, 4096):
            stop = min(start + 4096, self.nr_slots)
            if not info_bytes[start * 4 : stop * 4].tobytes().strip(b"\0"):
                continue
            counts = _tally(self.info[start:stop])
            stored += counts[0]
            same += counts[1]
            huge += counts[2]
            compr += counts[3]
            wb += counts[4]
        self.pages_stored = stored
        self.same_pages = same
        self.huge_pages = huge
        self.compr_data_size = compr
        self.wb_pages = wb

    def release(self, first, end):
        """Give the kernel back the table pages that hold only slots of
        [first, end), which must all be empty (info, handle, ac_time 0):
        their memfd pages are punched, and a chunk emptied whole gets the
        anonymous zero pages back, so a later read of it allocates
        nothing.  Only RSS changes."""
        whole_first = (first + CHUNK_SLOTS - 1) >> CHUNK_SHIFT
        whole_end = end >> CHUNK_SHIFT if end < self.nr_slots else len(self.present)
        for at, width in self._arrays:
            start = at + _round_page(width * first)
            stop = (
                at + ((width * end) & -PAGE_SIZE)
                if end < self.nr_slots
                else at + _round_page(width * end)
            )
            if start < stop:
                _fallocate(self.fd, _PUNCH, start, stop - start)
        for chunk in range(whole_first, whole_end):
            if self.present[chunk]:
                for start, length in self._chunk_ranges(chunk):
                    self._unoverlay(start, length)
                self.present[chunk] = 0

    def close(self):
        """Unmap the table and close its memfd.  The device is unusable
        afterwards; the memfd's pages live on in any other holder of it."""
        if self._map is None:
            return
        # The counter stays readable (stats of a closed device).
        header = array("Q", self._header)
        for view in self._views:
            view.release()
        self._header = header
        self._map.close()
        self._map = None
        os.close(self.fd)


def _header_bytes(nr_slots):
    words = [0] * 4
    words[_H_MAGIC] = _MAGIC
    words[_H_VERSION] = _VERSION
    words[_H_NR_SLOTS] = nr_slots
    return b"".join(w.to_bytes(8, "little") for w in words)


def _check_header(fd, nr_slots, length):
    head = os.pread(fd, 24, 0)
    words = [int.from_bytes(head[i : i + 8], "little") for i in range(0, len(head) - 7, 8)]
    if len(words) < 3 or words[_H_MAGIC] != _MAGIC:
        raise SlotTableFormatError(f"memfd {fd} holds no zramfs slot table")
    if words[_H_VERSION] != _VERSION:
        raise SlotTableFormatError(
            f"the slot table is format {words[_H_VERSION]}, this zramfs reads format {_VERSION}"
        )
    if words[_H_NR_SLOTS] != nr_slots or os.fstat(fd).st_size != length:
        raise SlotTableFormatError(
            f"the slot table has {words[_H_NR_SLOTS]} slots, the device {nr_slots}"
        )
