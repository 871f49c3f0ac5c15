"""Compaction (zs_compact): empty the sparsest zspages into the fullest.

Data flow: the device calls ``Pool.compact()`` when someone writes to its
``compact`` attribute file, and the daemon may call it from its maintenance
task; it runs ``_compact_class``, here, for every non-huge class with the
pool lock held.

Why a base class of Pool, not functions given a pool: compaction works on
the whole of the pool's state (fullness lists, zspage tables, handle table,
arena) and moves objects one by one; an interface narrow enough to hide
that state would cost a method call per table access of every object
moved.  So these are Pool's own methods, written in a module of their own
so that ``_pool.py`` holds the allocation paths, and this module imports
only the layout constants: ``_pool`` imports it, never the reverse.  The
fields it uses are Pool's, described in ``Pool.__init__``; the helpers it
shares with malloc and free (``_unlink``, ``_push``, ``_take_slot``,
``_free_zspage``, ``_partial``) are Pool's too.

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

from collections.abc import Callable

from mypy_extensions import trait

from ._fields import PoolFields
from ._layout import FULL, M_PAGES_COMPACTED, NR_GROUPS, OBJ_HEADER_SIZE, SIZE_BITS, SIZE_MASK

#: Fault injection for the crash tests (see ``_pool._fault``): None in every
#: real run.
_fault: Callable[[str], None] | None = None


@trait
class Compaction(PoolFields):
    """Pool's compaction method (zs_compact's per-class loop).  Pool is the only subclass."""

    __slots__ = ()

    def _compact_class(self, c: int) -> int:
        """Compact class c (lock held); return the pages freed."""
        objs = self._objs_per_zspage[c]
        size = self._class_size[c]
        group_heads = self._group_heads
        group_mask = self._group_mask
        handles = self._handles
        mv32 = self._mv32
        move = self._map.move
        zs_freeobj = self._zs_freeobj
        zs_inuse = self._zs_inuse
        shift = self._zs_shift
        # Free slots in partial zspages (full ones have none).  Moving an
        # object leaves the sum unchanged; freeing an emptied source takes
        # objs off.
        wasted = sum(objs - zs_inuse[z] for z in self._partial(c))
        freed = 0
        while wasted >= objs:
            m = group_mask[c]
            gs = (m & -m).bit_length() - 1
            src = group_heads[c * NR_GROUPS + gs]
            self._unlink(c, gs, src)
            base = src << shift
            for off in range(0, self._zs_bump[src], size):
                if not zs_inuse[src]:
                    break
                word = mv32[(base | off) >> 2]
                if not word & 1:
                    continue  # a free slot
                if not group_mask[c]:
                    break  # every other zspage is full
                g = group_mask[c].bit_length() - 1
                dst = group_heads[c * NR_GROUPS + g]
                h = word >> 1
                osize = handles[h] & SIZE_MASK
                new = self._take_slot(c, dst)
                # Header (the handle) and data in one copy, then the entry
                # is repointed (one 8-byte store): a process killed before
                # it leaves the object where it was, after it where it is
                # now, and a rebuild frees whichever copy the entry does
                # not name.
                move(new, base | off, OBJ_HEADER_SIZE + osize)
                if _fault is not None:
                    _fault("compact:copied")
                handles[h] = ((new + OBJ_HEADER_SIZE) << SIZE_BITS) | osize
                if _fault is not None:
                    _fault("compact:moved")
                # The old slot goes onto src's free list.
                mv32[(base | off) >> 2] = zs_freeobj[src] << 1
                zs_freeobj[src] = off + 1
                zs_inuse[src] -= 1
            inuse = zs_inuse[src]
            if not inuse:
                # Counted first: a rebuild frees an emptied zspage anyway.
                self._meta[M_PAGES_COMPACTED] += self._pages_per_zspage[c]
                freed += self._free_zspage(src)
                wasted -= objs
                continue
            # No room left anywhere else: put src back and stop.
            g = self._group_of[c][inuse]
            self._zs_group[src] = g
            if g != FULL:
                self._push(c, g, src)
            break
        return freed
