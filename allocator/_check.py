"""A full consistency check of a pool's state, for the tests.

Data flow: nothing on the I/O path calls it.  The tests call ``check_pool``
after every step of the property test and after every rejected bad input;
it walks every table (O(objects)), so it is for tests and debugging only.
"""

from __future__ import annotations

from ._pool import FULL, NR_GROUPS, READY_MAX, SIZE_BITS, SIZE_MASK, Pool
from ._size_class import OBJ_HEADER_SIZE, PAGE_SHIFT


class PoolCorruptError(AssertionError):
    """Raised when ``check_pool`` finds the pool's tables disagreeing."""


def _fail(msg: str) -> None:
    raise PoolCorruptError(msg)


def check_pool(pool: Pool) -> None:
    """Raise PoolCorruptError unless every table of ``pool`` agrees with the others."""
    with pool._lock:
        _check(pool)


def _check(pool: Pool) -> None:
    nclasses = len(pool._csize)
    huge = pool._huge
    shift = pool._zs_shift
    mv32 = pool._mv32
    nz = pool._zs_end
    freeids = set()
    z = pool._zs_freeid
    while z:
        if z in freeids or not 0 < z < nz:
            _fail(f"zspage free-id list loops or reaches id {z}")
        freeids.add(z)
        z = pool._zs_next[z]
    ready = {}
    for ppz, ids in enumerate(pool._zs_ready):
        for z in ids:
            if z in ready or z in freeids or not 0 < z < nz:
                _fail(f"ready zspage {z} is also free, ready twice, or no id")
            ready[z] = ppz
    if sum(ready.values()) != pool._ready_pages:
        _fail(f"ready_pages {pool._ready_pages}, ready zspages have {sum(ready.values())}")
    if len(ready) > READY_MAX or (pool._want is not None and len(pool._want) > READY_MAX):
        _fail(f"{len(ready)} ready zspages and {len(pool._want or ())} wanted, "
              f"more than READY_MAX ({READY_MAX})")
    live = [z for z in range(1, nz) if z not in freeids and z not in ready]

    # Fullness lists: links, groups, masks.
    listed = {}
    for c in range(huge):
        for g in range(1, FULL):
            z = pool._heads[c * NR_GROUPS + g]
            if bool(z) != bool(pool._cmask[c] >> g & 1):
                _fail(f"class {c} group {g}: mask bit disagrees with list head")
            prev = 0
            while z:
                if z in listed:
                    _fail(f"zspage {z} is in two lists, or a list loops")
                listed[z] = (c, g)
                if pool._zs_prev[z] != prev:
                    _fail(f"zspage {z}: prev link {pool._zs_prev[z]} != {prev}")
                prev, z = z, pool._zs_next[z]
        if pool._cmask[c] & ~((1 << FULL) - 2):
            _fail(f"class {c}: mask has bits outside the partial groups")

    # zspages: group, slots, free list, headers.
    handle_at = {}
    zspages = [0] * nclasses
    for z in live:
        c = pool._zs_class[z]
        if not 0 <= c < huge:
            _fail(f"zspage {z}: bad class {c}")
        zspages[c] += 1
        size, objs = pool._csize[c], pool._copz[c]
        inuse = pool._zs_inuse[z]
        if not 1 <= inuse <= objs:
            _fail(f"zspage {z}: inuse {inuse} outside 1..{objs}")
        g = pool._zs_group[z]
        if g != pool._cgroup[c][inuse]:
            _fail(f"zspage {z}: group {g} but inuse {inuse}/{objs}")
        if (g == FULL) != (z not in listed) or (g != FULL and listed[z] != (c, g)):
            _fail(f"zspage {z}: group {g} but listed as {listed.get(z)}")
        bump = pool._zs_bump[z]
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
        link = pool._zs_free[z]
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
            _fail(f"zspage {z}: free list has {len(seen)} slots, "
                  f"expected {bump // size - inuse}")
    for c in range(huge):
        if zspages[c] != pool._czspages[c]:
            _fail(f"class {c}: {zspages[c]} zspages, counter says {pool._czspages[c]}")

    # Handles: live entries point at their slots, free entries chain.
    handles = pool._handles
    nlive = 0
    nbytes = 0
    nhuge = 0
    huge_pages = set()
    nh = pool._handles_end
    for h in range(1, nh):
        entry = handles[h]
        size = entry & SIZE_MASK
        if not size:
            continue
        nlive += 1
        nbytes += size
        addr = entry >> SIZE_BITS
        if size >= pool.huge_class_size:
            nhuge += 1
            page = (addr - pool._huge_base) >> PAGE_SHIFT
            if addr < pool._huge_base or (addr - pool._huge_base) & 4095 or page in huge_pages:
                _fail(f"huge handle {h}: bad address {addr:#x}")
            huge_pages.add(page)
            continue
        hdr = addr - OBJ_HEADER_SIZE
        if handle_at.pop(hdr, None) != h:
            _fail(f"handle {h}: no slot at {hdr:#x} names it")
        c = pool._zs_class[hdr >> shift]
        if pool._class_of[(size + OBJ_HEADER_SIZE + 15) >> 4] != c:
            _fail(f"handle {h}: size {size} does not belong in class {c}")
    if handle_at:
        _fail(f"slots name handles that do not point back: {sorted(handle_at.values())[:5]}")
    if nhuge != pool._czspages[huge]:
        _fail(f"{nhuge} huge objects, counter says {pool._czspages[huge]}")
    if huge_pages & set(pool._huge_free) or any(s >= pool._huge_next for s in huge_pages):
        _fail("a huge page is both used and free")
    nfree = 0
    h = pool._hfree
    while h:
        nfree += 1
        if nfree > nh or not 0 < h < nh or handles[h] & SIZE_MASK:
            _fail(f"handle free list reaches live or looping handle {h}")
        h = handles[h] >> SIZE_BITS
    if nfree + nlive != nh - 1:
        _fail(f"{nfree} free + {nlive} live handles != {nh - 1}")

    # Counters.
    pages = sum(pool._czspages[c] * pool._cppz[c] for c in range(huge)) + nhuge
    if pages != pool._pages_used:
        _fail(f"pages_used {pool._pages_used}, tables say {pages}")
    if nbytes != pool._bytes_used:
        _fail(f"bytes_used {pool._bytes_used}, live objects hold {nbytes}")
