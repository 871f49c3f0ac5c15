"""A full consistency check of a pool's state, for the tests.

Data flow: nothing on the I/O path calls it.  The tests call ``check_pool``
after every step of the property test and after every rejected bad input;
it walks every table (O(objects)), so it is for tests and debugging only.

Why a base class of Pool, not a function given a pool: checking is reading
every field of the pool and comparing them, so an interface in between
would only restate every table.  It is Pool's own method, kept out of
``_pool.py`` because nothing on the I/O path needs it, and this module
imports only the layout constants (``_pool`` imports it, never the
reverse).  The fields it reads are described in ``Pool.__init__``.
"""

from __future__ import annotations

from mypy_extensions import trait

from ._errors import PoolCorruptError
from ._fields import PoolFields
from ._layout import (
    FULL,
    NR_GROUPS,
    OBJ_HEADER_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    READY_MAX,
    SIZE_BITS,
    SIZE_MASK,
)


def _fail(msg: str) -> None:
    raise PoolCorruptError(msg)


def check_pool(pool) -> None:
    """Raise PoolCorruptError unless every table of ``pool`` agrees with the others."""
    pool._check_consistency()


@trait
class ConsistencyCheck(PoolFields):
    """Pool's self-check.  Pool is the only subclass."""

    __slots__ = ()

    def _check_consistency(self) -> None:
        with self._lock:
            self._check_locked()

    def _check_locked(self) -> None:
        nclasses = len(self._class_size)
        huge = self._huge_class
        shift = self._zs_shift
        mv32 = self._mv32
        nz = self._zs_end
        freeids = set()
        z = self._zs_freed
        while z:
            if z in freeids or not 0 < z < nz:
                _fail(f"zspage free-id list loops or reaches id {z}")
            freeids.add(z)
            z = self._zs_next[z]
        ready = {}
        for ppz, ids in enumerate(self._zs_ready):
            for z in ids:
                if z in ready or z in freeids or not 0 < z < nz:
                    _fail(f"ready zspage {z} is also free, ready twice, or no id")
                ready[z] = ppz
        if sum(ready.values()) != self._ready_pages:
            _fail(f"ready_pages {self._ready_pages}, ready zspages have {sum(ready.values())}")
        # Being faulted in (io_uring): no class's, not ready yet.
        pending = self._populator.flying()
        for z in pending:
            if z in ready or z in freeids or not 0 < z < nz:
                _fail(f"zspage {z} being populated is also free, ready, or no id")
        if len(ready) + len(pending) > READY_MAX or (
            self._want is not None and len(self._want) > READY_MAX
        ):
            _fail(
                f"{len(ready)} ready zspages, {len(pending)} being populated and "
                f"{len(self._want or ())} wanted, "
                f"more than READY_MAX ({READY_MAX})"
            )
        live = [z for z in range(1, nz) if z not in freeids and z not in ready and z not in pending]

        # Fullness lists: links, groups, masks.
        listed = {}
        for c in range(huge):
            for g in range(1, FULL):
                z = self._group_heads[c * NR_GROUPS + g]
                if bool(z) != bool(self._group_mask[c] >> g & 1):
                    _fail(f"class {c} group {g}: mask bit disagrees with list head")
                prev = 0
                while z:
                    if z in listed:
                        _fail(f"zspage {z} is in two lists, or a list loops")
                    listed[z] = (c, g)
                    if self._zs_prev[z] != prev:
                        _fail(f"zspage {z}: prev link {self._zs_prev[z]} != {prev}")
                    prev, z = z, self._zs_next[z]
            if self._group_mask[c] & ~((1 << FULL) - 2):
                _fail(f"class {c}: mask has bits outside the partial groups")

        # zspages: group, slots, free list, headers.
        handle_at = {}
        zspages = [0] * nclasses
        for z in live:
            c = self._zs_class[z]
            if not 0 <= c < huge:
                _fail(f"zspage {z}: bad class {c}")
            zspages[c] += 1
            size, objs = self._class_size[c], self._objs_per_zspage[c]
            inuse = self._zs_inuse[z]
            if not 1 <= inuse <= objs:
                _fail(f"zspage {z}: inuse {inuse} outside 1..{objs}")
            g = self._zs_group[z]
            if g != self._group_of[c][inuse]:
                _fail(f"zspage {z}: group {g} but inuse {inuse}/{objs}")
            if (g == FULL) != (z not in listed) or (g != FULL and listed[z] != (c, g)):
                _fail(f"zspage {z}: group {g} but listed as {listed.get(z)}")
            bump = self._zs_bump[z]
            if bump % size or bump > objs * size:
                _fail(f"zspage {z}: bump offset {bump}")
            base = z << shift
            used = 0
            for off in range(0, bump, size):
                word = mv32[(base + off) >> 2]
                if word & 1:
                    used += 1
                    handle_at[base + off] = word >> 1
            if used != inuse:
                _fail(f"zspage {z}: {used} slots tagged in use, inuse says {inuse}")
            seen = set()
            link = self._zs_freeobj[z]
            while link:
                off = link - 1
                if off in seen or off % size or off >= bump:
                    _fail(f"zspage {z}: bad free-list link to offset {off}")
                seen.add(off)
                word = mv32[(base + off) >> 2]
                if word & 1:
                    _fail(f"zspage {z}: slot {off} is on the free list but tagged in use")
                link = word >> 1
            if len(seen) != bump // size - inuse:
                _fail(
                    f"zspage {z}: free list has {len(seen)} slots, expected {bump // size - inuse}"
                )
        for c in range(huge):
            if zspages[c] != self._class_zspages[c]:
                _fail(f"class {c}: {zspages[c]} zspages, counter says {self._class_zspages[c]}")

        # Handles: live entries point at their slots, free entries chain.
        handles = self._handles
        nlive = 0
        nbytes = 0
        nhuge = 0
        huge_pages = set()
        nh = self._handles_end
        for h in range(1, nh):
            entry = handles[h]
            size = entry & SIZE_MASK
            if not size:
                continue
            nlive += 1
            nbytes += size
            addr = entry >> SIZE_BITS
            if size >= self.huge_class_size:
                nhuge += 1
                page = (addr - self._huge_base) >> PAGE_SHIFT
                if (
                    addr < self._huge_base
                    or (addr - self._huge_base) & (PAGE_SIZE - 1)
                    or page in huge_pages
                ):
                    _fail(f"huge handle {h}: bad address {addr:#x}")
                huge_pages.add(page)
                continue
            hdr = addr - OBJ_HEADER_SIZE
            if handle_at.pop(hdr, None) != h:
                _fail(f"handle {h}: no slot at {hdr:#x} names it")
            c = self._zs_class[hdr >> shift]
            if self._class_of[(size + OBJ_HEADER_SIZE + 15) >> 4] != c:
                _fail(f"handle {h}: size {size} does not belong in class {c}")
        if handle_at:
            _fail(f"slots name handles that do not point back: {sorted(handle_at.values())[:5]}")
        if nhuge != self._class_zspages[huge]:
            _fail(f"{nhuge} huge objects, counter says {self._class_zspages[huge]}")
        if huge_pages & set(self._huge_free) or any(s >= self._huge_next for s in huge_pages):
            _fail("a huge page is both used and free")
        nfree = 0
        h = self._free_handle
        while h:
            nfree += 1
            if nfree > nh or not 0 < h < nh or handles[h] & SIZE_MASK:
                _fail(f"handle free list reaches live or looping handle {h}")
            h = handles[h] >> SIZE_BITS
        if nfree + nlive != nh - 1:
            _fail(f"{nfree} free + {nlive} live handles != {nh - 1}")

        # Counters.
        pages = sum(self._class_zspages[c] * self._pages_per_zspage[c] for c in range(huge)) + nhuge
        if pages != self._pages_used:
            _fail(f"pages_used {self._pages_used}, tables say {pages}")
        if nbytes != self._bytes_used:
            _fail(f"bytes_used {self._bytes_used}, live objects hold {nbytes}")
