"""Layout constants: the numbers that fix where every byte of a pool goes.

Data flow: nothing runs here.  Every allocator module takes its sizes, bit
widths and limits from this one place: the page and the size classes
(``_size_class``), the object header and the handle-table entry (``_pool``,
``_compact``, ``_check``), the fullness groups, and the arena's reservation
(``_pool``, ``_arena``).  Each says why it has its value.
"""

# -- pages and size classes ---------------------------------------------------

#: Pool pages are the kernel's 4 KiB pages: the unit the arena gets from and
#: gives back to the kernel, and what ``pages_used`` counts.
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: The largest object a pool stores: one uncompressed page.  zram never
#: stores more, since a block that does not compress is kept raw.
ZS_MAX_ALLOC_SIZE = PAGE_SIZE

#: Smallest class.  zsmalloc's ZS_MIN_ALLOC_SIZE is 32 so that tiny objects
#: still leave room for their in-place link; the issue fixes it at 32 too.
ZS_MIN_ALLOC_SIZE = 32

#: Class step, and the alignment of every object inside its zspage.  16 keeps
#: the per-object rounding waste at 7.5 bytes on average (0.5 % of a 1.6 KiB
#: lz4 block) and, because 16 is a multiple of 4, guarantees that an object's
#: 4-byte header never straddles a page boundary (see OBJ_HEADER_SIZE).
ZS_SIZE_CLASS_DELTA = 16

#: Number of classes: 32, 48, ..., 4096 -> 255.
ZS_SIZE_CLASSES = (ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA + 1

#: Every non-huge object starts with a 4-byte header holding its handle
#: (``handle << 1 | 1``); a free slot holds its free-list link there instead
#: (``next << 1``).  Compaction reads it to learn which handle to repoint.  It
#: plays the part of zsmalloc's ZS_HANDLE_SIZE but is 4 bytes, not 8: handles
#: are table indices below 2**31.  Huge objects have no header (see Pool).
OBJ_HEADER_SIZE = 4

#: Default and limits of the zspage chain length, as kernel's
#: CONFIG_ZSMALLOC_CHAIN_SIZE (default 8, range 4..16 there; the issue allows
#: 1..16 so that a chain of 1 -- a plain slab -- can be compared).
DEFAULT_MAX_PAGES_PER_ZSPAGE = 8
MIN_CHAIN = 1
MAX_CHAIN = 16


# -- handles and fullness groups -------------------------------------------------

#: Handle-table entry: ``addr << SIZE_BITS | size`` for a live object, where
#: addr is the arena address of the object's data and size its malloc'd size
#: (1..4096 needs 13 bits).  A free entry has size 0 and keeps the next free
#: handle in the addr bits, so free handles form a LIFO list inside the
#: table itself and cost no extra memory.
SIZE_BITS = 13
SIZE_MASK = (1 << SIZE_BITS) - 1

#: Largest handle: a slot's 32-bit header word holds ``handle << 1 | 1``.
MAX_HANDLE = (1 << 31) - 1


#: Fullness groups per class.  A zspage with ``inuse`` of ``objs`` slots used
#: is in group ``inuse * 10 // objs + 1`` (1..10: 0-9 %, ..., 90-99 % used,
#: as the kernel's ZS_INUSE_RATIO_* groups).  FULL is not a list: a full
#: zspage can take no object and is no compaction source.  An empty zspage
#: is freed at once, so it has no group.
FULL = 11
NR_GROUPS = 12


# -- the arena -----------------------------------------------------------------

#: Largest reservation, and the one an uncapped pool makes: 1 TiB of file
#: size and address space.  Neither is memory (the memfd is sparse, the
#: mapping populated on fault), but x86-64 gives a process 128 TiB of address
#: space, so at most ~127 uncapped pools can be alive in one process.
RESERVATION_BYTES = 1 << 40

#: Most zspages ``populate_ahead`` keeps ready (and pending requests for
#: them): two thirds of a 512 KiB request's worth for fio-like data, and at
#: most 16 * 8 pages = 512 KiB of memory that holds no object.
READY_MAX = 16


# -- state that outlives the process (Pool.attach) -----------------------------

#: The first table of the tables memfd: a header of 64-bit words.  Magic and
#: version say whose and which layout; the pool's arguments fix every other
#: table's length and the arena's; the ends bound the handles, zspage ids
#: and huge pages ever handed out (each written *before* the first use of
#: what it bounds, so a rebuild never has to look past it); pages_compacted
#: is the one counter that no table can give back.
META_MAGIC = int.from_bytes(b"zspool\x00\x01", "little")
#: Bumped whenever a table, the object header or the handle entry changes
#: meaning; ``Pool.attach`` refuses any other (PoolFormatError).
META_VERSION = 1
M_MAGIC = 0
M_VERSION = 1
M_CHAIN = 2  # max_pages_per_zspage
M_MAX_PAGES = 3  # 0: None
M_MAX_OBJECTS = 4  # 0: None
M_HANDLES_END = 5
M_ZS_END = 6
M_HUGE_NEXT = 7
M_PAGES_COMPACTED = 8
M_ARENA_BYTES = 9
META_WORDS = 16
