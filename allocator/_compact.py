"""Compaction (zs_compact): empty the sparsest zspages into the fullest.

Data flow: ``Pool.compact()`` calls ``compact_class`` for every non-huge
class with the pool lock held.  The device calls ``Pool.compact()`` when
someone writes to its ``compact`` attribute file, and the daemon may call it
from its maintenance task.

Per class, while the free slots of the partial zspages add up to at least
one whole zspage (the kernel's ``zs_can_compact``: with fewer, moving
objects cannot free a page), take the sparsest zspage as the source, out of
its fullness list so it can never also be a destination, and move its
objects one by one into the fullest zspage with room.  Each object's header
names its handle, so the handle-table entry is repointed at the new address
and the handle stays valid.  A source that empties is freed; one that cannot
be emptied because every other zspage is full goes back to its list and the
class is done.
"""

from __future__ import annotations

from ._pool import FULL, NR_GROUPS, SIZE_BITS, SIZE_MASK, Pool
from ._size_class import OBJ_HEADER_SIZE


def compact_class(pool: Pool, c: int) -> int:
    """Compact class c of pool (lock held); return the pages freed."""
    objs = pool._copz[c]
    size = pool._csize[c]
    heads = pool._heads
    cmask = pool._cmask
    handles = pool._handles
    mv32 = pool._mv32
    move = pool._map.move
    zs_free = pool._zs_free
    zs_inuse = pool._zs_inuse
    shift = pool._zs_shift
    # Free slots in partial zspages (full ones have none).  Moving an object
    # leaves the sum unchanged; freeing an emptied source takes objs off.
    wasted = sum(objs - zs_inuse[z] for z in pool._partial(c))
    freed = 0
    while wasted >= objs:
        m = cmask[c]
        gs = (m & -m).bit_length() - 1
        src = heads[c * NR_GROUPS + gs]
        pool._unlink(c, gs, src)
        base = src << shift
        for off in range(0, pool._zs_bump[src], size):
            if not zs_inuse[src]:
                break
            word = mv32[(base | off) >> 2]
            if not word & 1:
                continue            # a free slot
            if not cmask[c]:
                break               # every other zspage is full
            g = cmask[c].bit_length() - 1
            dst = heads[c * NR_GROUPS + g]
            h = word >> 1
            osize = handles[h] & SIZE_MASK
            new = pool._take_slot(c, dst)
            # Header (the handle) and data in one copy.
            move(new, base | off, OBJ_HEADER_SIZE + osize)
            handles[h] = ((new + OBJ_HEADER_SIZE) << SIZE_BITS) | osize
            # The old slot goes onto src's free list.
            mv32[(base | off) >> 2] = zs_free[src] << 1
            zs_free[src] = off + 1
            zs_inuse[src] -= 1
        inuse = zs_inuse[src]
        if not inuse:
            freed += pool._free_zspage(src)
            wasted -= objs
            continue
        # No room left anywhere else: put src back and stop.
        g = pool._cgroup[c][inuse]
        pool._zs_group[src] = g
        if g != FULL:
            pool._push(c, g, src)
        break
    return freed
