"""allocator: a zsmalloc-style pool for compressed 4 KiB blocks.

This is zramfs's ``mm/zsmalloc.c``.  The block device stores each compressed
block with ``Pool.malloc`` + ``Pool.write`` and gets an opaque *handle* back;
``Pool.read`` / ``Pool.map`` load it, ``Pool.free`` drops it, and
``Pool.compact`` squeezes out the holes frees leave behind.

Memory.  All object bytes live in one arena: a memfd mapped MAP_SHARED and
reserved whole (sparse: 1 TiB when uncapped, what ``max_pages`` or
``max_objects`` lets the pool use when either is given).  The kernel
allocates a 4 KiB page when it is first written, and the pool gives it back
with ``fallocate(PUNCH_HOLE)`` when it frees it, which works even under
``mlockall`` (where ``MADV_DONTNEED`` does not).

Populating ahead.  A first write to an arena page costs a shmem page fault
(2-4 us here, depending on the host; zsmalloc takes an unzeroed page from
the buddy allocator), a third of the pool's time when a 1 MiB write lands
on an empty device.  So each zspage
made asks for another of its chain length, and a caller with idle time
(the FUSE session, between requests) calls ``Pool.populate_ahead`` to fault
one in with ``MADV_POPULATE_WRITE``; a new zspage is taken from those ready
first.  At most ``READY_MAX`` (16) are ready, holding no object and not
counted in ``pages_used`` (``PoolStats.pages_ready``); ``compact`` gives
them back.

Size classes.  Object sizes are rounded up to classes of 32..4096 bytes in
16-byte steps (255 classes).  Each class picks the ``pages_per_zspage`` in
1..``max_pages_per_zspage`` (default 8) that wastes the smallest fraction of
its pages, and neighbouring classes with the same (pages_per_zspage,
objs_per_zspage) are merged into the largest: 119 distinct classes for a
chain of 8.

Zspages.  A zspage is a chain of pages_per_zspage 4 KiB pages holding
objs_per_zspage slots of the class size laid end to end, so a slot may cross
from one page into the next.  The pages are separate allocations of the
kernel's, physically anywhere, as in zsmalloc.  What differs is how a
crossing object is reached: zsmalloc either copies it out of its two pages
or maps them side by side (its old PGTABLE_MAPPING option); the arena is a
file we map ourselves, so each zspage simply owns a fixed, aligned range of
the mapping (``zspage id << zs_shift``), its pages sit side by side there
for good, and every object, crossing or not, is one slice: read, write and
map never copy and never look up a page table.  (Measured: a crossing
object cost 900 ns to write with a two-page copy against 330 ns for one
inside a page, and 40 % of 1.6 KiB objects cross.)  The price is address
space, not memory: the unused tail of a range is never touched.

Each slot starts with a 4-byte header word: ``handle << 1 | 1`` when the slot
is in use, ``(next free slot offset + 1) << 1`` when free, which makes the
zspage's free list intrusive.  A new zspage threads no free list: slots are
taken from a bump offset until the first free, so pages are touched only as
objects land on them.  Slot offsets are multiples of 16, so a header never
crosses a page.  Objects of ``huge_class_size`` bytes or more (they would
land in the top class: one object per page) get a page of a separate huge
region to themselves and no header; they never move.

Handles.  A handle is an index into the handle table (64-bit entries,
handle 0 never used).  A live entry is ``data address << 13 | size``, so read and
write need one table load; a free entry has size 0 and links to the next
free handle.  Compaction rewrites entries, never handles.

Where state lives.  No Python object exists per object or per zspage.
zspages are ids into flat tables (class, inuse, free-slot head, bump
offset, fullness list links, fullness group); an object's zspage and offset
are its address's high and low bits.  The handle table and the zspage
tables are sparse ranges of a second memfd, sized for every handle and id
the pool can have and punched when the pool holds no object any more, so
an emptied pool gives its metadata back as it gives its pages.  Freed
handles and zspage ids are reused, linked through their own entries.  Per
class there are plain lists: fullness list heads, a bitmask of non-empty
groups, a zspage count.  The numbers that fix the layout are all in
``_layout``.

Fullness groups.  A zspage with some slots used is in one of ten groups by
fill level (0-9 %, ..., 90-99 %), each an intrusive doubly linked list; full
zspages are in none, empty ones are freed at once.  malloc takes the head of
the fullest non-empty group (the highest bit of the class's mask), so new
objects go to the fullest zspage with room and sparse zspages are left to
drain.

Compaction.  Per class, while the free slots add up to at least a zspage,
the sparsest zspage is taken out of its list and its objects are copied one
by one into the fullest zspage with room; the handle in each object's header
says which table entry to repoint.  Emptied zspages are freed and counted in
``pages_compacted``.

Locking.  One ``threading.Lock`` per pool guards all of the above: every
public method takes it, for its whole run.  ``Pool.map`` holds it from
``__enter__`` until ``__exit__``, so nothing (compaction included) can move
the object under the view; code inside a ``with pool.map(...)`` block must
not call the pool or wait for anything that does, or it deadlocks.  Nothing
in the pool waits on I/O while holding the lock (page faults on the arena are
RAM, which the daemon has locked).

Surviving the process.  The arena and the tables memfd are the whole pool:
``Pool.state_fds`` names them, and ``Pool.attach`` takes them over in
another process, even from one killed in the middle of an update.  The
handle table is the truth there: every update publishes or unpublishes an
object with one 8-byte store to its entry (so ``replace`` and compaction
write a new slot and repoint the entry, never copy in place), and the
rebuild derives everything else from the entries (``_rebuild``, which has
the order of each update).  A caller frees the orphans its own records do
not name with ``free_unreferenced``.

Modules.  ``_pool`` is Pool: allocation, free, access, batches, populating
ahead.  Compaction (``_compact``) and the self-check the tests run
(``_check``) and the rebuild after attach (``_rebuild``) are Pool's methods
too, in base classes of their own modules.
``_size_class`` builds the class table, ``_arena`` and ``_tables`` own the
two memfds, ``_stats`` and ``_errors`` are what callers get back, and
``_layout`` holds every layout constant.  Imports run one way, from
``_pool`` down to ``_layout``; nothing imports ``_pool`` but this file.

Compiled.  ``pip install`` compiles ``_pool`` and the modules it is made of
with mypyc (setup.py lists them; BENCHMARKS.md, "mypyc", has what it saves),
from this same source, which stays the fallback: a module whose extension
is absent is imported from source, and so is every module when one source
file is newer than its extension (edited since the build: the extension
would run the old code).  ``ZRAMFS_PURE_PYTHON=1`` imports every module
from source even when the extensions are there (the tests run both ways);
``COMPILED`` says which is in use; ``_compiled`` makes the choice.
"""

import sys as _sys

# First: it decides whether the modules below come from extensions or source.
from . import _compiled  # noqa: F401
from ._arena import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from ._errors import (
    PoolDamagedError,
    PoolError,
    PoolFormatError,
    PoolFullError,
    PoolLimitError,
    PoolStateError,
)
from ._layout import PAGE_SHIFT, PAGE_SIZE
from ._pool import Pool
from ._stats import ClassStats, PoolStats

#: True when Pool runs compiled by mypyc, False when from source.
COMPILED = not (_sys.modules[Pool.__module__].__file__ or "").endswith(".py")

# The page size and the fallocate bits are the kernel's; the layers above
# import them from here, the lowest layer, so each is defined once.
__all__ = [
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "ClassStats",
    "Pool",
    "PoolDamagedError",
    "PoolError",
    "PoolFormatError",
    "PoolFullError",
    "PoolLimitError",
    "PoolStateError",
    "PoolStats",
]
