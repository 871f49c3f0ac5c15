"""BlockDevice: zram's slot table over a zsmalloc-style pool.

Where this sits in the data flow::

    kernel FUSE -> zramfs.fuse -> zramfs.fs -> zramfs.device (this module)
                                                  |-> zramfs.codecs (lz4, zstd, ...)
                                                  '-> allocator.Pool (zs_malloc & co.)

``zramfs.fs`` turns reads, writes and hole punches on the ``disk`` file into
``read``, ``write`` and ``discard`` calls here, at any offset and length.  This
module cuts them into 4 KiB blocks ("pages", one slot each) and does what
``drivers/block/zram/zram_drv.c`` does with a page:

* a page whose 8-byte words are all equal is *same-filled*: the word is kept
  in the slot and nothing is allocated (``same_pages``);
* any other page is compressed; if the result is ``huge_class_size`` bytes or
  more it is stored raw, 4096 bytes, and the slot is *huge* (``huge_pages``,
  ``huge_pages_since``); else the compressed bytes go into a pool object;
* the slot's old object is freed only after the new one is stored;
* a write that would take the pool past ``mem_limit`` fails with
  ``MemLimitError`` and changes nothing that is stored;
* a slot never written (or discarded) reads as zeros; ``discard`` frees the
  slots it covers and counts them in ``notify_free``.

Writes and reads that do not cover whole blocks read-modify-write the edge
blocks, so the device takes any offset and length inside ``disksize``.

Slot table
----------
No Python object exists per slot.  The table (``zramfs._slots.SlotTable``:
an anonymous mapping reserved whole, which costs memory only where written)
holds two flat arrays, 12 bytes a slot, indexed by block number
(``offset // 4096``):

``_handle``: ``memoryview('Q')``, 8 bytes
    the pool handle of the slot's object, or, for a same-filled slot, the
    repeated 8-byte word (read little-endian).  Written-back slots will keep
    their backing-file block number here, as zram keeps it in ``handle``.
``_info``: ``memoryview('I')``, 4 bytes
    bits 0-12: the object's size in the pool (1..4096; 4096 = 1 << 12 needs
    13 bits).  It is non-zero exactly when the slot owns a pool object, so
    freeing a slot is "if size: pool.free(handle)".
    bits 13-21: flags, named after zram's ``enum zram_pageflags``:
    SAME, HUGE, IDLE, WB (written back), INCOMPRESSIBLE, DEDUP, and two
    COMP_PRIORITY bits (non-zero = recompressed with a secondary algorithm).
    Only SAME and HUGE are set today; the rest are reserved for idle
    tracking, writeback, recompression and deduplication.
    bits 22-31: free.
    A slot is empty (never written, or discarded) exactly when its info is 0:
    a zero-filled page is SAME with word 0, so its info is not 0.

Reserved: a third array of 4 bytes a slot, for the last-access stamp
(seconds since the device was created, zram's ``ac_time``) once idle
tracking needs it.  That brings a slot to 16 bytes, kernel zram's size
(``struct zram_table_entry``: handle, flags, ac_time).  Its address space
is reserved with the rest and costs nothing until written.

Concurrency rule
----------------
``self._lock`` guards the slot table, every counter, and each sequence of pool
calls that must look atomic (allocating a write's new objects, checking
``mem_limit``, installing them, freeing the old ones).  The lock order is
device lock, then the pool's own lock (taken inside each ``Pool`` call); the
pool never calls back up.  Compressing and decompressing -- the expensive
part -- happen outside the lock: a write compresses its whole blocks before it
takes the lock, and a read copies the compressed bytes out of the pool under
the lock (``pool.read``) and decompresses them after releasing it.  The one
exception is the (at most two) partial edge blocks of an unaligned write or
discard: their read-modify-write runs entirely under the lock, so that two
unaligned writes into different bytes of one block cannot lose each other.
A discard takes the lock once per 4096 whole blocks, so an fstrim of a large
device does not stall other I/O; ``compact()`` takes only the pool's lock
(compaction moves objects but keeps handles valid).  Nothing under the lock
waits on I/O, sleeps, or calls back into fs or fuse.  Concurrent writes to the
same block land in some order, each block whole, as on any block device.
"""

from array import array
from dataclasses import dataclass
from itertools import repeat
import operator
import threading

import lz4.block
import lz4.frame

from allocator import Pool, PoolFullError, PoolLimitError

from ._slots import SlotTable, SlotTableTooLargeError
from .codecs import DEFAULT_ALGORITHM, get_codec

__all__ = [
    "PAGE_SIZE",
    "BlockDevice",
    "CorruptedSlotError",
    "DeviceError",
    "DeviceStats",
    "InvalidDiskSizeError",
    "InvalidMemLimitError",
    "MemLimitError",
    "OutOfRangeError",
]

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_PAGE_MASK = PAGE_SIZE - 1

# Slot info layout (see the module docstring).  13 bits hold sizes up to 4096.
_SIZE_BITS = 13
_SIZE_MASK = (1 << _SIZE_BITS) - 1
_ZRAM_SAME = 1 << 13
_ZRAM_HUGE = 1 << 14
_ZRAM_IDLE = 1 << 15  # reserved: idle tracking
_ZRAM_WB = 1 << 16  # reserved: written back to the backing file
_ZRAM_INCOMPRESSIBLE = 1 << 17  # reserved: no secondary algorithm could shrink it
_ZRAM_DEDUP = 1 << 18  # reserved: shares its object with another slot
_ZRAM_COMP_PRIORITY_SHIFT = 19  # reserved: 2 bits, 0 = primary algorithm
_ZRAM_COMP_PRIORITY_MASK = 3 << _ZRAM_COMP_PRIORITY_SHIFT

# A huge slot's info: raw page, size 4096.
_HUGE_INFO = _ZRAM_HUGE | PAGE_SIZE
_ZERO_PAGE = bytes(PAGE_SIZE)
_WORDS_PER_PAGE = PAGE_SIZE // 8


class DeviceError(Exception):
    """Base class of the errors BlockDevice raises on its I/O path."""


class InvalidDiskSizeError(DeviceError, ValueError):
    """Raised when a BlockDevice is created with a disksize that is not a
    positive multiple of 4096."""


class InvalidMemLimitError(DeviceError, ValueError):
    """Raised when ``mem_limit`` is set to something other than an int >= 0."""


class OutOfRangeError(DeviceError):
    """Raised when a read, write or discard reaches outside [0, disksize]
    (or has a negative offset or length).  Counted in ``invalid_io``."""


class MemLimitError(DeviceError):
    """Raised when a write would take the pool past ``mem_limit`` (or past
    what the pool can hold at all).  Nothing stored changes.  Counted in
    ``failed_writes``; the FUSE layer answers ENOSPC, as zram's -ENOMEM
    becomes an I/O error for the writer."""


class CorruptedSlotError(DeviceError):
    """Raised when a stored object fails to decompress to a whole page.
    Counted in ``failed_reads`` (or ``failed_writes`` when it happens in a
    partial write's read-modify-write).  It means a bug or memory corruption."""


def _batch_codec(codec, native):
    """(compress_many, decompress_many) for ``codec``: a list of pages in, a
    list out, the loop run by map in C.

    For lz4 at its default level the library is called directly, with the
    positional arguments the codec's own functions use: that skips one
    Python call per page.  Measured, scripts/bench_device.py 1 MiB
    overwrite: 3.96 us per page direct, 4.21 through the codec's function
    (and, before the codec called lz4 positionally, the keyword dict cost
    365 -> 287 us per MiB compressing, 532 -> 476 decompressing).  ``native``: the
    codec is the one get_codec built (not one with its functions replaced).
    """
    if native and codec.name == "lz4" and codec.level in (None, 1):
        compress, decompress = lz4.block.compress, lz4.block.decompress

        def compress_many(pages):
            n = len(pages)
            return list(map(compress, pages, repeat("default", n), repeat(False, n)))

        def decompress_many(objs):
            return list(map(decompress, objs, repeat(PAGE_SIZE, len(objs))))

        return compress_many, decompress_many
    compress, decompress = codec.compress, codec.decompress
    return (lambda pages: list(map(compress, pages))), (lambda objs: list(map(decompress, objs)))


# An lz4 frame (lz4's doc/lz4_Frame_format.md) is a header, then blocks, each
# a 4-byte little-endian size and a raw lz4 block, then a zero word.  Every
# object lz4 stores here is a raw block of one page, so a run of them with
# those sizes between is a frame whose content is the pages in order, and
# lz4.frame.decompress turns it into one buffer in one call that holds the
# GIL only to start and end.  The header says independent blocks of at most
# 64 KiB, no checksums, and the content size, so the output is allocated
# once and a block that decompresses to anything but 4096 bytes fails the
# frame (ERROR_frameSize_wrong).  The pool builds the frame in its one copy
# out of the arena (Pool.gather).  Measured, 256 fio-like pages: one call
# per page 507 us, the frame 482 us, and the GIL is released once per
# request instead of 256 times, so the session's two reader threads decode
# two requests at once (see _session.py).
_FRAME_HEADER_SIZE = 15  # magic, FLG, BD, 8-byte content size, header checksum
_LE32 = [n.to_bytes(4, "little") for n in range(PAGE_SIZE + 1)]
_FRAME_END = bytes(4)
_frame_headers = {}


def _frame_header(count):
    """The lz4 frame header for ``count`` pages (lz4 writes it, checksum and
    all, once per count)."""
    header = _frame_headers.get(count)
    if header is None:
        header = lz4.frame.compress(
            bytes(count * PAGE_SIZE),
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            store_size=True,
        )[:_FRAME_HEADER_SIZE]
        _frame_headers[count] = header
    return header


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """A snapshot of the device's counters, named and ordered as zram's.

    The first nine fields are ``mm_stat``'s columns, the next four
    ``io_stat``'s, then zram's ``num_reads``/``num_writes`` (counted per 4 KiB
    block, as zram counted them per page).
    """

    orig_data_size: int  # bytes: pages stored (same-filled included) * 4096
    compr_data_size: int  # bytes of objects in the pool (a huge page counts 4096)
    mem_used_total: int  # pool pages * 4096, fragmentation included
    mem_limit: int  # bytes, 0 = no limit
    mem_used_max: int  # bytes: the most mem_used_total has been since reset
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int
    failed_reads: int
    failed_writes: int
    invalid_io: int
    notify_free: int
    num_reads: int
    num_writes: int


class BlockDevice:
    """A zram device of ``disksize`` bytes, in memory, compressed.

    ``algorithm`` is one of ``zramfs.codecs.CODECS``; ``mem_limit`` (bytes,
    0 = none) caps the pool like zram's ``mem_limit``; ``max_pages_per_zspage``
    is passed to the pool (zsmalloc's chain size).
    """

    def __init__(self, disksize, algorithm=DEFAULT_ALGORITHM, mem_limit=0, max_pages_per_zspage=8):
        if isinstance(disksize, bool) or not isinstance(disksize, int):
            raise InvalidDiskSizeError(f"disksize must be an int, not {disksize!r}")
        if disksize <= 0:
            raise InvalidDiskSizeError(f"disksize must be greater than 0, not {disksize}")
        if disksize & _PAGE_MASK:
            raise InvalidDiskSizeError(
                f"disksize {disksize} is not a multiple of {PAGE_SIZE} bytes (the page size)"
            )
        self._codec = get_codec(algorithm)
        self._native_codec = self._codec
        # lz4 and lz4hc both store raw lz4 blocks: longer reads decode as frames.
        self._lz4_frames = self._codec.name in ("lz4", "lz4hc")
        self._batch_src = self._batch = None
        self._limit_pages = self._limit_to_pages(mem_limit)
        # A write holds at most one new object per slot besides the slots'
        # old ones: at most 2 * nr_pages objects are alive.  The pool sizes
        # its reservation from that (1 TiB of address space without it).
        self._pool = Pool(
            max_pages_per_zspage=max_pages_per_zspage,
            max_objects=2 * (disksize >> PAGE_SHIFT),
        )
        self._huge_class_size = self._pool.huge_class_size

        self.disksize = disksize
        self.algorithm = self._codec.name
        nr_pages = disksize >> PAGE_SHIFT
        try:
            self._table = SlotTable(nr_pages)
        except SlotTableTooLargeError as exc:
            self._pool.close()
            raise InvalidDiskSizeError(str(exc)) from None
        self._handle = self._table.handle
        self._info = self._table.info
        self._lock = threading.Lock()
        # Only a page whose compressed form is this short can be same-filled
        # (a repeated 8-byte word compresses to a few dozen bytes with every
        # codec), so _encode_many checks just those pages word by word
        # instead of every page.  Twice the longest of a few same-filled
        # pages, for margin; a same-filled page that still compressed longer
        # would only be stored compressed, not lost.
        self._same_max = 2 * max(
            len(self._codec.compress(word * _WORDS_PER_PAGE))
            for word in (bytes(8), b"\xff" * 8, bytes(range(1, 9)), b"\x9e\x37\x79\xb9\x7f\x4a\x7c\x15")
        )

        # Counters, all guarded by _lock.
        self._pages_stored = 0
        self._compr_data_size = 0
        self._same_pages = 0
        self._huge_pages = 0
        self._huge_pages_since = 0
        self._max_used_pages = 0
        # Counted here, not read from pool.stats() (250 us: it builds a
        # record per size class); only compact() below compacts this pool.
        self._pages_compacted = 0
        self._failed_reads = 0
        self._failed_writes = 0
        self._invalid_io = 0
        self._notify_free = 0
        self._num_reads = 0
        self._num_writes = 0

    def close(self):
        """Give the pool's memory back.  The device is unusable afterwards."""
        with self._lock:
            self._pool.close()
            self._table.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<BlockDevice disksize={self.disksize} algorithm={self.algorithm}>"

    # --- limits -------------------------------------------------------------

    @staticmethod
    def _limit_to_pages(mem_limit):
        if isinstance(mem_limit, bool) or not isinstance(mem_limit, int):
            raise InvalidMemLimitError(f"mem_limit must be an int, not {mem_limit!r}")
        if mem_limit < 0:
            raise InvalidMemLimitError(f"mem_limit must be 0 or more bytes, not {mem_limit}")
        # zram rounds the limit up to whole pages (PAGE_ALIGN) and reports it so.
        return (mem_limit + _PAGE_MASK) >> PAGE_SHIFT

    @property
    def mem_limit(self):
        """The most memory the pool may use, in bytes (a whole number of
        pages, rounded up when set); 0 means no limit.  Lowering it below
        what is in use keeps the stored data and fails later writes."""
        return self._limit_pages << PAGE_SHIFT

    @mem_limit.setter
    def mem_limit(self, mem_limit):
        pages = self._limit_to_pages(mem_limit)
        with self._lock:
            self._limit_pages = pages

    def _check_range(self, offset, length, op):
        if (
            isinstance(offset, int)
            and isinstance(length, int)
            and offset >= 0
            and length >= 0
            and offset + length <= self.disksize
        ):
            return
        offset = operator.index(offset)
        length = operator.index(length)
        with self._lock:
            self._invalid_io += 1
        raise OutOfRangeError(
            f"{op} of {length} bytes at offset {offset} is outside the device "
            f"(disksize {self.disksize})"
        )

    # --- pages ----------------------------------------------------------------

    def _encode(self, page):
        """Turn one 4096-byte page into (info, payload), outside the lock.

        payload is the same-filled word (int), the compressed bytes, or the
        page itself for a huge slot.
        """
        # Most pages differ in their first and last words; comparing those
        # (0.15 us on a memoryview) spares building and comparing a 4 KiB
        # pattern.  Only then compare whole bytes: memcmp is 0.25 us for a
        # page, while == between two memoryviews goes element by element (7 us).
        if page[:8] == page[PAGE_SIZE - 8 :]:
            raw = bytes(page)
            if raw == raw[:8] * _WORDS_PER_PAGE:
                return _ZRAM_SAME, int.from_bytes(raw[:8], "little")
        data = self._codec.compress(page)
        if len(data) >= self._huge_class_size:
            return _HUGE_INFO, page
        return len(data), data

    def _codec_batch(self):
        """_batch_codec(self._codec), rebuilt if the codec was replaced."""
        codec = self._codec
        if codec is not self._batch_src:
            self._batch = _batch_codec(codec, codec is self._native_codec)
            self._batch_src = codec
        return self._batch

    def _encode_many(self, pages):
        """[_encode(page) for page in pages], with the compression loop run
        by map, and the same-filled check only for pages that compressed
        very short.

        Not split across two threads: a helper thread compressing half of
        each 1 MiB request measured slower (fio seq write through loop, 549
        -> 357 MB/s; seq read 811 -> 661 MB/s): every lz4 call releases and
        retakes the GIL, so the two threads hand it over ~256 times per
        request, each a futex wake-up on a busy 2-core machine."""
        return self._classify(self._codec_batch()[0](pages), pages)

    def _classify(self, compressed, pages):
        """The (info, payload) of each page, given its compressed form."""
        same_max = self._same_max
        huge = self._huge_class_size
        encoded = []
        append = encoded.append
        for data, page in zip(compressed, pages):
            size = len(data)
            if size <= same_max:
                raw = bytes(page)
                if raw == raw[:8] * _WORDS_PER_PAGE:
                    append((_ZRAM_SAME, int.from_bytes(raw[:8], "little")))
                    continue
            if size >= huge:
                append((_HUGE_INFO, page))
            else:
                append((size, data))
        return encoded

    def _decode(self, info, payload):
        """The page a slot holds, from its info and what _snapshot copied."""
        if info & _SIZE_MASK:
            if info & _ZRAM_HUGE:
                return payload
            try:
                page = self._codec.decompress(payload)
            except Exception as exc:  # each library has its own error type
                raise CorruptedSlotError(f"a stored object failed to decompress: {exc}") from exc
            if len(page) != PAGE_SIZE:
                raise CorruptedSlotError(
                    f"a stored object decompressed to {len(page)} bytes, not {PAGE_SIZE}"
                )
            return page
        if info:
            return payload.to_bytes(8, "little") * _WORDS_PER_PAGE
        return _ZERO_PAGE

    def _snapshot(self, first, end):
        """Under the lock: (info, payload) of slots [first, end), with the
        pool objects copied out so the caller may decompress after unlocking."""
        read = self._pool.read
        infos = self._info[first:end]
        handles = self._handle[first:end]
        return [
            (info, read(handle) if info & _SIZE_MASK else handle)
            for info, handle in zip(infos, handles)
        ]

    def _load_locked(self, index):
        """Under the lock: the current page of slot ``index``."""
        info = self._info[index]
        handle = self._handle[index]
        payload = self._pool.read(handle) if info & _SIZE_MASK else handle
        return self._decode(info, payload)

    def _rmw_locked(self, index, start, data):
        """Under the lock: the encoded page of slot ``index`` with bytes
        [start, start + len(data)) replaced by ``data``."""
        page = bytearray(self._load_locked(index))
        page[start : start + len(data)] = data
        return self._encode(page)

    # --- the write path ---------------------------------------------------------

    def _commit_locked(self, first, encoded):
        """Under the lock: store ``encoded``, a list of (info, payload) from
        _encode, into slots first, first + 1, ...

        All new objects are allocated and written before any slot changes.
        If the pool would pass mem_limit (or is full) they are freed again and
        MemLimitError is raised, so a write lands whole or not at all.  The
        cost: for the length of one call the pool holds a write's new and old
        objects together (at most 1 MiB more), as zram holds both for a page.
        """
        objs = [payload for info, payload in encoded if info & _SIZE_MASK]
        new_handles = self._store_objs_locked(objs) if objs else []
        self._install_locked(first, encoded, new_handles)

    def _store_objs_locked(self, objs):
        """Under the lock: the new pool objects of a commit, all or none
        (MemLimitError, counted in failed_writes); updates mem_used_max."""
        pool = self._pool
        limit = self._limit_pages
        # One lock round in the pool for the whole request (store_many,
        # free_many), not two or three per block: 1 MiB overwrite of fio-like
        # data, 1800 -> 1540 us.
        try:
            new_handles = pool.store_many(objs, limit) if objs else []
        except PoolFullError as exc:
            self._failed_writes += 1
            raise MemLimitError(f"write would take the pool past its size: {exc}") from exc
        except PoolLimitError as exc:
            # zram checks right after zs_malloc whether this allocation
            # took the pool past the limit ("alloced_pages > limit_pages");
            # store_many did, and freed what it had stored.
            self._failed_writes += 1
            raise MemLimitError(
                f"write would take the pool to {exc.pages_used * PAGE_SIZE} bytes, "
                f"past mem_limit {limit * PAGE_SIZE}"
            ) from exc

        # The peak is now, with the new and the old objects both in the pool.
        used = pool.pages_used
        if used > self._max_used_pages:
            self._max_used_pages = used
        return new_handles

    def _install_locked(self, first, encoded, new_handles):
        """Under the lock: point slots first, first + 1, ... at ``encoded``
        (new_handles: the pool objects of its non-same slots, in order) and
        free the objects they held."""
        infos = self._info
        handles = self._handle
        old_objs = []
        new_objs = iter(new_handles)
        stored = same = huge = compr = 0
        index = first
        for info, payload in encoded:
            old = infos[index]
            if old:
                size = old & _SIZE_MASK
                if size:
                    old_objs.append(handles[index])
                    compr -= size
                    if old & _ZRAM_HUGE:
                        huge -= 1
                elif old & _ZRAM_SAME:
                    same -= 1
            else:
                stored += 1
            infos[index] = info
            size = info & _SIZE_MASK
            if size:
                handles[index] = next(new_objs)
                compr += size
                if info & _ZRAM_HUGE:
                    huge += 1
                    self._huge_pages_since += 1
            else:
                handles[index] = payload  # the same-filled word
                same += 1
            index += 1
        if old_objs:
            self._pool.free_many(old_objs)
        self._pages_stored += stored
        self._same_pages += same
        self._huge_pages += huge
        self._compr_data_size += compr

    def _commit_plain_locked(self, first, sizes, objs):
        """Under the lock: _commit_locked for slots that all get an ordinary
        compressed object (``sizes``: array('I') of their sizes, none
        same-filled or huge): the common 1 MiB write, done with array
        slices instead of a Python loop per slot when the old slots are all
        empty or ordinary too (1 MiB overwrite: install 250 -> 30 us)."""
        new_handles = self._store_objs_locked(objs)
        end = first + len(sizes)
        infos = self._info
        old = infos[first:end].tolist()  # a copy: the slots change below
        if max(old) >= PAGE_SIZE:  # some old slot is same-filled or huge
            self._install_locked(first, list(zip(sizes, objs)), new_handles)
            return
        handles = self._handle
        old_handles = handles[first:end].tolist()
        infos[first:end] = sizes
        handles[first:end] = array("Q", new_handles)
        empty = old.count(0)
        if empty:
            old_handles = [h for i, h in zip(old, old_handles) if i]
        if old_handles:
            self._pool.free_many(old_handles)
        self._pages_stored += empty
        self._compr_data_size += sum(sizes) - sum(old)

    def _store_locked(self, index, info, payload):
        """Under the lock: _commit_locked for one slot, without the lists.
        (The same steps in the same order; the model test runs both.)"""
        pool = self._pool
        size = info & _SIZE_MASK
        infos = self._info
        old = infos[index]
        limit = self._limit_pages
        if (
            size
            and old & _SIZE_MASK
            and not (old | info) & _ZRAM_HUGE
            and (not limit or pool.pages_used <= limit)
        ):
            # Rewritten with a compressed size of the same class (most
            # rewrites of a 4 KiB block): the object keeps its slot, no free
            # and no malloc (4 KiB rewrite 5.8 -> 4.0 us, BENCHMARKS.md).
            # A pool already past mem_limit takes the path below and fails
            # there, as zram's write does whatever the old object frees.
            if pool.replace(self._handle[index], payload):
                infos[index] = info
                self._compr_data_size += size - (old & _SIZE_MASK)
                return
        if size:
            try:
                handle = pool.store(payload)  # malloc + write, one lock round
            except PoolFullError as exc:
                self._failed_writes += 1
                raise MemLimitError(f"write would take the pool past its size: {exc}") from exc
            used = pool.pages_used
            if limit and used > limit:
                pool.free(handle)
                self._failed_writes += 1
                raise MemLimitError(
                    f"write would take the pool to {used * PAGE_SIZE} bytes, "
                    f"past mem_limit {limit * PAGE_SIZE}"
                )
            if used > self._max_used_pages:
                self._max_used_pages = used
            self._compr_data_size += size
            if info & _ZRAM_HUGE:
                self._huge_pages += 1
                self._huge_pages_since += 1
        else:
            handle = payload
            self._same_pages += 1
        handles = self._handle
        old_handle = handles[index]
        infos[index] = info
        handles[index] = handle
        if old:
            size = old & _SIZE_MASK
            if size:
                pool.free(old_handle)
                self._compr_data_size -= size
                if old & _ZRAM_HUGE:
                    self._huge_pages -= 1
            elif old & _ZRAM_SAME:
                self._same_pages -= 1
        else:
            self._pages_stored += 1

    def _free_locked(self, first, end):
        """Under the lock: empty slots [first, end), freeing their objects."""
        infos = self._info
        handles = self._handle
        free = self._pool.free
        stored = same = huge = compr = 0
        for index in range(first, end):
            old = infos[index]
            if not old:
                continue
            stored += 1
            size = old & _SIZE_MASK
            if size:
                free(handles[index])
                compr += size
                if old & _ZRAM_HUGE:
                    huge += 1
            elif old & _ZRAM_SAME:
                same += 1
            infos[index] = 0
            handles[index] = 0
        self._pages_stored -= stored
        self._same_pages -= same
        self._huge_pages -= huge
        self._compr_data_size -= compr

    def write(self, offset, data):
        """Store ``data`` (any bytes-like object) at byte ``offset``.

        Any offset and length inside the device; partial blocks are
        read-modified-written.  Raises OutOfRangeError past disksize and
        MemLimitError when the pool would pass mem_limit; in both cases
        nothing stored changes.
        """
        view = memoryview(data).cast("B")
        length = len(view)
        self._check_range(offset, length, "write")
        if length == PAGE_SIZE and not offset & _PAGE_MASK:
            # One aligned block (swap, a 4 KiB-sector loop device).
            info, payload = self._encode(view)
            with self._lock:
                self._num_writes += 1
                self._store_locked(offset >> PAGE_SHIFT, info, payload)
            return
        if not length:
            return
        end = offset + length
        first = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT  # inclusive
        head = offset & _PAGE_MASK
        tail = end & _PAGE_MASK
        partial = first == last and (head or tail)
        # Whole blocks are encoded here, outside the lock, from memoryview
        # slices of the caller's buffer (no copy).
        encoded = []
        if not partial:
            pos = (-offset) & _PAGE_MASK  # where the first whole block starts in data
            stop = length - tail
            if pos < stop:
                pages = [view[p : p + PAGE_SIZE] for p in range(pos, stop, PAGE_SIZE)]
                compressed = self._codec_batch()[0](pages)
                sizes = array("I", map(len, compressed))
                if (
                    not head
                    and not tail
                    and min(sizes) > self._same_max
                    and max(sizes) < self._huge_class_size
                ):
                    # Whole blocks, each an ordinary compressed object (no
                    # same-filled or huge page): no per-page Python loop.
                    with self._lock:
                        self._num_writes += len(sizes)
                        self._commit_plain_locked(first, sizes, compressed)
                    return
                encoded = self._classify(compressed, pages)

        with self._lock:
            self._num_writes += last - first + 1
            try:
                if partial:
                    encoded.append(self._rmw_locked(first, head, view))
                else:
                    if head:
                        encoded.insert(0, self._rmw_locked(first, head, view[: PAGE_SIZE - head]))
                    if tail:
                        encoded.append(self._rmw_locked(last, 0, view[length - tail :]))
            except CorruptedSlotError:
                self._failed_writes += 1
                raise
            self._commit_locked(first, encoded)

    # --- the read path ----------------------------------------------------------

    def read(self, offset, length):
        """Return ``length`` bytes from byte ``offset``.  Never-written or
        discarded blocks read as zeros.  OutOfRangeError past disksize."""
        self._check_range(offset, length, "read")
        if length == PAGE_SIZE and not offset & _PAGE_MASK:
            # One aligned block: what swap and a 4 KiB-sector loop device
            # send.  The same steps as below, without the lists.
            index = offset >> PAGE_SHIFT
            with self._lock:
                self._num_reads += 1
                info = self._info[index]
                payload = self._handle[index]
                if info & _SIZE_MASK:
                    payload = self._pool.read(payload)
            try:
                return self._decode(info, payload)
            except CorruptedSlotError:
                with self._lock:
                    self._failed_reads += 1
                raise
        if not length:
            return b""
        parts = self.read_parts(offset, length)
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)

    def read_parts(self, offset, length):
        """``read(offset, length)`` as a list of bytes-like pieces, in order,
        without joining them: the FUSE layer hands the list to ``writev``,
        so a 1 MiB read is never copied into one more buffer (that copy,
        and the page faults of a fresh 1 MiB buffer, cost ~0.5 ms per MiB
        here).  A piece is a page, or a run of pages decoded as one lz4
        frame, or a memoryview of either cut at an unaligned edge."""
        self._check_range(offset, length, "read")
        if not length:
            return []
        end = offset + length
        first = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT
        count = last - first + 1
        objs = frame = None
        lz4_frames = self._lz4_frames and self._codec is self._native_codec
        with self._lock:
            self._num_reads += count
            infos = self._info[first : last + 1]
            # Every slot an ordinary compressed object (0 < info < 4096: a
            # size, no flag): the common case, done in C (lz4 frames, or
            # read_many and map).
            if min(infos) and max(infos) < PAGE_SIZE:
                handles = self._handle[first : last + 1]
                if lz4_frames and count > 1:
                    frame = self._pool.gather(handles, _LE32, _frame_header(count), _FRAME_END)
                else:
                    objs = self._pool.read_many(handles)
            else:
                slots = self._snapshot(first, last + 1)
        try:
            pages = None
            if frame is not None:
                try:
                    pages = [lz4.frame.decompress(frame)]
                except RuntimeError:
                    # Some object is bad: the per-page path below names it.
                    with self._lock:
                        slots = self._snapshot(first, last + 1)
            elif objs is not None:
                pages = self._decompress_many(objs)
            if pages is None:
                decode = self._decode
                pages = [decode(info, payload) for info, payload in slots]
        except CorruptedSlotError:
            with self._lock:
                self._failed_reads += 1
            raise
        # Cut the bytes before offset and after end off the edge pieces
        # (pieces are whole pages, so the cuts fall in the first and last).
        head = offset & _PAGE_MASK
        cut = -end & _PAGE_MASK
        if head or cut:
            if len(pages) == 1:
                piece = pages[0]
                pages[0] = memoryview(piece)[head : len(piece) - cut]
            else:
                if head:
                    pages[0] = memoryview(pages[0])[head:]
                if cut:
                    piece = pages[-1]
                    pages[-1] = memoryview(piece)[: len(piece) - cut]
        return pages

    def _decompress_many(self, objs):
        """Decompress compressed objects to pages, the loop run by map (lz4
        reads of more than a page go as frames instead: read_parts)."""
        try:
            pages = self._codec_batch()[1](objs)
        except Exception as exc:  # each library has its own error type
            raise CorruptedSlotError(f"a stored object failed to decompress: {exc}") from exc
        if sum(map(len, pages)) != len(pages) * PAGE_SIZE:
            for page in pages:
                if len(page) != PAGE_SIZE:
                    raise CorruptedSlotError(
                        f"a stored object decompressed to {len(page)} bytes, not {PAGE_SIZE}"
                    )
        return pages

    # --- discard ----------------------------------------------------------------

    # Discard frees whole blocks this many at a time, letting go of the lock in
    # between, so that an fstrim of a large device does not stall other I/O.
    _DISCARD_BATCH = 4096

    def discard(self, offset, length):
        """Free the blocks that [offset, offset + length) covers whole, and
        zero the parts of blocks at its edges (read-modify-write).

        Each whole block covered counts once in ``notify_free``, whether or
        not it held data -- zram's zram_bio_discard counts the same way.
        The whole blocks are freed first, so the edges' new objects can use
        the memory they gave back; if an edge then fails (MemLimitError), the
        whole blocks stay discarded.
        """
        self._check_range(offset, length, "discard")
        if not length:
            return
        end = offset + length
        first = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT
        head = offset & _PAGE_MASK
        tail = end & _PAGE_MASK
        if first == last and (head or tail):
            edges = ((first, head, length),)
        else:
            edges = []
            if head:
                edges.append((first, head, PAGE_SIZE - head))
            if tail:
                edges.append((last, 0, tail))
            whole_first = first + 1 if head else first
            whole_end = last if tail else last + 1
            info_bytes = self._table.info_bytes
            for start in range(whole_first, whole_end, self._DISCARD_BATCH):
                stop = min(start + self._DISCARD_BATCH, whole_end)
                with self._lock:
                    # Skip a batch of empty slots at memcmp speed (== between
                    # memoryviews would compare element by element).
                    if info_bytes[start * 4 : stop * 4].tobytes() != bytes((stop - start) * 4):
                        self._free_locked(start, stop)
                        self._table.release(start, stop)
                    self._notify_free += stop - start
        for index, start, size in edges:
            with self._lock:
                if not self._info[index]:
                    continue  # an empty slot already reads as zeros
                try:
                    encoded = [self._rmw_locked(index, start, bytes(size))]
                except CorruptedSlotError:
                    self._failed_writes += 1
                    raise
                self._commit_locked(index, encoded)

    # --- maintenance and stats ----------------------------------------------------

    def compact(self):
        """Run pool compaction (zram's ``compact``).  Returns pages freed."""
        # Compaction moves objects under the pool's own lock and keeps
        # handles valid, so the slot table needs no change and no device lock.
        freed = self._pool.compact()
        with self._lock:
            self._pages_compacted += freed
        return freed

    @property
    def populate_wanted(self):
        """Whether populate_ahead has work (no lock: a hint)."""
        return self._pool.populate_wanted

    def populate_ahead(self):
        """Fault in the pages of one zspage that coming writes will take,
        within mem_limit (``Pool.populate_ahead``); True if it did.  For a
        caller with nothing else to do: the FUSE session between requests."""
        return self._pool.populate_ahead(self._limit_pages)

    def reset_mem_used_max(self):
        """Restart ``mem_used_max`` from the current use (writing 0 to zram's
        ``mem_used_max`` does this)."""
        with self._lock:
            self._max_used_pages = self._pool.pages_used

    def stats(self):
        """A consistent DeviceStats snapshot (a few us: cheap enough for
        every getattr)."""
        with self._lock:
            used = self._pool.pages_used
            return DeviceStats(
                orig_data_size=self._pages_stored << PAGE_SHIFT,
                compr_data_size=self._compr_data_size,
                mem_used_total=used << PAGE_SHIFT,
                mem_limit=self._limit_pages << PAGE_SHIFT,
                mem_used_max=max(self._max_used_pages, used) << PAGE_SHIFT,
                same_pages=self._same_pages,
                pages_compacted=self._pages_compacted,
                huge_pages=self._huge_pages,
                huge_pages_since=self._huge_pages_since,
                failed_reads=self._failed_reads,
                failed_writes=self._failed_writes,
                invalid_io=self._invalid_io,
                notify_free=self._notify_free,
                num_reads=self._num_reads,
                num_writes=self._num_writes,
            )

    def mm_stat(self):
        """zram's ``mm_stat`` line: nine columns, as mm_stat_show prints them
        ("%8llu %8llu %8llu %8lu %8ld %8llu %8lu %8llu %8llu\\n")."""
        s = self.stats()
        return "%8d %8d %8d %8d %8d %8d %8d %8d %8d\n" % (
            s.orig_data_size,
            s.compr_data_size,
            s.mem_used_total,
            s.mem_limit,
            s.mem_used_max,
            s.same_pages,
            s.pages_compacted,
            s.huge_pages,
            s.huge_pages_since,
        )

    def io_stat(self):
        """zram's ``io_stat`` line: failed_reads failed_writes invalid_io
        notify_free ("%8llu %8llu %8llu %8llu\\n")."""
        s = self.stats()
        return "%8d %8d %8d %8d\n" % (
            s.failed_reads,
            s.failed_writes,
            s.invalid_io,
            s.notify_free,
        )
