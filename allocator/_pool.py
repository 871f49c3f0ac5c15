"""Pool: zs_malloc / zs_free / zs_map_object over zspages laid out in the arena.

Data flow: the block device calls ``malloc`` + ``write`` for each compressed
block, ``read`` (or ``map``) to load it back and ``free`` when the block is
overwritten or discarded.  The pool keeps every piece of state in flat
tables (``Tables``: memoryviews of a memfd) and in plain lists indexed by
class id (the package docstring describes the layout); the bytes live in
the ``Arena``.  Compaction (``_compact``) and the self-check (``_check``)
are Pool's methods too, in base classes of their own.

The hot paths (malloc, free, read, write) are written flat on purpose: one
lock taken with acquire/release (``with`` costs 80 ns more here), locals
instead of repeated attribute loads, and the fullness-list moves that happen
on about every other call inlined rather than called.  A Python call costs
~100 ns on this machine kind and the budget is 2 us per malloc + write.
Compaction and the slow paths share the helpers ``_push``, ``_unlink`` and
``_regroup``, which are the reference for what the inlined copies do.
"""

from __future__ import annotations

import errno
import operator
import os
import threading
from array import array
from collections.abc import Callable
from typing import Literal

from ._arena import Arena
from ._check import ConsistencyCheck
from ._compact import Compaction
from ._errors import PoolFormatError, PoolFullError, PoolLimitError
from ._layout import (
    DEFAULT_MAX_PAGES_PER_ZSPAGE,
    FULL,
    M_ARENA_BYTES,
    M_CHAIN,
    M_HANDLES_END,
    M_HUGE_NEXT,
    M_MAGIC,
    M_MAX_OBJECTS,
    M_MAX_PAGES,
    M_PAGES_COMPACTED,
    M_VERSION,
    M_ZS_END,
    MAX_HANDLE,
    META_MAGIC,
    META_VERSION,
    META_WORDS,
    NR_GROUPS,
    OBJ_HEADER_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    READY_MAX,
    RESERVATION_BYTES,
    SIZE_BITS,
    SIZE_MASK,
    ZS_MAX_ALLOC_SIZE,
)
from ._rebuild import Rebuild
from ._size_class import SizeClassTable
from ._stats import ClassStats, PoolStats
from ._tables import Tables
from ._uring import Populator

#: Fault injection for the crash tests: None in every real run.  A test sets
#: it to a callable that is called with the name of each step of an update
#: as the step is reached (``"malloc:published"``, ...) and kills the process
#: at the one it wants; the check costs one global load per step.
_fault: Callable[[str], None] | None = None

#: Map modes of ``Pool.map``, as zsmalloc's ZS_MM_RO / ZS_MM_WO / ZS_MM_RW.
MAP_MODES = ("r", "w", "rw")


class _Mapping:
    """What ``Pool.map`` returns: holds the pool lock while the view is open."""

    __slots__ = ("_pool", "_handle", "_mode", "_view")

    def __init__(self, pool: Pool, handle: int, mode: str):
        self._pool = pool
        self._handle = handle
        self._mode = mode
        self._view: memoryview | None = None

    def __enter__(self) -> memoryview:
        pool = self._pool
        pool._lock.acquire()
        try:
            addr, size = pool._lookup(self._handle)
            # A zspage's pages are consecutive in the arena's address space
            # (see the package docstring), so every object, even one that
            # crosses a page boundary, is one slice: no copy in, none back.
            view = pool._mv[addr : addr + size]
            if self._mode == "r":
                view = view.toreadonly()
        except BaseException:
            pool._lock.release()
            raise
        self._view = view
        return view

    def __exit__(self, *exc) -> Literal[False]:
        try:
            # Released, the view can no longer reach the arena after the
            # lock is dropped and compaction may move the object.
            if self._view is not None:
                self._view.release()
        finally:
            self._pool._lock.release()
        return False


def _limit(name: str, value: object) -> int | None:
    """``value`` (None or an int >= 1) as a limit; ValueError otherwise."""
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
    return value


class Pool(Compaction, ConsistencyCheck, Rebuild):
    """A zsmalloc-style pool of objects of 1..4096 bytes.  See the package docstring.

    ``max_pages`` caps ``pages_used`` (PoolFullError past it).
    ``max_objects`` caps live objects (PoolFullError past it) and so bounds
    the pages the pool can ever need, which it reserves instead of the
    uncapped 1 TiB: a caller that knows how many objects it can hold at
    once (the block device: two per slot) says so and lets the pool size
    itself.
    """

    __slots__ = (
        "_lock",
        "_arena",
        "_map",
        "_mv",
        "_mv32",
        "max_pages",
        "max_pages_per_zspage",
        "huge_class_size",
        "max_objects",
        "_page_cap",
        "_max_handle",
        "_zs_shift",
        "_zs_mask",
        "_max_zspages",
        "_huge_base",
        "_huge_slots",
        "_class_of",
        "_class_size",
        "_pages_per_zspage",
        "_objs_per_zspage",
        "_group_of",
        "_huge_class",
        "_group_heads",
        "_group_mask",
        "_class_zspages",
        "_tables",
        "_meta",
        "_handles",
        "_free_handle",
        "_handles_end",
        "_zs_class",
        "_zs_inuse",
        "_zs_freeobj",
        "_zs_bump",
        "_zs_next",
        "_zs_prev",
        "_zs_group",
        "_zs_freed",
        "_zs_end",
        "_huge_free",
        "_huge_next",
        "_pages_used",
        "_bytes_used",
        "_zs_ready",
        "_ready_pages",
        "_want",
        "_populator",
    )

    def __init__(
        self,
        max_pages_per_zspage: object = DEFAULT_MAX_PAGES_PER_ZSPAGE,
        max_pages: object = None,
        max_objects: object = None,
        *,
        _fds: tuple[int, int] | None = None,
    ):
        # The arguments are typed object, not int: compiled by mypyc, an int
        # parameter raises TypeError for a str before these checks can say
        # ValueError, as the API promises.
        classes = SizeClassTable(max_pages_per_zspage)
        max_pages_per_zspage = classes.max_pages_per_zspage
        max_pages = _limit("max_pages", max_pages)
        max_objects = _limit("max_objects", max_objects)
        self.max_pages = max_pages
        self.max_objects = max_objects
        self.max_pages_per_zspage = max_pages_per_zspage
        # The page cap: max_pages if given; and with at most max_objects
        # live objects there are at most max_objects zspages (an empty one
        # is freed at once, so each holds an object) and huge pages, of at
        # most max_pages_per_zspage pages each.  Never more than the
        # uncapped reservation holds.
        cap = RESERVATION_BYTES >> PAGE_SHIFT
        if max_pages is not None:
            cap = min(cap, max_pages)
        if max_objects is not None:
            cap = min(cap, max_objects * max_pages_per_zspage)
        self._page_cap = cap
        self._max_handle = MAX_HANDLE if max_objects is None else min(MAX_HANDLE, max_objects)
        self._lock = threading.Lock()
        # Arena layout.  zspage z owns [z << zs_shift, (z + 1) << zs_shift):
        # room for the longest chain, rounded up to a power of two so that
        # address -> (zspage, offset) is a shift and a mask.  Huge objects
        # get their own region after the zspages, one page each, so they
        # stay densely packed (one page-table page maps 512 of them) rather
        # than each taking a zspage slot.  A bounded pool reserves only what
        # it can use, so many small pools fit one process's address space:
        # at most cap zspages (each has a page), or max_objects of them
        # holding objects (each holds one) plus READY_MAX ready ones; at
        # most cap, or max_objects, huge pages.
        self._zs_shift = shift = PAGE_SHIFT + (max_pages_per_zspage - 1).bit_length()
        self._zs_mask = (1 << shift) - 1
        zspages = huge = cap
        if max_objects is not None:
            zspages = min(cap, max_objects + READY_MAX)
            huge = min(cap, max_objects)
        if ((zspages + 1) << shift) + (huge << PAGE_SHIFT) > RESERVATION_BYTES:
            zs_bytes = huge_bytes = RESERVATION_BYTES // 2
        else:
            zs_bytes = (zspages + 1) << shift  # +1: zspage id 0 is never used
            huge_bytes = huge << PAGE_SHIFT
        self._max_zspages = zs_bytes >> shift
        self._huge_base = zs_bytes
        self._huge_slots = huge_bytes >> PAGE_SHIFT
        arena_fd, tables_fd = _fds if _fds is not None else (None, None)
        self._arena = arena = Arena(zs_bytes + huge_bytes, fd=arena_fd)
        self._map = arena.map
        self._mv = arena.mv
        self._mv32 = arena.mv32
        self.huge_class_size = classes.huge_class_size
        n = len(classes)
        self._huge_class = n - 1
        self._class_of = classes.class_of
        self._class_size = classes.size
        self._pages_per_zspage = classes.pages_per_zspage
        self._objs_per_zspage = classes.objs_per_zspage
        # inuse -> fullness group, one list per class.
        self._group_of = [
            [FULL if i == o else i * 10 // o + 1 for i in range(o + 1)]
            for o in classes.objs_per_zspage
        ]
        # heads[c * NR_GROUPS + g]: first zspage of group g of class c (0: none).
        self._group_heads = [0] * (n * NR_GROUPS)
        # Bit g of cmask[c] is set when group g of class c is not empty, so
        # the fullest group with room is cmask[c].bit_length() - 1.
        self._group_mask = [0] * n
        # zspages per class (for the huge class: huge objects).
        self._class_zspages = [0] * n
        # The handle table and the zspage tables, sized for every handle
        # and zspage id the pool can have; memory only where written.
        nz = self._max_zspages
        try:
            self._tables = tables = Tables(self._table_spec(nz), tables_fd)
        except BaseException:
            arena.close()
            raise
        views = tables.views
        # The header (see _layout's META_*): what attach needs to take the
        # memfds over, and the ends of the handles and ids handed out.
        self._meta = meta = views["meta"]
        if _fds is None:
            meta[M_MAGIC] = META_MAGIC
            meta[M_VERSION] = META_VERSION
            meta[M_CHAIN] = max_pages_per_zspage
            meta[M_MAX_PAGES] = max_pages or 0
            meta[M_MAX_OBJECTS] = max_objects or 0
            meta[M_HANDLES_END] = 1
            meta[M_ZS_END] = 1
            meta[M_HUGE_NEXT] = 0
            meta[M_ARENA_BYTES] = arena.size
        # Handle 0 is never handed out: it stays a free entry with no next.
        # Handles from handles_end up have never been used.
        self._handles = views["handles"]
        self._free_handle = 0
        self._handles_end = 1
        # zspage tables, indexed by zspage id; id 0 is the null link and
        # owns no memory.  Ids from zs_end up have never been used.
        self._zs_class = views["zs_class"]
        self._zs_inuse = views["zs_inuse"]
        self._zs_freeobj = views["zs_freeobj"]  # first free slot's offset + 1 (0: none)
        self._zs_bump = views["zs_bump"]  # offset of the first never-used slot
        self._zs_next = views["zs_next"]  # fullness list links; free-id list link
        self._zs_prev = views["zs_prev"]
        self._zs_group = views["zs_group"]
        self._zs_freed = 0  # first freed id, linked through zs_next
        self._zs_end = 1
        # Huge pages: slot i is the page at huge_base + (i << PAGE_SHIFT).
        self._huge_free = array("I")
        self._huge_next = 0
        self._pages_used = 0
        self._bytes_used = 0
        # Ready zspages (populate_ahead): per chain length, ids whose pages
        # are in memory already and that no class owns yet.
        self._zs_ready = [array("I") for _ in range(max_pages_per_zspage + 1)]
        self._ready_pages = 0
        # Chain lengths to make ready, one per zspage made since; None once
        # the kernel refused MADV_POPULATE_WRITE (older than 5.14).
        self._want: array | None = array("B")
        # Does the faulting: on io_uring's kernel workers where it can.
        self._populator = Populator(self._map)
        if _fds is not None:
            try:
                with self._lock:
                    self._rebuild_locked()
            except BaseException:
                self._tables.close()
                arena.close()
                raise

    def _table_spec(self, nz: int) -> dict[str, tuple[str, int]]:
        """The tables memfd's layout: the header first (attach reads it
        alone), then the handle table and the zspage tables."""
        return {
            "meta": ("Q", META_WORDS),
            "handles": ("Q", self._max_handle + 1),
            "zs_class": ("H", nz),
            "zs_inuse": ("H", nz),
            "zs_group": ("B", nz),
            "zs_freeobj": ("I", nz),
            "zs_bump": ("I", nz),
            "zs_next": ("I", nz),
            "zs_prev": ("I", nz),
        }

    # -- state that outlives the process ------------------------------------

    def state_fds(self) -> dict[str, int]:
        """The memfds that hold the whole pool: ``{"arena": fd, "tables": fd}``.

        Whoever holds them (a supervisor) keeps every object alive after
        this process is gone; ``Pool.attach`` takes them over.  They stay
        this pool's: close() closes them, so a holder keeps dups.
        """
        return {"arena": self._arena.fd, "tables": self._tables.arena.fd}

    @classmethod
    def attach(cls, fds: dict[str, int]) -> Pool:
        """Take over the pool in ``fds`` (as ``state_fds`` gave them, in this
        process or another), rebuild what lives only in a process, return it.

        The handle table is the truth: every entry with a size is a live
        object, wherever the process that wrote it stopped (the update
        order in ``_rebuild`` says why that is enough).  Everything else
        is rebuilt from it: zspage occupancy, object headers, free slots,
        fullness groups, the free handle and zspage id lists, the huge page
        list, pages_used and bytes_used; memory that no live object holds
        (zspages being freed, ready zspages) goes back to the kernel.  The
        pool owns the fds from here on.  PoolFormatError when the memfds are
        not a pool of this format; PoolDamagedError when the tables
        contradict themselves.
        """
        try:
            arena_fd, tables_fd = fds["arena"], fds["tables"]
        except (KeyError, TypeError):
            raise PoolFormatError(
                f"attach needs the fds 'arena' and 'tables', got {fds!r}"
            ) from None
        head = array("Q", os.pread(tables_fd, 8 * META_WORDS, 0).ljust(8 * META_WORDS, b"\0"))
        if head[M_MAGIC] != META_MAGIC:
            raise PoolFormatError(f"memfd {tables_fd} holds no pool tables (no pool magic)")
        if head[M_VERSION] != META_VERSION:
            raise PoolFormatError(
                f"the pool state is format {head[M_VERSION]}, this code reads format "
                f"{META_VERSION} only"
            )
        try:
            pool = cls(
                head[M_CHAIN],
                head[M_MAX_PAGES] or None,
                head[M_MAX_OBJECTS] or None,
                _fds=(arena_fd, tables_fd),
            )
        except ValueError as exc:  # arguments or memfd sizes that do not fit
            raise PoolFormatError(f"the pool state does not fit its own header: {exc}") from None
        return pool

    @property
    def pages_compacted(self) -> int:
        """Pages freed by compact() since the pool was created (kept in the
        tables memfd, so it survives attach)."""
        return self._meta[M_PAGES_COMPACTED]

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Give all memory back at once.  The pool is unusable afterwards."""
        with self._lock:
            self._populator.close()  # nothing may fault into a closed arena
            self._arena.close()
            # The header stays readable (pages_compacted of a closed pool).
            self._meta = array("Q", self._meta)  # type: ignore[assignment]
            self._tables.close()
            self._pages_used = 0
            self._ready_pages = 0
            self._want = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> Literal[False]:
        self.close()
        return False

    @property
    def pages_used(self) -> int:
        """Pages the pool holds; cheap enough for the device to read per write."""
        return self._pages_used

    # -- zs_malloc ---------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Reserve room for an object of ``size`` bytes and return its handle.

        The object goes into the fullest zspage of its class that has room;
        a new zspage is made only when none has.  Raises ValueError for a
        size outside 1..4096 and PoolFullError when a new zspage (or huge
        page) would take the pool past ``max_pages``.
        """
        lock = self._lock
        lock.acquire()
        try:
            return self._malloc_locked(size)
        finally:
            lock.release()

    def _malloc_locked(self, size: int) -> int:
        """malloc with the lock held: the body malloc and store_many share."""
        if size >= self.huge_class_size:
            return self._malloc_huge_locked(size)
        if size < 1:
            raise ValueError(f"size must be in 1..{ZS_MAX_ALLOC_SIZE}, got {size}")
        c = self._class_of[(size + OBJ_HEADER_SIZE + 15) >> 4]
        # The handle is picked first and the table written last, so that
        # running out of handles or pages changes nothing.
        handles = self._handles
        h = self._free_handle
        if not h:
            h = self._handles_end
            if h > self._max_handle:
                raise PoolFullError(f"pool is full: all {self._max_handle} handles are in use")
        m = self._group_mask[c]
        if m:
            g = m.bit_length() - 1
            z = self._group_heads[c * NR_GROUPS + g]
        else:
            z = self._new_zspage(c)
            g = 0
        # A slot: the zspage's free list first, else its never-used tail.
        mv32 = self._mv32
        zs_freeobj = self._zs_freeobj
        off = zs_freeobj[z]
        if off:
            hdr = (z << self._zs_shift) | (off - 1)
            zs_freeobj[z] = mv32[hdr >> 2] >> 1
        else:
            zs_bump = self._zs_bump
            off = zs_bump[z]
            zs_bump[z] = off + self._class_size[c]
            hdr = (z << self._zs_shift) | off
        entry = ((hdr + OBJ_HEADER_SIZE) << SIZE_BITS) | size
        if h == self._handles_end:
            # The end grows in the header before the entry is written: a
            # rebuild never needs to look past it.
            self._meta[M_HANDLES_END] = self._handles_end = h + 1
        else:
            self._free_handle = handles[h] >> SIZE_BITS
        handles[h] = entry  # published: from here a rebuild sees the object
        if _fault is not None:
            _fault("malloc:published")
        mv32[hdr >> 2] = (h << 1) | 1
        zs_inuse = self._zs_inuse
        inuse = zs_inuse[z] + 1
        zs_inuse[z] = inuse
        g2 = self._group_of[c][inuse]
        if g2 != g:
            # _regroup inlined; z is the head of group g, so leaving it
            # is a pop.
            heads = self._group_heads
            base = c * NR_GROUPS
            if g:
                nxt = self._zs_next[z]
                heads[base + g] = nxt
                if nxt:
                    self._zs_prev[nxt] = 0
                else:
                    m ^= 1 << g
            if g2 != FULL:
                head = heads[base + g2]
                self._zs_next[z] = head
                if head:
                    self._zs_prev[head] = z
                heads[base + g2] = z
                m |= 1 << g2
            self._group_mask[c] = m
            self._zs_group[z] = g2
        self._bytes_used += size
        return h

    def _malloc_huge_locked(self, size: int) -> int:
        size = operator.index(size)
        if size > ZS_MAX_ALLOC_SIZE:
            raise ValueError(f"size must be in 1..{ZS_MAX_ALLOC_SIZE}, got {size}")
        # A huge object has a page to itself and no header: compaction never
        # moves it (a one-object page cannot get fuller), so nothing needs to
        # find its handle from its slot.
        self._check_room(1)
        h = self._free_handle
        if not h and self._handles_end > self._max_handle:
            raise PoolFullError(f"pool is full: all {self._max_handle} handles are in use")
        if self._huge_free:
            slot = self._huge_free.pop()
        elif self._huge_next < self._huge_slots:
            slot = self._huge_next
            self._meta[M_HUGE_NEXT] = self._huge_next = slot + 1
        else:
            raise PoolFullError(f"pool is full: all {self._huge_slots} huge page slots are in use")
        entry = ((self._huge_base + (slot << PAGE_SHIFT)) << SIZE_BITS) | size
        if h:
            self._free_handle = self._handles[h] >> SIZE_BITS
        else:
            h = self._handles_end
            self._meta[M_HANDLES_END] = self._handles_end = h + 1
        self._handles[h] = entry
        if _fault is not None:
            _fault("malloc:published")
        self._pages_used += 1
        self._class_zspages[self._huge_class] += 1
        self._bytes_used += size
        return h

    def _check_room(self, pages: int) -> None:
        if self._pages_used + pages > self._page_cap:
            raise PoolFullError(
                f"pool is full: {self._pages_used} of max_pages={self._page_cap} pages "
                f"in use, {pages} more needed"
            )

    def _new_zspage(self, c: int) -> int:
        """Make an empty zspage for class c, in no fullness list; return its id."""
        ppz = self._pages_per_zspage[c]
        self._check_room(ppz)
        ready = self._zs_ready[ppz]
        if not ready and self._populator.pending:
            # Kernel workers may have finished some since populate_ahead.
            self._take_populated(self._populator.finished())
        if ready:
            z = ready.pop()  # its pages are in memory already
            self._ready_pages -= ppz
        else:
            z = self._take_id()
        want = self._want
        if want is not None and len(want) < READY_MAX:
            want.append(ppz)  # ask populate_ahead for the next one
        self._zs_class[z] = c
        self._zs_inuse[z] = 0
        self._zs_next[z] = 0
        self._zs_prev[z] = 0
        self._zs_group[z] = 0
        # No slot is threaded onto the free list: slots are handed out from
        # zs_bump upwards, so a new zspage costs no per-slot work and each
        # page is first touched (allocated by the kernel) when an object
        # lands on it.
        self._zs_freeobj[z] = 0
        self._zs_bump[z] = 0
        self._class_zspages[c] += 1
        self._pages_used += ppz
        return z

    def _take_id(self) -> int:
        """A zspage id that no zspage has: a freed one, else a new one."""
        z = self._zs_freed
        if z:
            self._zs_freed = self._zs_next[z]
            return z
        z = self._zs_end
        if z >= self._max_zspages:
            raise PoolFullError(
                f"pool is full: all {self._max_zspages - 1} zspage slots are in use"
            )
        self._meta[M_ZS_END] = self._zs_end = z + 1
        return z

    def _free_zspage(self, z: int) -> int:
        """Give an empty zspage (in no list) back to the kernel; return its pages."""
        c = self._zs_class[z]
        ppz = self._pages_per_zspage[c]
        self._class_zspages[c] -= 1
        self._pages_used -= ppz
        self._drop_id(z, ppz)
        return ppz

    def _drop_id(self, z: int, ppz: int) -> None:
        """Put id z back on the free stack and give its first ppz pages back."""
        # The id first, so that even a failing fallocate leaves the tables
        # consistent (a reused zspage never reads what its slots held).
        self._zs_next[z] = self._zs_freed
        self._zs_freed = z
        # Its pages are consecutive in the arena: one fallocate frees them.
        self._arena.release(z << self._zs_shift, ppz << PAGE_SHIFT)

    # -- fullness lists (intrusive, doubly linked through zs_next/zs_prev) --

    def _push(self, c: int, g: int, z: int) -> None:
        """Put z at the head of group g of class c (g is not FULL)."""
        i = c * NR_GROUPS + g
        head = self._group_heads[i]
        self._zs_next[z] = head
        self._zs_prev[z] = 0
        if head:
            self._zs_prev[head] = z
        self._group_heads[i] = z
        self._group_mask[c] |= 1 << g

    def _unlink(self, c: int, g: int, z: int) -> None:
        """Take z out of group g of class c (g is not FULL)."""
        nxt = self._zs_next[z]
        prv = self._zs_prev[z]
        if prv:
            self._zs_next[prv] = nxt
        else:
            self._group_heads[c * NR_GROUPS + g] = nxt
            if not nxt:
                self._group_mask[c] &= ~(1 << g)
        if nxt:
            self._zs_prev[nxt] = prv

    def _regroup(self, c: int, z: int, g: int, g2: int) -> None:
        """Move z from group g (0: none) to group g2 of class c."""
        if g and g != FULL:
            self._unlink(c, g, z)
        if g2 != FULL:
            self._push(c, g2, z)
        self._zs_group[z] = g2

    def _take_slot(self, c: int, z: int) -> int:
        """Take a free slot of z, regroup z, return the slot's header address.

        malloc does the same steps inline; compaction calls this.
        """
        off = self._zs_freeobj[z]
        if off:
            hdr = (z << self._zs_shift) | (off - 1)
            self._zs_freeobj[z] = self._mv32[hdr >> 2] >> 1
        else:
            off = self._zs_bump[z]
            self._zs_bump[z] = off + self._class_size[c]
            hdr = (z << self._zs_shift) | off
        inuse = self._zs_inuse[z] + 1
        self._zs_inuse[z] = inuse
        g2 = self._group_of[c][inuse]
        if g2 != self._zs_group[z]:
            self._regroup(c, z, self._zs_group[z], g2)
        return hdr

    # -- populating ahead (no zsmalloc counterpart) --------------------------
    #
    # A zspage's pages are shmem pages of the arena, and the first write to
    # each one faults it in: 2-4 us a page on this machine kind, depending
    # on the host, where zsmalloc takes a page from the buddy allocator, not
    # zeroed, no fault.  That was a third of the
    # pool's time on a 1 MiB write onto an empty device (the arena faulted
    # in beforehand: 4.4 -> 2.95 us per 4 KiB block).  So each zspage made
    # asks for one more to be made ready, and whoever has a moment when no
    # request waits (the FUSE session, between requests) calls
    # populate_ahead to fault one in; _new_zspage takes ready ones first.
    # A thread of its own did not help: it needs the GIL around each
    # madvise, and the handoffs between the threads cost what the faults did.

    @property
    def populate_wanted(self) -> bool:
        """True when populate_ahead has work: cheap, no lock."""
        return bool(self._want) or self._populator.pending > 0

    def populate_ahead(self, max_pages: int = 0) -> bool:
        """Fault in the pages of zspages a coming malloc will want.

        With io_uring (allocator._uring) and several zspages wanted, they
        are queued in one system call and faulted in by kernel workers;
        each becomes ready when a later call (or `populate_wait`) sees it
        done.  Otherwise one zspage per call is faulted in by madvise
        here, so the caller can look for other work in between.

        Returns True if it started any, False if none is wanted, or if
        ``max_pages`` (0: only the pool's own cap) leaves no room: ready
        pages, and those being faulted in, count against it beside
        ``pages_used``.  Ready zspages hold no object and are not in
        ``pages_used``; there are never more than READY_MAX, and
        ``compact`` gives their pages back.  A failed madvise changes
        nothing; on a kernel without MADV_POPULATE_WRITE (EINVAL, before
        5.14) populating stops for good.
        """
        lock = self._lock
        lock.acquire()
        try:
            populator = self._populator
            if populator.pending:
                self._take_populated(populator.finished())
            started = False
            batch = len(self._want or ())
            while True:
                want = self._want
                if not want:
                    break
                ppz = want.pop()
                stacks = self._zs_ready
                if sum(map(len, stacks)) + populator.pending >= READY_MAX:
                    # Full: the longest stack of another chain length (what
                    # the load asked for before) makes room, or nothing does.
                    old = max(
                        (n for n in range(len(stacks)) if n != ppz), key=lambda n: len(stacks[n])
                    )
                    if not stacks[old]:
                        break
                    self._ready_pages -= old
                    self._drop_id(stacks[old].pop(), old)
                cap = self._page_cap if not max_pages or max_pages > self._page_cap else max_pages
                if self._pages_used + self._ready_pages + populator.pending_pages + ppz > cap:
                    break
                try:
                    z = self._take_id()
                except PoolFullError:
                    break
                try:
                    queued = populator.start(z, z << self._zs_shift, ppz << PAGE_SHIFT, ppz, batch)
                except OSError as e:
                    self._populate_failed(z, ppz, -(e.errno or errno.EIO))
                    break
                started = True
                if not queued:  # faulted in here: one per call
                    stacks[ppz].append(z)
                    self._ready_pages += ppz
                    break
            populator.flush()
            return started
        finally:
            lock.release()

    def populate_wait(self) -> None:
        """Wait until every zspage populate_ahead started is in memory (ready) or given back."""
        with self._lock:
            self._take_populated(self._populator.drain())

    def _take_populated(self, ended: list[tuple[int, int, int]]) -> None:
        """Zspages whose pages were faulted in become ready (lock held)."""
        for z, ppz, res in ended:
            if res < 0:
                self._populate_failed(z, ppz, res)
            else:
                self._zs_ready[ppz].append(z)
                self._ready_pages += ppz

    def _populate_failed(self, z: int, ppz: int, res: int) -> None:
        # Whatever part got in goes back; a malloc will fault its pages in
        # itself, as it always could.
        self._drop_id(z, ppz)
        if res == -errno.EINVAL:
            self._want = None  # a kernel older than 5.14: stop asking

    def _release_ready(self) -> None:
        """Give the ready zspages' pages back (lock held), those being
        faulted in too, once they are (a fault after the punch would
        put pages back into a free range)."""
        for z, ppz, _res in self._populator.drain():
            self._drop_id(z, ppz)
        for ppz, ready in enumerate(self._zs_ready):
            for z in ready:
                self._drop_id(z, ppz)
            del ready[:]
        self._ready_pages = 0
        if self._want is not None:
            del self._want[:]

    # -- zs_free -------------------------------------------------------------

    def free(self, handle: int) -> None:
        """Free the object; a zspage left empty gives its pages back at once.

        Raises ValueError for a handle that is unknown or already freed.
        """
        lock = self._lock
        lock.acquire()
        try:
            self._free_locked(handle)
        finally:
            lock.release()

    def _free_locked(self, handle: int) -> None:
        """free with the lock held: the body free and free_many share."""
        addr, size = self._lookup(handle, "free of ")
        # Unpublished first: a rebuild from here on sees a free slot.
        self._handles[handle] = self._free_handle << SIZE_BITS
        if _fault is not None:
            _fault("free:unpublished")
        self._free_handle = handle
        self._bytes_used -= size
        if size >= self.huge_class_size:
            self._free_huge(addr)
            if not self._pages_used:
                self._shrink_tables()
            return
        self._release_slot(addr - OBJ_HEADER_SIZE)

    def _release_slot(self, hdr: int) -> None:
        """Put the slot whose header is at ``hdr`` on its zspage's free list
        (no handle names it any more), regroup or free the zspage."""
        z = hdr >> self._zs_shift
        zs_freeobj = self._zs_freeobj
        self._mv32[hdr >> 2] = zs_freeobj[z] << 1
        zs_freeobj[z] = (hdr & self._zs_mask) + 1
        zs_inuse = self._zs_inuse
        inuse = zs_inuse[z] - 1
        zs_inuse[z] = inuse
        c = self._zs_class[z]
        g = self._zs_group[z]
        if not inuse:
            # Its last object: the zspage goes, pages and all.
            self._unlink(c, g, z)
            self._free_zspage(z)
            if not self._pages_used:
                self._shrink_tables()
            return
        g2 = self._group_of[c][inuse]
        if g2 != g:
            # _regroup inlined: unlink from g (unless FULL), push on g2.
            heads = self._group_heads
            base = c * NR_GROUPS
            zs_next = self._zs_next
            zs_prev = self._zs_prev
            m = self._group_mask[c]
            if g != FULL:
                nxt = zs_next[z]
                prv = zs_prev[z]
                if prv:
                    zs_next[prv] = nxt
                else:
                    heads[base + g] = nxt
                    if not nxt:
                        m ^= 1 << g
                if nxt:
                    zs_prev[nxt] = prv
            head = heads[base + g2]
            zs_next[z] = head
            zs_prev[z] = 0
            if head:
                zs_prev[head] = z
            heads[base + g2] = z
            self._group_mask[c] = m | (1 << g2)
            self._zs_group[z] = g2

    def _shrink_tables(self) -> None:
        """The pool holds no object any more: give its tables back (lock held).

        The handle table and the zspage tables only grow while objects come
        and go (a freed handle or zspage id is kept for reuse), so without
        this a pool that held 200,000 objects keeps ~2 MiB of tables after
        all of them are freed.  An empty pool needs none of it: every handle
        and id is free, so the tables start over from their first entry,
        their pages are punched out, and the ready zspages go too.
        """
        self._release_ready()
        nz = self._zs_end
        self._tables.clear(
            {
                "handles": self._handles_end,
                "zs_class": nz,
                "zs_inuse": nz,
                "zs_group": nz,
                "zs_freeobj": nz,
                "zs_bump": nz,
                "zs_next": nz,
                "zs_prev": nz,
            }
        )
        # The ends start over only after the tables are cleared: a rebuild
        # in between finds zeros, which are free entries.
        meta = self._meta
        self._free_handle = 0
        meta[M_HANDLES_END] = self._handles_end = 1
        self._zs_freed = 0
        meta[M_ZS_END] = self._zs_end = 1
        del self._huge_free[:]
        meta[M_HUGE_NEXT] = self._huge_next = 0

    def _free_huge(self, addr: int) -> None:
        self._huge_free.append((addr - self._huge_base) >> PAGE_SHIFT)
        self._pages_used -= 1
        self._class_zspages[self._huge_class] -= 1
        self._arena.release(addr, PAGE_SIZE)

    # -- access --------------------------------------------------------------

    def _lookup(self, handle: int, what: str = "") -> tuple[int, int]:
        """(address, size) of a live handle; ValueError otherwise.  Lock held.

        ``what`` opens the message ("read of ", "write to ").  The one
        decoder of handle entries: every method that takes a handle calls
        it.  Measured: the call costs read() 0.03 us of its ~0.5 us, and a
        256-object gather 85 us against 62 us with the decoding inlined.
        """
        try:
            entry = self._handles[handle] if handle > 0 else 0
        except IndexError:
            entry = 0
        size = entry & SIZE_MASK
        if not size:
            raise ValueError(f"{what}unknown or freed handle {handle!r}")
        return entry >> SIZE_BITS, size

    def write(self, handle: int, data) -> None:
        """Copy ``data`` (bytes-like, exactly the malloc'd size) into the object.

        Raises ValueError for an unknown or freed handle and for data of any
        other length; the object is unchanged then.
        """
        lock = self._lock
        lock.acquire()
        try:
            addr, size = self._lookup(handle, "write to ")
            if len(data) != size:
                raise ValueError(f"write of {len(data)} bytes to an object of {size} bytes")
            self._mv[addr : addr + size] = data
        finally:
            lock.release()

    def read(self, handle: int) -> bytes:
        """A copy of the object's bytes.  ValueError for an unknown or freed handle."""
        lock = self._lock
        lock.acquire()
        try:
            addr, size = self._lookup(handle, "read of ")
            # Slicing the mmap copies straight into a new bytes object.
            return self._map[addr : addr + size]
        finally:
            lock.release()

    # -- batches: one lock round per block device request ------------------
    #
    # A 1 MiB request is 256 objects.  Taking the lock and entering a method
    # per object cost ~1.5 us of the ~4 us Python spent per 4 KiB block
    # written (bench: BlockDevice.write of 1 MiB, 1800 -> see device.py).

    def store(self, data) -> int:
        """malloc(len(data)) and write(handle, data) under one lock round."""
        lock = self._lock
        lock.acquire()
        try:
            h = self._malloc_locked(len(data))
            entry = self._handles[h]
            addr = entry >> SIZE_BITS
            self._mv[addr : addr + (entry & SIZE_MASK)] = data
            return h
        finally:
            lock.release()

    def replace(self, handle: int, data, max_pages: int = 0) -> bool:
        """Put ``data`` in the place of a live object, keeping its handle.

        When the new size (1..4096) rounds to the same size class as the
        object's, the bytes are written into a free slot of the class (the
        fullest zspage's, or a new zspage's unless that takes pages_used
        past ``max_pages``, 0: no such check, or the pool's cap), the handle
        is repointed at it and the old slot is freed: True.  Otherwise
        nothing changes and the caller frees and stores (False).  This is what a block rewritten with a
        similar compressed size (the common case when one swap slot or one
        filesystem block is written again) costs instead of a free and a
        malloc: no handle is freed or taken, so the caller's record of it
        stays as it is.  Never in place: a process killed in the middle
        of the copy must leave the old bytes whole (the handle entry, one
        8-byte store, switches from the old copy to the new).  ValueError
        for an unknown or freed handle.
        """
        size = len(data)
        lock = self._lock
        lock.acquire()
        try:
            addr, old = self._lookup(handle, "replace of ")
            huge = self.huge_class_size
            if old >= huge or not 0 < size < huge:
                return False
            class_of = self._class_of
            c = class_of[(size + OBJ_HEADER_SIZE + 15) >> 4]
            if c != class_of[(old + OBJ_HEADER_SIZE + 15) >> 4]:
                return False
            mv32 = self._mv32
            old_hdr = addr - OBJ_HEADER_SIZE
            shift = self._zs_shift
            z = old_hdr >> shift
            zs_inuse = self._zs_inuse
            # The new slot in the old one's zspage when it has room: its
            # count and group then stay as they are (the common case, once
            # rewrites have left holes).
            near = zs_inuse[z] < self._objs_per_zspage[c]
            if near:
                zs_freeobj = self._zs_freeobj
                off = zs_freeobj[z]
                if off:
                    hdr = (z << shift) | (off - 1)
                    zs_freeobj[z] = mv32[hdr >> 2] >> 1
                else:
                    zs_bump = self._zs_bump
                    off = zs_bump[z]
                    zs_bump[z] = off + self._class_size[c]
                    hdr = (z << shift) | off
            else:
                m = self._group_mask[c]
                if m:
                    # malloc's take of a slot from the fullest zspage, inlined
                    # as there (a rewrite into a full class lands here).
                    g = m.bit_length() - 1
                    heads = self._group_heads
                    base = c * NR_GROUPS
                    z = heads[base + g]
                    zs_freeobj = self._zs_freeobj
                    off = zs_freeobj[z]
                    if off:
                        hdr = (z << shift) | (off - 1)
                        zs_freeobj[z] = mv32[hdr >> 2] >> 1
                    else:
                        zs_bump = self._zs_bump
                        off = zs_bump[z]
                        zs_bump[z] = off + self._class_size[c]
                        hdr = (z << shift) | off
                    inuse = zs_inuse[z] + 1
                    zs_inuse[z] = inuse
                    g2 = self._group_of[c][inuse]
                    if g2 != g:
                        nxt = self._zs_next[z]
                        heads[base + g] = nxt
                        if nxt:
                            self._zs_prev[nxt] = 0
                        else:
                            m ^= 1 << g
                        if g2 != FULL:
                            head = heads[base + g2]
                            self._zs_next[z] = head
                            if head:
                                self._zs_prev[head] = z
                            heads[base + g2] = z
                            m |= 1 << g2
                        self._group_mask[c] = m
                        self._zs_group[z] = g2
                else:
                    # Every zspage of the class is full: a new one, as malloc
                    # would make, unless that passes the caller's limit.
                    if max_pages and self._pages_used + self._pages_per_zspage[c] > max_pages:
                        return False
                    try:
                        z = self._new_zspage(c)
                    except PoolFullError:
                        return False
                    hdr = self._take_slot(c, z)
            mv32[hdr >> 2] = (handle << 1) | 1
            new = hdr + OBJ_HEADER_SIZE
            self._mv[new : new + size] = data
            if _fault is not None:
                _fault("replace:copied")
            self._handles[handle] = (new << SIZE_BITS) | size  # the switch
            if _fault is not None:
                _fault("replace:published")
            if near:
                mv32[old_hdr >> 2] = zs_freeobj[z] << 1
                zs_freeobj[z] = (old_hdr & self._zs_mask) + 1
            else:
                self._release_slot(old_hdr)
            self._bytes_used += size - old
            return True
        finally:
            lock.release()

    def store_many(self, payloads, max_pages: int = 0) -> list[int]:
        """store() each of ``payloads`` (bytes-like, 1..4096 bytes each).

        All or nothing: returns the new handles in order.  When an
        allocation takes ``pages_used`` past ``max_pages`` (0: no such
        check; zram's "alloced_pages > limit_pages" right after zs_malloc)
        it frees what it stored and raises PoolLimitError, whose
        ``pages_used`` is the count reached.  PoolFullError and ValueError
        also leave nothing stored.
        """
        lock = self._lock
        lock.acquire()
        try:
            handles = self._handles
            mv = self._mv
            out: list[int] = []
            try:
                for data in payloads:
                    h = self._malloc_locked(len(data))
                    out.append(h)
                    addr = handles[h] >> SIZE_BITS
                    mv[addr : addr + len(data)] = data
                    used = self._pages_used
                    if max_pages and used > max_pages:
                        raise PoolLimitError(used, max_pages)
            except BaseException:
                for h in out:
                    self._free_locked(h)
                raise
            return out
        finally:
            lock.release()

    def free_many(self, handles) -> None:
        """free() each handle, under one lock round.  On a bad handle the
        ones before it are freed and ValueError is raised."""
        lock = self._lock
        lock.acquire()
        try:
            for h in handles:
                self._free_locked(h)
        finally:
            lock.release()

    def read_many(self, handles) -> list[bytes]:
        """[read(h) for h in handles] under one lock round."""
        lock = self._lock
        lock.acquire()
        try:
            m = self._map
            out: list[bytes] = []
            for handle in handles:
                addr, size = self._lookup(handle, "read of ")
                out.append(m[addr : addr + size])
            return out
        finally:
            lock.release()

    def gather(self, handles, prefix, head=b"", tail=b"") -> bytes:
        """The objects of ``handles`` copied into one buffer, under one lock round.

        The buffer is ``head``, then for each object ``prefix[size]`` (any
        indexable of bytes-like values, looked up by the object's size) and
        the object's bytes, then ``tail``.  This is the one copy out of the
        arena for a caller that wants many objects framed in one buffer (the
        block device builds an lz4 frame this way: with read_many and a
        join, the bytes were copied twice, 37 us more per 256 objects).
        ValueError for an unknown or freed handle.
        """
        lock = self._lock
        lock.acquire()
        try:
            mv = self._mv
            parts = [head]
            for handle in handles:
                addr, size = self._lookup(handle, "gather of ")
                parts.append(prefix[size])
                parts.append(mv[addr : addr + size])
            parts.append(tail)
            # The join copies while the lock still keeps every object in place.
            return b"".join(parts)
        finally:
            lock.release()

    def map(self, handle: int, mode: object = "r") -> _Mapping:
        """Context manager giving a memoryview of the object (zs_map_object).

        Mode "r" gives a read-only view, "w" and "rw" a writable one; all are
        views of the arena itself, never copies.  The pool lock is held
        until the ``with`` block ends: call no pool method inside it.  The
        view is released on exit.  ValueError for an unknown or freed handle
        (raised on entering the block) or an unknown mode.
        """
        # mode is typed object for the reason Pool.__init__'s arguments are.
        if not isinstance(mode, str) or mode not in MAP_MODES:
            raise ValueError(f"map mode must be one of {MAP_MODES}, got {mode!r}")
        return _Mapping(self, handle, mode)

    # -- zs_compact: the per-class loop is _compact.Compaction's ----------

    def compact(self) -> int:
        """Move objects out of sparse zspages, free the emptied ones; return pages freed.

        Handles stay valid.  Holds the pool lock for the whole run.
        """
        with self._lock:
            freed = 0
            for c in range(self._huge_class):
                freed += self._compact_class(c)
            # Compaction is how memory is asked back: ready zspages too
            # (not counted in the pages returned: they were never in use).
            self._release_ready()
            return freed

    # -- stats ---------------------------------------------------------------

    def _partial(self, c: int):
        """Yield the zspages of class c that are in a fullness list."""
        for g in range(1, FULL):
            z = self._group_heads[c * NR_GROUPS + g]
            while z:
                yield z
                z = self._zs_next[z]

    def _class_fullness(self, c: int) -> tuple[tuple[int, ...], int]:
        """Zspages of class c per fullness group, and its live objects.

        The groups as zsmalloc's ZS_INUSE_RATIO_10 .. ZS_INUSE_RATIO_100
        (what its debugfs ``classes`` prints under 10% .. 99%, 100%): one
        count per group 1..10 from the partial zspages' zs_group, found by
        walking the fullness lists, and last the full zspages, the rest of
        the class.  Computed on demand rather than counted, so that malloc
        and free keep no per-class counters: O(partial zspages).  The huge
        class's "zspages" are its huge pages, each full.
        """
        counts = [0] * FULL
        if c == self._huge_class:
            counts[FULL - 1] = self._class_zspages[c]
            return tuple(counts), self._class_zspages[c]
        inuse = 0
        zs_inuse = self._zs_inuse
        zs_next = self._zs_next
        heads = self._group_heads
        for g in range(1, FULL):
            z = heads[c * NR_GROUPS + g]
            while z:
                counts[g - 1] += 1
                inuse += zs_inuse[z]
                z = zs_next[z]
        partial = sum(counts)
        counts[FULL - 1] = self._class_zspages[c] - partial
        return tuple(counts), counts[FULL - 1] * self._objs_per_zspage[c] + inuse

    def stats(self) -> PoolStats:
        """A frozen snapshot of the counters (takes the lock; O(partial zspages))."""
        with self._lock:
            rows = []
            for c in range(len(self._class_size)):
                zspages = self._class_zspages[c]
                fullness, objs_used = self._class_fullness(c)
                rows.append(
                    ClassStats(
                        size=self._class_size[c],
                        pages_per_zspage=self._pages_per_zspage[c],
                        objs_per_zspage=self._objs_per_zspage[c],
                        zspages=zspages,
                        objs_allocated=zspages * self._objs_per_zspage[c],
                        objs_used=objs_used,
                        pages_used=zspages * self._pages_per_zspage[c],
                        fullness=fullness,
                    )
                )
            return PoolStats(
                pages_used=self._pages_used,
                pages_ready=self._ready_pages + self._populator.pending_pages,
                pages_compacted=self.pages_compacted,
                objs_used=sum(r.objs_used for r in rows),
                bytes_used=self._bytes_used,
                huge_class_size=self.huge_class_size,
                max_pages=self.max_pages,
                classes=tuple(rows),
            )
