"""Rebuilding a pool taken over from memfds (``Pool.attach``).

Data flow: nothing on the I/O path calls this.  A process that takes over a
pool's memfds (a restarted daemon, through ``Pool.attach``) runs
``_rebuild_locked`` once, before anything else touches the pool; the block
device then frees the objects no slot names (``free_unreferenced``).

What survives a process: the arena (object bytes) and the tables memfd
(header, handle table, zspage tables).  What does not: the Python lists
(fullness list heads and masks, zspage counts per class), the free handle
and free zspage id list heads, the huge page free list, the ready zspages
and the counters.  And a process killed in the middle of an update leaves
the memfds half updated.  So the rebuild trusts exactly one thing, the
handle table: an entry with a size is a live object, at the address it
names.  Everything else is derived from it, and that is enough because
every update publishes or unpublishes an object with one aligned 8-byte
store to its handle entry, and does everything else around that store in
an order that a rebuild from the entries alone undoes or completes:

* malloc: the header's ``handles_end`` / ``zs_end`` / ``huge_next`` grow
  first, then the zspage's slot bookkeeping, then the entry (the object is
  live from here), then the slot's header word.  The object's bytes are
  written after malloc returns; until its caller has recorded the handle
  somewhere, the object is an orphan, which the caller frees after the
  rebuild (``free_unreferenced``).
* free: the entry becomes a free link first (the object is gone from
  here), then the slot's header, the zspage's count and lists, and last
  the zspage's pages (punched).
* replace: a new slot is taken and written (header and bytes), then the
  entry is repointed (the switch), then the old slot is freed.  Never in
  place: a copy cut short must leave the old bytes whole.
* compaction: an object is copied (header and bytes) into a slot of the
  destination, the entry is repointed, then the source slot is freed; the
  source zspage is freed when it empties, its pages counted in
  ``pages_compacted`` just before.
* populate_ahead: a ready zspage holds no object, so a rebuild frees it.
* emptying the pool: the tables are punched first, the header's ends
  reset after.

The rebuild: every live entry's zspage gets its count and the header word
of its slot rewritten (a crash may have come between the entry and the
header); every other slot below the zspage's highest live one becomes a
free slot; zspages without a live object, ready ones included, are freed
and their range punched, as are unused huge pages; the free handle list is
threaded through every entry without a size.  Contradictions that no crash
leaves (two entries on one slot, an address outside the arena, a size that
does not belong in its zspage's class) raise PoolDamagedError.  Cost: one
pass over the handle table and one over the slots of live zspages.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from mypy_extensions import trait

from ._errors import PoolDamagedError
from ._fields import PoolFields
from ._layout import (
    FULL,
    M_HANDLES_END,
    M_HUGE_NEXT,
    M_ZS_END,
    OBJ_HEADER_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    SIZE_BITS,
    SIZE_MASK,
)


def _runs(flags: bytearray, end: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """(first, stop) of each run of zero bytes of ``flags`` in [start, end)."""
    pos = start
    while pos < end:
        first = flags.find(0, pos, end)
        if first < 0:
            return
        stop = flags.find(1, first, end)
        if stop < 0:
            stop = end
        yield first, stop
        pos = stop


@trait
class Rebuild(PoolFields):
    """Pool's rebuild after attach.  Pool is the only subclass."""

    __slots__ = ()

    def _rebuild_locked(self) -> None:
        meta = self._meta
        nh, nz, nhuge = meta[M_HANDLES_END], meta[M_ZS_END], meta[M_HUGE_NEXT]
        if not (
            1 <= nh <= self._max_handle + 1
            and 1 <= nz <= self._max_zspages
            and 0 <= nhuge <= self._huge_slots
        ):
            raise PoolDamagedError(
                f"pool header out of range: handles_end {nh}, zs_end {nz}, huge_next {nhuge}"
            )
        handles = self._handles
        mv32 = self._mv32
        shift, zmask = self._zs_shift, self._zs_mask
        huge_base, huge_size = self._huge_base, self.huge_class_size
        zs_class, zs_inuse, zs_bump = self._zs_class, self._zs_inuse, self._zs_bump
        class_of, class_size, objs = self._class_of, self._class_size, self._objs_per_zspage
        huge_class = self._huge_class
        if nz > 1:
            zs_inuse[1:nz] = array("H", bytes(2 * (nz - 1)))
            zs_bump[1:nz] = array("I", bytes(4 * (nz - 1)))
        huge_used = bytearray(nhuge)
        free_head = 0
        nbytes = 0
        nhuge_live = 0
        # Pass 1: the handle table.  Live entries place their objects; the
        # others are threaded into the free handle list.
        for h, entry in enumerate(handles[1:nh], 1):
            size = entry & SIZE_MASK
            if not size:
                handles[h] = free_head << SIZE_BITS
                free_head = h
                continue
            addr = entry >> SIZE_BITS
            nbytes += size
            if size >= huge_size:
                off = addr - huge_base
                slot = off >> PAGE_SHIFT
                if off < 0 or off & (PAGE_SIZE - 1) or slot >= nhuge or huge_used[slot]:
                    raise PoolDamagedError(f"huge handle {h}: bad or shared address {addr:#x}")
                huge_used[slot] = 1
                nhuge_live += 1
                continue
            hdr = addr - OBJ_HEADER_SIZE
            z = hdr >> shift
            off = hdr & zmask
            if not 0 < z < nz:
                raise PoolDamagedError(f"handle {h}: address {addr:#x} outside the zspages used")
            c = zs_class[z]
            if c >= huge_class or class_of[(size + OBJ_HEADER_SIZE + 15) >> 4] != c:
                raise PoolDamagedError(f"handle {h}: size {size} does not belong in class {c}")
            csize = class_size[c]
            if off % csize or off >= objs[c] * csize:
                raise PoolDamagedError(f"handle {h}: offset {off} is no slot of class {c}")
            mv32[hdr >> 2] = (h << 1) | 1
            zs_inuse[z] += 1
            if off + csize > zs_bump[z]:
                zs_bump[z] = off + csize

        # Pass 2: the zspages.  A slot is live when its header names a
        # handle whose entry points back at it; the rest become free slots.
        zs_freeobj, zs_next, zs_prev, zs_group = (
            self._zs_freeobj,
            self._zs_next,
            self._zs_prev,
            self._zs_group,
        )
        pages = 0
        live_ids = bytearray(nz)  # 1: holds a live object (id 0 is no zspage)
        live_ids[0] = 1
        for z in range(1, nz):
            inuse = zs_inuse[z]
            if not inuse:
                continue
            live_ids[z] = 1
            c = zs_class[z]
            csize = class_size[c]
            base = z << shift
            link = 0
            live = 0
            for off in range(zs_bump[z] - csize, -1, -csize):
                at = base | off
                word = mv32[at >> 2]
                if word & 1 and word >> 1 < nh:
                    entry = handles[word >> 1]
                    if entry & SIZE_MASK and entry >> SIZE_BITS == at + OBJ_HEADER_SIZE:
                        live += 1
                        continue
                mv32[at >> 2] = link << 1
                link = off + 1
            if live != inuse:
                raise PoolDamagedError(f"zspage {z}: {inuse} handles point into it, {live} slots")
            zs_freeobj[z] = link
            zs_next[z] = zs_prev[z] = 0
            g = self._group_of[c][inuse]
            zs_group[z] = g
            if g != FULL:
                self._push(c, g, z)
            self._class_zspages[c] += 1
            pages += self._pages_per_zspage[c]
        # Ids without a live object: free, their ranges punched (a zspage
        # being freed, a ready one, or long gone: punching a hole is cheap).
        freed = 0
        arena = self._arena
        for first, stop in reversed(list(_runs(live_ids, nz))):
            for z in range(stop - 1, first - 1, -1):
                zs_next[z] = freed
                freed = z
            arena.release(first << shift, (stop - first) << shift)
        if (nz << shift) < huge_base:
            arena.release(nz << shift, huge_base - (nz << shift))
        # Huge pages: the unused ones below huge_next are free (and punched).
        free_huge = array("I")
        for first, stop in _runs(huge_used, nhuge):
            free_huge.extend(range(stop - 1, first - 1, -1))
            arena.release(huge_base + (first << PAGE_SHIFT), (stop - first) << PAGE_SHIFT)
        if nhuge < self._huge_slots:
            arena.release(
                huge_base + (nhuge << PAGE_SHIFT), (self._huge_slots - nhuge) << PAGE_SHIFT
            )
        self._class_zspages[huge_class] = nhuge_live
        # (setattr: these are Pool's slots, which this base class lacks.)
        for name, value in (
            ("_free_handle", free_head),
            ("_handles_end", nh),
            ("_bytes_used", nbytes),
            ("_zs_freed", freed),
            ("_zs_end", nz),
            ("_huge_free", free_huge),
            ("_huge_next", nhuge),
            ("_pages_used", pages + nhuge_live),
        ):
            setattr(self, name, value)
        if not self._pages_used:
            self._shrink_tables()

    def size_of(self, handle: int) -> int:
        """The size of the live object ``handle``, or 0 if it is not live
        (free, never used, or out of range)."""
        with self._lock:
            if not 0 < handle < self._handles_end:
                return 0
            return self._handles[handle] & SIZE_MASK

    def sizes_of(self, handles) -> list[int]:
        """``[size_of(h) for h in handles]`` under one lock round."""
        with self._lock:
            table = self._handles
            end = self._handles_end
            return [table[h] & SIZE_MASK if 0 < h < end else 0 for h in handles]

    def free_unreferenced(self, referenced) -> int:
        """Free every live object whose handle ``h`` has no true
        ``referenced[h]`` (a bytes-like; handles past its end count as
        unreferenced); return how many were freed.

        After ``attach`` the caller's own records say which objects it
        knows; the rest are orphans of a process killed between storing an
        object and recording it, or between recording a new one and
        freeing the old.
        """
        with self._lock:
            handles = self._handles
            known = len(referenced)
            freed = 0
            for h in range(1, self._handles_end):
                if handles[h] & SIZE_MASK and not (h < known and referenced[h]):
                    self._free_locked(h)
                    freed += 1
            return freed
