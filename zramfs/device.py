"""BlockDevice: zram's block device over a slot table and a zsmalloc-style pool.

Where this sits in the data flow::

    kernel FUSE -> zramfs.fuse -> zramfs.fs -> zramfs.device (this module)
                                                  |-> zramfs._slots (the slot table)
                                                  |-> zramfs._codec_batch -> zramfs.codecs
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

The slot table's layout, flags and states are ``zramfs._slots``'s.  Every
change of a slot's state -- a write of one block or of 256, a partial
block's read-modify-write, a discard -- goes through one method,
``_commit_locked``: it stores the new objects (all or none, checked against
``mem_limit``), points the slots at them, frees the old objects and has the
table count the change (``SlotTable.account``).  Only reads take other
paths, and they change no slot.

Concurrency rule
----------------
``self._lock`` guards the slot table, every counter, and each sequence of pool
calls that must look atomic (allocating a write's new objects, checking
``mem_limit``, installing them, freeing the old ones).  The lock order is
device lock, then the pool's own lock (taken inside each ``Pool`` call); the
pool never calls back up.  Compressing and decompressing -- the expensive
part -- happen outside the lock: a write compresses its whole blocks before it
takes the lock, and a read copies the compressed bytes out of the pool under
the lock (``pool.read``, ``pool.gather``) and decompresses them after
releasing it.  The one exception is the (at most two) partial edge blocks of
an unaligned write or discard: their read-modify-write runs entirely under
the lock, so that two unaligned writes into different bytes of one block
cannot lose each other.  A discard takes the lock once per 4096 whole
blocks, so an fstrim of a large device does not stall other I/O;
``compact()`` takes only the pool's lock (compaction moves objects but keeps
handles valid).  Nothing under the lock waits on I/O, sleeps, or calls back
into fs or fuse.  Concurrent writes to the same block land in some order,
each block whole, as on any block device.
"""

import operator
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from allocator import PAGE_SHIFT, PAGE_SIZE, Pool, PoolFullError, PoolLimitError

from ._codec_batch import BatchCodec
from ._slots import (
    COMP_PRIORITY_MASK,
    HUGE,
    HUGE_INFO,
    IDLE,
    INCOMPRESSIBLE,
    SAME,
    SIZE_MASK,
    WB,
    SlotTable,
    SlotTableTooLargeError,
)
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
    "classes_table",
    "debug_stat_text",
    "io_stat_line",
    "mm_stat_line",
]

_PAGE_MASK = PAGE_SIZE - 1
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


def _undecodable(exc):
    return CorruptedSlotError(f"a stored object failed to decompress: {exc}")


def _wrong_length(page):
    return CorruptedSlotError(f"a stored object decompressed to {len(page)} bytes, not {PAGE_SIZE}")


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

    ``algorithm`` is one of ``zramfs.codecs.CODECS``, or ``codec`` a
    ``zramfs.codecs.Codec`` to use instead (another level, or one a caller
    built); ``mem_limit`` (bytes, 0 = none) caps the pool like zram's
    ``mem_limit``; ``max_pages_per_zspage`` is passed to the pool (zsmalloc's
    chain size).
    """

    def __init__(self, disksize, algorithm=DEFAULT_ALGORITHM, mem_limit=0, max_pages_per_zspage=8,
                 codec=None):
        if isinstance(disksize, bool) or not isinstance(disksize, int):
            raise InvalidDiskSizeError(f"disksize must be an int, not {disksize!r}")
        if disksize <= 0:
            raise InvalidDiskSizeError(f"disksize must be greater than 0, not {disksize}")
        if disksize & _PAGE_MASK:
            raise InvalidDiskSizeError(
                f"disksize {disksize} is not a multiple of {PAGE_SIZE} bytes (the page size)"
            )
        self._codec = codec if codec is not None else get_codec(algorithm)
        self._batch = BatchCodec(self._codec)
        self._limit_pages = self._limit_to_pages(mem_limit)
        nr_pages = disksize >> PAGE_SHIFT
        # A write holds at most one new object per slot besides the slots'
        # old ones: at most 2 * nr_pages objects are alive.  The pool sizes
        # its reservation from that (1 TiB of address space without it).
        self._pool = Pool(max_pages_per_zspage=max_pages_per_zspage, max_objects=2 * nr_pages)
        self._huge_class_size = self._pool.huge_class_size
        try:
            self._table = SlotTable(nr_pages)
        except SlotTableTooLargeError as exc:
            self._pool.close()
            raise InvalidDiskSizeError(str(exc)) from None

        self.disksize = disksize
        self.algorithm = self._codec.name
        self._lock = threading.Lock()
        # Only a page whose compressed form is this short can be same-filled
        # (a repeated 8-byte word compresses to a few dozen bytes with every
        # codec), so _classify checks just those pages word by word instead
        # of every page.  Twice the longest of a few same-filled pages, for
        # margin; a same-filled page that still compressed longer would only
        # be stored compressed, not lost.
        words = (bytes(8), b"\xff" * 8, bytes(range(1, 9)), bytes.fromhex("9e3779b97f4a7c15"))
        self._same_max = 2 * max(
            len(self._codec.compress(word * _WORDS_PER_PAGE)) for word in words
        )

        # Counters besides the slot table's own, all guarded by _lock.
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
        """Give the pool's and the slot table's memory back.  The device is
        unusable afterwards."""
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

    # --- pages: encode outside the lock, decode after it -----------------------

    def _classify(self, data, page):
        """The (info, payload) of ``page``, given its compressed form ``data``:
        payload is the same-filled word (int), the compressed bytes, or the
        page itself for a huge slot."""
        size = len(data)
        if size <= self._same_max:
            # memcmp on bytes (0.25 us a page); == between memoryviews
            # would go element by element (7 us).
            raw = bytes(page)
            if raw == raw[:8] * _WORDS_PER_PAGE:
                return SAME, int.from_bytes(raw[:8], "little")
        if size >= self._huge_class_size:
            return HUGE_INFO, page
        return size, data

    def _encode_many(self, compressed, pages):
        """([info], [payload]) of ``pages``, given their compressed forms.

        Pages are compressed by one BatchCodec call, in one thread: a helper
        thread compressing half of each 1 MiB request measured slower (fio
        seq write through loop, 549 -> 357 MB/s; seq read 811 -> 661 MB/s):
        every lz4 call releases and retakes the GIL, so the two threads hand
        it over ~256 times per request, each a futex wake-up on a busy
        2-core machine."""
        infos = []
        payloads = []
        classify = self._classify
        for data, page in zip(compressed, pages):
            info, payload = classify(data, page)
            infos.append(info)
            payloads.append(payload)
        return infos, payloads

    def _decode(self, info, payload):
        """The page a slot holds, from its info and what _snapshot copied."""
        if info & SIZE_MASK:
            if info & HUGE:
                return payload
            return self._decompress(payload)
        if info & SAME:
            return payload.to_bytes(8, "little") * _WORDS_PER_PAGE
        return _ZERO_PAGE

    def _decompress(self, obj):
        """One object's page; CorruptedSlotError if it is not one."""
        try:
            page = self._codec.decompress(obj)
        except Exception as exc:  # each library has its own error type
            raise _undecodable(exc) from exc
        if len(page) != PAGE_SIZE:
            raise _wrong_length(page)
        return page

    def _decompress_many(self, objs):
        """The pages of ``objs``, the loop run by map (lz4 reads of more
        than a page go as frames instead: read_parts)."""
        try:
            pages = self._batch.decompress_many(objs)
        except Exception as exc:  # each library has its own error type
            raise _undecodable(exc) from exc
        if sum(map(len, pages)) != len(pages) * PAGE_SIZE:
            raise _wrong_length(next(page for page in pages if len(page) != PAGE_SIZE))
        return pages

    def _snapshot(self, first, end):
        """Under the lock: (info, payload) of slots [first, end), with the
        pool objects copied out so the caller may decompress after unlocking."""
        read = self._pool.read
        table = self._table
        return [
            (info, read(handle) if info & SIZE_MASK else handle)
            for info, handle in zip(table.info[first:end], table.handle[first:end])
        ]

    def _rmw_locked(self, index, start, data):
        """Under the lock: the (info, payload) of slot ``index``'s page with
        bytes [start, start + len(data)) replaced by ``data``."""
        ((info, payload),) = self._snapshot(index, index + 1)
        page = bytearray(self._decode(info, payload))
        page[start : start + len(data)] = data
        return self._classify(self._codec.compress(page), page)

    # --- the one change of state --------------------------------------------------

    def _commit_locked(self, first, infos, payloads):
        """Under the lock: slots first, first + 1, ... take the info words
        ``infos`` (from _classify, or 0 to empty them) with ``payloads``
        (an object's bytes, a same-filled slot's word; ignored for empty).

        The only way a slot changes.  New objects are stored first, all or
        none; if the pool would pass mem_limit (or is full) MemLimitError is
        raised and nothing changed, so a write lands whole or not at all.
        Then the slots point at them, the old objects are freed, and
        SlotTable.account counts the change.  The cost: for the length of
        one call the pool holds a write's new and old objects together (at
        most 1 MiB more), as zram holds both for a page.

        When every new slot is an ordinary object, or every one empty, the
        slots are written as slices, with no Python loop per slot (1 MiB
        overwrite: install 250 -> 30 us); ``infos`` is then best an
        array('I'), as the write path's is.
        """
        table = self._table
        slot_infos = table.info
        handles = table.handle
        count = len(infos)
        end = first + count
        # What the slots hold now (a copy: they change below), and the
        # largest info word on each side: below PAGE_SIZE means no flag.
        old: Sequence[int]
        if count == 1:  # a 4 KiB write or an edge: no min/max over one item
            top = infos[0]
            old = (slot_infos[first],)
            old_top = old[0]
            uniform = top < PAGE_SIZE
        else:
            top = max(infos)
            old = slot_infos[first:end].tolist()
            old_top = max(old)
            uniform = top < PAGE_SIZE and (not top or min(infos))
        # uniform: every new slot an ordinary object (0 < info < PAGE_SIZE),
        # or every one empty; written as slices below.
        pool = self._pool
        if count == 1 and uniform and top and 0 < old_top < PAGE_SIZE:
            # One block rewritten with a compressed size of the same class
            # (most rewrites of a 4 KiB block): the object keeps its slot, no
            # free and no malloc (4 KiB rewrite 6.56 -> 4.50 us per page).  A
            # pool already past mem_limit takes the path below and fails
            # there, as zram's write does whatever the old object frees.
            limit = self._limit_pages
            fits = not limit or pool.pages_used <= limit
            if fits and pool.replace(handles[first], payloads[0]):
                slot_infos[first] = top
                table.account(old, infos)
                return
        objs: Sequence
        if not top:
            objs = ()
        elif uniform:
            objs = payloads
        else:
            objs = [payload for info, payload in zip(infos, payloads) if info & SIZE_MASK]
        new_handles: Sequence[int] = self._store_locked(objs) if objs else ()

        dead: Sequence[int]
        if not old_top:
            dead = ()
        elif old_top < PAGE_SIZE and (count == 1 or min(old)):  # all ordinary objects
            dead = handles[first:end].tolist()
        else:
            dead = [handle for info, handle in zip(old, handles[first:end]) if info & SIZE_MASK]
        if not uniform:
            new = iter(new_handles)
            for index, info, payload in zip(range(first, end), infos, payloads):
                slot_infos[index] = info
                # An object's handle, a same-filled slot's word, or 0.
                handles[index] = next(new) if info & SIZE_MASK else payload if info & SAME else 0
        elif count == 1:
            slot_infos[first] = top
            handles[first] = new_handles[0] if top else 0
        else:
            slot_infos[first:end] = infos if type(infos) is array else array("I", infos)
            handles[first:end] = array("Q", new_handles) if top else array("Q", bytes(8 * count))
        if dead:
            pool.free_many(dead)
        table.account(old, infos)

    def _store_locked(self, objs):
        """Under the lock: new pool objects for ``objs``, all or none, in one
        pool lock round (1 MiB overwrite of fio-like data: 1800 -> 1540 us
        against two or three rounds per block); updates mem_used_max.
        MemLimitError, counted in failed_writes, past mem_limit or a full pool."""
        pool = self._pool
        limit = self._limit_pages
        new_handles: Sequence[int]
        try:
            if limit or len(objs) > 1:
                new_handles = pool.store_many(objs, limit)
            else:
                # One object and no limit to check (a 4 KiB write with
                # mem_limit 0): store skips store_many's list and check,
                # 0.36 us of a 6.5 us write.
                new_handles = (pool.store(objs[0]),)
        except PoolFullError as exc:
            raise self._limit_error(f"write would take the pool past its size: {exc}") from exc
        except PoolLimitError as exc:
            # zram checks right after zs_malloc whether this allocation took
            # the pool past the limit ("alloced_pages > limit_pages");
            # store_many did, and freed what it had stored.
            raise self._limit_error(
                f"write would take the pool to {exc.pages_used * PAGE_SIZE} bytes, "
                f"past mem_limit {limit * PAGE_SIZE}"
            ) from exc
        # The peak is now, with the new and the old objects both in the pool.
        used = pool.pages_used
        if used > self._max_used_pages:
            self._max_used_pages = used
        return new_handles

    def _limit_error(self, message):
        """Under the lock: a write refused for memory, counted in failed_writes."""
        self._failed_writes += 1
        return MemLimitError(message)

    # --- the write path ---------------------------------------------------------

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
            info, payload = self._classify(self._codec.compress(view), view)
            with self._lock:
                self._num_writes += 1
                self._commit_locked(offset >> PAGE_SHIFT, (info,), (payload,))
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
        infos = []
        payloads = []
        if not partial:
            pos = (-offset) & _PAGE_MASK  # where the first whole block starts in data
            stop = length - tail
            if pos < stop:
                pages = [view[p : p + PAGE_SIZE] for p in range(pos, stop, PAGE_SIZE)]
                compressed = self._batch.compress_many(pages)
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
                        self._commit_locked(first, sizes, compressed)
                    return
                infos, payloads = self._encode_many(compressed, pages)

        with self._lock:
            self._num_writes += last - first + 1
            try:
                edges: Sequence[tuple[int, int, int, memoryview]]
                if partial:
                    edges = ((0, first, head, view),)
                else:
                    edges = []
                    if head:
                        edges.append((0, first, head, view[: PAGE_SIZE - head]))
                    if tail:
                        edges.append((len(infos) + bool(head), last, 0, view[length - tail :]))
                for at, index, start, piece in edges:
                    info, payload = self._rmw_locked(index, start, piece)
                    infos.insert(at, info)
                    payloads.insert(at, payload)
            except CorruptedSlotError:
                self._failed_writes += 1
                raise
            self._commit_locked(first, infos, payloads)

    # --- the read path ----------------------------------------------------------

    def read(self, offset, length):
        """Return ``length`` bytes from byte ``offset``.  Never-written or
        discarded blocks read as zeros.  OutOfRangeError past disksize."""
        self._check_range(offset, length, "read")
        if length == PAGE_SIZE and not offset & _PAGE_MASK:
            # One aligned block: what swap and a 4 KiB-sector loop device
            # send.  The same steps as below, without the lists.
            index = offset >> PAGE_SHIFT
            table = self._table
            with self._lock:
                self._num_reads += 1
                info = table.info[index]
                payload = table.handle[index]
                if info & SIZE_MASK:
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
        table = self._table
        batch = self._batch
        with self._lock:
            self._num_reads += count
            infos = table.info[first : last + 1]
            # Every slot an ordinary compressed object (0 < info < 4096: a
            # size, no flag): the common case, done in C (lz4 frames, or
            # read_many and map).
            if min(infos) and max(infos) < PAGE_SIZE:
                handles = table.handle[first : last + 1]
                if batch.frames and count > 1:
                    frame = batch.gather_frame(self._pool.gather, handles)
                else:
                    objs = self._pool.read_many(handles)
            else:
                slots = self._snapshot(first, last + 1)
        try:
            pages = None
            if frame is not None:
                page_run = batch.decode_frame(frame)
                if page_run is not None:
                    pages = [page_run]
                else:
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
        whole blocks stay discarded.  The slot table's pages that held only
        discarded slots go back to the kernel (SlotTable.release).
        """
        self._check_range(offset, length, "discard")
        if not length:
            return
        end = offset + length
        first = offset >> PAGE_SHIFT
        last = (end - 1) >> PAGE_SHIFT
        head = offset & _PAGE_MASK
        tail = end & _PAGE_MASK
        edges: Sequence[tuple[int, int, int]]
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
            table = self._table
            info_bytes = table.info_bytes
            for start in range(whole_first, whole_end, self._DISCARD_BATCH):
                stop = min(start + self._DISCARD_BATCH, whole_end)
                zeros = bytes(4 * (stop - start))
                with self._lock:
                    # Skip a batch of empty slots at memcmp speed (== between
                    # memoryviews would compare element by element).
                    if info_bytes[start * 4 : stop * 4].tobytes() != zeros:
                        self._commit_locked(start, array("I", zeros), None)
                        table.release(start, stop)
                    self._notify_free += stop - start
        for index, start, size in edges:
            with self._lock:
                if not self._table.info[index]:
                    continue  # an empty slot already reads as zeros
                try:
                    info, payload = self._rmw_locked(index, start, bytes(size))
                except CorruptedSlotError:
                    self._failed_writes += 1
                    raise
                self._commit_locked(index, (info,), (payload,))

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
            table = self._table
            return DeviceStats(
                orig_data_size=table.pages_stored << PAGE_SHIFT,
                compr_data_size=table.compr_data_size,
                mem_used_total=used << PAGE_SHIFT,
                mem_limit=self._limit_pages << PAGE_SHIFT,
                mem_used_max=max(self._max_used_pages, used) << PAGE_SHIFT,
                same_pages=table.same_pages,
                pages_compacted=self._pages_compacted,
                huge_pages=table.huge_pages,
                huge_pages_since=table.huge_pages_since,
                failed_reads=self._failed_reads,
                failed_writes=self._failed_writes,
                invalid_io=self._invalid_io,
                notify_free=self._notify_free,
                num_reads=self._num_reads,
                num_writes=self._num_writes,
            )

    # block_state copies this many slots' info words per hold of the lock,
    # and formats them after letting go: a dump of a 4 GiB device (a million
    # slots) never keeps a read of disk waiting for more than one batch.
    _DUMP_BATCH = 4096

    def block_state(self):
        """zram's debugfs ``block_state``, as a list of text pieces: one line
        per slot that holds data, "%12zd %12u.%06d %c%c%c%c%c%c\\n" --
        index, last access (seconds.microseconds), and the flags s (same),
        w (written back), h (huge), i (idle), r (recompressed), n
        (incompressible), '.' where unset.  zramfs does not track access
        times yet: the column reads 0.000000."""
        pieces = []
        rest = _block_state_rest
        for start in range(0, self._table.nr_slots, self._DUMP_BATCH):
            stop = min(start + self._DUMP_BATCH, self._table.nr_slots)
            with self._lock:
                infos = self._table.info[start:stop].tolist()
            pieces.append(
                "".join(["%12d%s" % (index, rest(info)) for index, info in enumerate(infos, start) if info])
            )
        return pieces

    def pool_stats(self):
        """The pool's PoolStats (``classes_table`` renders them)."""
        return self._pool.stats()

    def mm_stat(self):
        """zram's ``mm_stat`` line (``mm_stat_line``)."""
        return mm_stat_line(self.stats())

    def io_stat(self):
        """zram's ``io_stat`` line (``io_stat_line``)."""
        return io_stat_line(self.stats())


# block_state's flag letters, in zram's order, for the info word's flag bits.
_BLOCK_FLAGS = ((SAME, "s"), (WB, "w"), (HUGE, "h"), (IDLE, "i"), (COMP_PRIORITY_MASK, "r"), (INCOMPRESSIBLE, "n"))
_FLAG_BITS = SAME | WB | HUGE | IDLE | COMP_PRIORITY_MASK | INCOMPRESSIBLE
_rest_of_line: dict[int, str] = {}


def _block_state_rest(info):
    """A block_state line after its index: the access time (not tracked: 0)
    and the flags; one string per combination of flags, made once."""
    flags = info & _FLAG_BITS
    try:
        return _rest_of_line[flags]
    except KeyError:
        text = "".join(c if flags & bit else "." for bit, c in _BLOCK_FLAGS)
        rest = _rest_of_line[flags] = " %12d.%06d %s\n" % (0, 0, text)
        return rest


def debug_stat_text():
    """zram's ``debug_stat``: "version: 1", then "0 <miss_free>".  zramfs
    never misses a slot free (zram counts the frees it skipped because the
    slot was locked), so miss_free is 0."""
    return "version: %d\n0 %8d\n" % (1, 0)


# zsmalloc's size classes are numbered by size: ZS_MIN_ALLOC_SIZE 32, one
# class every ZS_SIZE_CLASS_DELTA (PAGE_SIZE >> 8 = 16) bytes.
_ZS_MIN_ALLOC_SIZE = 32
_ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> 8


def classes_table(pool_stats):
    """zsmalloc's debugfs ``classes`` (zs_stats_size_show), column for column,
    from ``Pool.stats()``.  The fullness columns (how many zspages are 10 %,
    20 %, ... 100 % used) are "-": the pool's stats do not report them yet.
    freeable is zs_can_compact's estimate: the pages whole unused zspages'
    worth of free slots would give back."""
    head = " %5s %5s " + "%9s " * 11 + "%13s %10s %10s %16s %8s\n"
    out = [head % ("class", "size", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%",
                   "100%", "obj_allocated", "obj_used", "pages_used", "pages_per_zspage", "freeable")]
    groups = "%9s " * 11 % (("-",) * 11)
    total_objs = total_used = total_pages = total_freeable = 0
    for c in pool_stats.classes:
        index = max(0, -(-(c.size - _ZS_MIN_ALLOC_SIZE) // _ZS_SIZE_CLASS_DELTA))
        freeable = (c.objs_allocated - c.objs_used) // c.objs_per_zspage * c.pages_per_zspage
        out.append(" %5d %5d %s%13d %10d %10d %16d %8d\n" % (
            index, c.size, groups, c.objs_allocated, c.objs_used, c.pages_used, c.pages_per_zspage, freeable))
        total_objs += c.objs_allocated
        total_used += c.objs_used
        total_pages += c.pages_used
        total_freeable += freeable
    out.append("\n")
    out.append(" %5s %5s %s%13d %10d %10d %16s %8d\n" % (
        "Total", "", groups, total_objs, total_used, total_pages, "", total_freeable))
    return "".join(out)


def mm_stat_line(s):
    """zram's ``mm_stat`` line of DeviceStats ``s``: nine columns, as
    mm_stat_show prints them ("%8llu %8llu %8llu %8lu %8ld %8llu %8lu %8llu %8llu\\n")."""
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


def io_stat_line(s):
    """zram's ``io_stat`` line of DeviceStats ``s``: failed_reads
    failed_writes 0 notify_free ("%8llu %8llu 0 %8llu\\n").  The third
    column was invalid_io; zram stopped counting it and prints a bare 0
    (Linux 6.18), and so does this line.  ``DeviceStats.invalid_io`` still
    counts out-of-range requests, for ``zramfs status --json``."""
    return "%8d %8d 0 %8d\n" % (
        s.failed_reads,
        s.failed_writes,
        s.notify_free,
    )
