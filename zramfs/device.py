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

Beside the I/O path sit zram's post-processing features, each a method:
``mark_idle`` (zram's ``idle``: stamps in the slot table's ac_time say
which slots nobody read or wrote since), ``writeback`` (moves idle, huge or
chosen slots to a backing block device or file, ``zramfs._backing``;
``bd_stat``), and ``recompress`` (stores idle or huge slots again with a
secondary algorithm set by ``set_recomp_algorithm``).  Their arguments are
zram's text (``zramfs._pp_args``).  A written-back slot is read from the
backing store outside the lock and checked afterwards to still be there
(``_wb_page``); a recompressed one is decoded by its priority's codec.

Beyond zram, ``writeback_watermark`` (zramfs._watermark): with a backing
store, a thread writes the coldest slots back (``writeback_cold``) when
the pool reaches the watermark; a store that reaches it kicks the thread,
and a write that the pool's cap (an eighth above the watermark, or
mem_limit) refuses waits for that writeback and is retried
(``_after_limit``) instead of failing.

The slot table's layout, flags and states are ``zramfs._slots``'s.  Every
change of a slot's state -- a write of one block or of 256, a partial
block's read-modify-write, a discard -- goes through one method,
``_commit_locked``: it stores the new objects (all or none, checked against
``mem_limit``), points the slots at them, frees the old objects and has the
table count the change (``SlotTable.account``).  Only reads take other
paths, and they change no slot.

State that outlives the process
-------------------------------
A device is four memfds: the header (``zramfs._state``: settings and
counters, incremented in place), the slot table (``zramfs._slots``) and the
pool's arena and tables (``allocator``), plus the backing store's fd.
``state_fds`` names them for a supervisor to hold; ``resume`` takes them
over in a new process, whatever point the old one died at.  No journal:
``_commit_locked`` stores the new objects first (all or none), then points
the slots at them (``SlotTable.install``'s order per slot, or slices of
handles then infos for a run of ordinary objects, infos then handles to
empty), then frees the old objects.  A kill before the slots change leaves
new objects nobody names, a kill after leaves old ones: ``resume`` frees
both kinds of orphan and finds every slot old or new.  Writeback writes
the backing blocks before its commit (a kill leaves blocks no slot names,
freed by ``resume``); recompression commits like a write; a discard empties
its slots before their table pages are punched.  docs/architecture.md
("State that outlives the daemon") has the whole order, the pool's part
included.  Each step calls the module's ``_fault`` hook, None in every real
run, which the crash tests set.

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
into fs or fuse.  A write refused for memory waits for the watermark's
writeback only after letting go of the lock (``_after_limit``), so the
writeback can always take it.  Concurrent writes to the same block land in
some order, each block whole, as on any block device.
"""

import operator
import os
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from allocator import (
    PAGE_SHIFT,
    PAGE_SIZE,
    Pool,
    PoolDamagedError,
    PoolFormatError,
    PoolFullError,
    PoolLimitError,
)
from allocator._check import PoolCorruptError, check_pool

from ._backing import BackingIOError, BackingStore, BackingStoreError, BackingStoreFullError
from ._codec_batch import BatchCodec
from ._pp_args import (
    WB_HUGE,
    WB_IDLE,
    WB_INCOMPRESSIBLE,
    InvalidArgumentError,
    parse_recompress,
    parse_writeback,
)
from ._slots import (
    AC_IDLE,
    CHUNK_SHIFT,
    COMP_PRIORITY_MASK,
    COMP_PRIORITY_SHIFT,
    HUGE,
    HUGE_INFO,
    INCOMPRESSIBLE,
    PP_SLOT,
    SAME,
    SIZE_MASK,
    TRANSIT,
    WB,
    SlotTable,
    SlotTableFormatError,
    SlotTableTooLargeError,
)
from ._state import (
    DEFAULT_WB_BATCH_SIZE,
    W_BD_READS,
    W_BD_WRITES,
    W_CHAIN,
    W_CREATED_NS,
    W_DISKSIZE,
    W_FAILED_READS,
    W_FAILED_WRITES,
    W_INVALID_IO,
    W_LIMIT_PAGES,
    W_MAX_USED_PAGES,
    W_NOTIFY_FREE,
    W_NUM_READS,
    W_NUM_WRITES,
    W_RECOMP_USED,
    W_WB_BATCH,
    W_WB_FAILURES,
    W_WB_LIMIT,
    W_WB_LIMIT_ENABLE,
    W_WM_HIGH,
    W_WM_LOW,
    DeviceHeader,
    HeaderFormatError,
    check_format,
    decode_bytes,
    encode_bytes,
)
from ._watermark import (
    LOW_DEN,
    LOW_NUM,
    WM_CAP_DEN,
    Watermark,
    WatermarkStats,
    watermark_stat_line,
)
from .codecs import (
    CODECS,
    DEFAULT_ALGORITHM,
    InvalidCodecParamsError,
    UnknownAlgorithmError,
    get_codec,
)

__all__ = [
    "PAGE_SIZE",
    "BackingIOError",
    "BackingStoreError",
    "BackingStoreFullError",
    "BlockDevice",
    "CorruptedSlotError",
    "DEFAULT_WB_BATCH_SIZE",
    "DeviceError",
    "DeviceStats",
    "InvalidDiskSizeError",
    "InvalidArgumentError",
    "InvalidIdleAgeError",
    "InvalidMemLimitError",
    "InvalidWatermarkError",
    "MemLimitError",
    "NoBackingDevError",
    "NoRecompAlgorithmError",
    "OutOfRangeError",
    "check_watermarks",
    "classes_table",
    "debug_stat_text",
    "bd_stat_line",
    "io_stat_line",
    "mm_stat_line",
    "PostProcessBusyError",
    "StateCorruptError",
    "StateError",
    "StateFormatError",
    "WatermarkStats",
    "WritebackLimitError",
    "watermark_stat_line",
]

#: Fault injection for the crash tests (see allocator._pool._fault): None in
#: every real run.
_fault = None

_PAGE_MASK = PAGE_SIZE - 1
# A pool page count no pool reaches: the watermark's trigger when it is off.
_NEVER = 1 << 62
_ZERO_PAGE = bytes(PAGE_SIZE)
_WORDS_PER_PAGE = PAGE_SIZE // 8


class DeviceError(Exception):
    """Base class of the errors BlockDevice raises on its I/O path."""


class InvalidDiskSizeError(DeviceError, ValueError):
    """Raised when a BlockDevice is created with a disksize that is not a
    positive multiple of 4096."""


class InvalidMemLimitError(DeviceError, ValueError):
    """Raised when ``mem_limit`` is set to something other than an int >= 0."""


class InvalidWatermarkError(DeviceError, ValueError):
    """Raised when ``writeback_watermark`` or ``writeback_low_watermark`` is
    set to something other than an int >= 0, or so that the low mark would
    not be below the watermark (both set)."""


class OutOfRangeError(DeviceError):
    """Raised when a read, write or discard reaches outside [0, disksize]
    (or has a negative offset or length).  Counted in ``invalid_io``."""


class MemLimitError(DeviceError):
    """Raised when a write would take the pool past ``mem_limit`` (or past
    what the pool can hold at all).  Nothing stored changes.  Counted in
    ``failed_writes``; the FUSE layer answers ENOSPC, as zram's -ENOMEM
    becomes an I/O error for the writer."""

    watermark = False  # the watermark's cap refused the write, not mem_limit


class InvalidIdleAgeError(DeviceError, ValueError):
    """Raised when ``mark_idle`` is given an age that is not an int >= 0."""


class NoBackingDevError(DeviceError):
    """Raised when ``writeback`` is asked for without a backing store
    (zram: ENODEV)."""


class PostProcessBusyError(DeviceError):
    """Raised when a writeback or recompression is asked for while another
    one runs (zram runs one post-processing at a time): EBUSY.  Also when a
    backing store or a recompression algorithm would be changed while slots
    depend on the one in place."""


class WritebackLimitError(DeviceError):
    """Raised when writeback stops because ``writeback_limit_enable`` is on
    and ``writeback_limit`` is used up (zram: EIO).  The pages written back
    before stay written back."""


class NoRecompAlgorithmError(DeviceError, ValueError):
    """Raised when ``recompress`` names no configured secondary algorithm
    (zram: EINVAL)."""


class CorruptedSlotError(DeviceError):
    """Raised when a stored object fails to decompress to a whole page.
    Counted in ``failed_reads`` (or ``failed_writes`` when it happens in a
    partial write's read-modify-write).  It means a bug or memory corruption."""


def check_watermarks(high, low, changed):
    """Check a writeback_watermark ``high`` and writeback_low_watermark
    ``low`` (bytes, ints >= 0; 0 = off, default) as a pair, after a change
    of the one named ``changed``: both set, the low mark must be below the
    watermark in whole pages.  InvalidWatermarkError if not."""
    high_pages = (high + _PAGE_MASK) >> PAGE_SHIFT
    low_pages = (low + _PAGE_MASK) >> PAGE_SHIFT
    if high_pages and low_pages and low_pages >= high_pages:
        if changed == "writeback_watermark":
            raise InvalidWatermarkError(
                f"writeback_watermark {high} must be above writeback_low_watermark {low} "
                "(lower that first)"
            )
        raise InvalidWatermarkError(
            f"writeback_low_watermark {low} must be below writeback_watermark {high}"
        )


class StateError(DeviceError):
    """Base class of the errors ``BlockDevice.resume`` raises: the memfds
    it was given cannot be taken over."""


class StateFormatError(StateError):
    """Raised when the memfds are of another state format than this
    zramfs's (a different version, or no zramfs device at all), or need an
    algorithm this build lacks: the message says which.  Taking over is
    impossible; a restart with this code needs a swapoff first."""


class StateCorruptError(StateError):
    """Raised when the state contradicts itself in a way no crash leaves
    behind (a slot naming a freed object, two slots naming one object or
    backing block): a bug or memory corruption.  Also raised by
    ``BlockDevice.check``."""


def _undecodable(exc):
    return CorruptedSlotError(f"a stored object failed to decompress: {exc}")


def _wrong_length(page):
    return CorruptedSlotError(f"a stored object decompressed to {len(page)} bytes, not {PAGE_SIZE}")


def _close_untaken(fds, taken):
    """resume failed: close the parts it made and the fds none of them took."""
    owned = set()
    for part in taken:
        owned.update(part.state_fds().values() if isinstance(part, Pool) else (part.fd,))
        part.close()
    if isinstance(fds, dict):
        for fd in set(fds.values()) - owned:
            if isinstance(fd, int):
                try:
                    os.close(fd)
                except OSError:
                    pass


class _Seconds:
    """Whole seconds on the monotonic clock since this module started
    counting, in ``now``, kept by a thread that wakes once a second.

    The I/O paths stamp every slot they touch (idle tracking), and reading
    an int here costs ~15 ns where calling the clock costs ~150 ns on this
    VM (int(time.monotonic() - epoch)), a few per cent of a 5.5 us 4 KiB
    read.  A stamp may lag the clock by up to a second, which idle ages in
    whole seconds do not notice.  The thread is started by the first
    device (and again by a device in a forked child, where it is gone).
    """

    def __init__(self):
        self.start = time.monotonic()
        self.now = 0
        self._thread = None
        self._lock = threading.Lock()

    def exact(self):
        """The seconds now, read from the clock."""
        return int(time.monotonic() - self.start)

    def ensure_running(self):
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self.now = self.exact()
                self._thread = threading.Thread(target=self._run, name="zramfs-clock", daemon=True)
                self._thread.start()

    def _run(self):
        while True:
            self.now = self.exact()
            # Wake just after the next whole second.
            time.sleep(1.001 - (time.monotonic() - self.start) % 1)

    def advance(self, seconds):
        """Move the clock forward (tests of idle ages)."""
        self.start -= seconds
        self.now = self.exact()


_SECONDS = _Seconds()


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
    bd_count: int = 0  # slots written back = backing blocks in use (bd_stat)
    bd_reads: int = 0  # pages read from the backing store
    bd_writes: int = 0  # pages written to the backing store
    wb_failures: int = 0  # writebacks stopped by a failing backing store (beyond zram)


class BlockDevice:
    """A zram device of ``disksize`` bytes, in memory, compressed.

    ``algorithm`` is one of ``zramfs.codecs.CODECS``, or ``codec`` a
    ``zramfs.codecs.Codec`` to use instead (another level, or one a caller
    built); ``mem_limit`` (bytes, 0 = none) caps the pool like zram's
    ``mem_limit``; ``max_pages_per_zspage`` is passed to the pool (zsmalloc's
    chain size); ``backing_dev`` (a path) is zram's ``backing_dev``, a
    block device or a file (see zramfs._backing) for ``writeback``.
    """

    def __init__(
        self,
        disksize,
        algorithm=DEFAULT_ALGORITHM,
        mem_limit=0,
        max_pages_per_zspage=8,
        codec=None,
        backing_dev=None,
        *,
        _resumed=None,
    ):
        if isinstance(disksize, bool) or not isinstance(disksize, int):
            raise InvalidDiskSizeError(f"disksize must be an int, not {disksize!r}")
        if disksize <= 0:
            raise InvalidDiskSizeError(f"disksize must be greater than 0, not {disksize}")
        if disksize & _PAGE_MASK:
            raise InvalidDiskSizeError(
                f"disksize {disksize} is not a multiple of {PAGE_SIZE} bytes (the page size)"
            )
        nr_pages = disksize >> PAGE_SHIFT
        if _resumed is None:
            codec = codec if codec is not None else get_codec(algorithm)
            limit_pages = self._limit_to_pages(mem_limit)
            # A write holds at most one new object per slot besides the slots'
            # old ones: at most 2 * nr_pages objects are alive.  The pool sizes
            # its reservation from that (1 TiB of address space without it).
            pool = Pool(max_pages_per_zspage=max_pages_per_zspage, max_objects=2 * nr_pages)
            try:
                table = SlotTable(nr_pages)
            except SlotTableTooLargeError as exc:
                pool.close()
                raise InvalidDiskSizeError(str(exc)) from None
            try:
                header = DeviceHeader.create(
                    disksize,
                    max_pages_per_zspage,
                    {
                        "algorithm": codec.name,
                        "level": codec.level,
                        "dictionary": encode_bytes(codec.dictionary),
                        "recomp": {},
                        "backing": None,
                    },
                )
            except BaseException:
                pool.close()
                table.close()
                raise
        else:
            codec, pool, table, header = _resumed
            limit_pages = header.words[W_LIMIT_PAGES]
        self._codec = codec
        self._pool = pool
        self._table = table
        self._header = header
        # The header's words: settings and counters, in the memfd that
        # outlives the process (zramfs._state); all guarded by _lock.
        self._w = words = header.words
        # By COMP_PRIORITY: 0 the primary codec, 1..3 zram's recomp_algorithm.
        self._codecs = [self._codec, None, None, None]
        self._batch = BatchCodec(self._codec)
        self._limit_pages = words[W_LIMIT_PAGES] = limit_pages
        self._huge_class_size = self._pool.huge_class_size

        self.disksize = disksize
        self.algorithm = self._codec.name
        self._lock = threading.Lock()
        # ac_time stamps count whole seconds from the device's creation (zram
        # counts from boot); monotonic, so a clock step cannot make a slot
        # look idle, and system-wide, so a process taking the device over
        # goes on counting from the same zero.
        _SECONDS.ensure_running()
        self._epoch = _SECONDS.now - (time.monotonic_ns() - words[W_CREATED_NS]) // 10**9
        # Only a page whose compressed form is this short can be same-filled
        # (a repeated 8-byte word compresses to a few dozen bytes with every
        # codec), so _classify checks just those pages word by word instead
        # of every page.  Twice the longest of a few same-filled pages, for
        # margin; a same-filled page that still compressed longer would only
        # be stored compressed, not lost.
        same = (bytes(8), b"\xff" * 8, bytes(range(1, 9)), bytes.fromhex("9e3779b97f4a7c15"))
        self._same_max = 2 * max(len(self._codec.compress(word * _WORDS_PER_PAGE)) for word in same)

        # Writeback and recompression (zram's post-processing): one at a
        # time, under _pp_lock, which is never taken under _lock.  The
        # settings are mirrored in the header (read here, on every I/O).
        self._pp_lock = threading.Lock()
        self._backing = None
        self._wb_limit = words[W_WB_LIMIT]  # pages (zram's bd_wb_limit, 4 KiB units)
        self._wb_limit_enable = bool(words[W_WB_LIMIT_ENABLE])
        self._wb_batch_size = words[W_WB_BATCH]
        self.writeback_error = None  # why the last writeback stopped, or None
        # A priority that stored a slot.
        self._recomp_used = [bool(words[W_RECOMP_USED] >> p & 1) for p in range(4)]

        # The watermark (beyond zram, zramfs._watermark): marks in pages,
        # 0 = off; a store that takes the pool to _wm_trigger kicks it.
        self._wm_high = words[W_WM_HIGH]
        self._wm_low = words[W_WM_LOW]
        self._wm_trigger = _NEVER
        # What a store may take the pool to: mem_limit, or the watermark's
        # cap if lower (_wm_update_locked); _wm_bypass (under the lock) lets
        # one write past the cap when writeback cannot make room.
        self._store_limit = self._limit_pages
        self._wm_bypass = False
        self._watermark = Watermark(self)
        if backing_dev is not None:
            try:
                self.set_backing_dev(backing_dev)
            except BaseException:
                self.close()
                raise

    def close(self, handover=False):
        """Unmap the device and close its memfds and backing store.  The
        device is unusable afterwards.  Its memory goes back to the kernel
        with the last holder of the memfds: at once, unless a supervisor
        holds them (``state_fds``) to hand to the next daemon.  A backing
        file is emptied, unless ``handover`` says the next daemon will
        resume this state and still needs its blocks."""
        # The watermark thread first: it finishes its batch and exits.
        self._watermark.close()
        with self._lock:
            self._pool.close()
            self._table.close()
            # The counters stay readable (stats of a closed device).
            self._w = array("Q", self._w)
            self._header.close()
            if self._backing is not None:
                self._backing.close(handover)

    # --- state that outlives the process ---------------------------------------

    def state_fds(self):
        """The fds that make up the device, by name: ``header`` (settings and
        counters, zramfs._state), ``slots`` (the slot table), ``arena`` and
        ``tables`` (the pool), and ``backing`` when a backing store is set.
        A supervisor that holds dups of them keeps every stored page alive
        after this process is gone, and hands them to ``resume`` in the
        next one.  They stay this device's: close() closes them."""
        fds = {"header": self._header.fd, "slots": self._table.fd}
        fds.update(self._pool.state_fds())
        if self._backing is not None:
            fds["backing"] = self._backing.fd
        return fds

    @staticmethod
    def check_state_format(fds):
        """Raise StateFormatError unless ``fds["header"]`` is a device
        header this code can take over (reads a page, maps nothing): what
        ``zramfs restart`` asks before it stops a daemon."""
        try:
            check_format(fds["header"])
        except (KeyError, TypeError):
            raise StateFormatError(f"no 'header' among the state fds {fds!r}") from None
        except HeaderFormatError as exc:
            raise StateFormatError(str(exc)) from None

    @classmethod
    def resume(cls, fds):
        """Take over the device whose memfds are ``fds`` (as ``state_fds``
        named them), left by a process that exited or was killed at any
        point, and return it working.  The device owns the fds from here on
        (whether or not this succeeds): pass dups to keep your own.

        Maps the header, the slot table and the pool; checks the format
        (StateFormatError: another version, or an algorithm this build
        lacks); rebuilds the pool's lists from its handle table
        (``Pool.attach``); settles every slot that a change of state was
        cut through (zramfs._slots), takes each object's size from the
        pool; frees the objects no slot names (a write killed between
        storing its new objects and freeing the old ones) and the backing
        blocks no slot names; counts the slots' states again.  Counters and
        settings are the dead process's own (they live in the header).
        StateCorruptError if the state contradicts itself.
        """
        taken = []
        try:
            cls.check_state_format(fds)
            header = DeviceHeader.attach(fds["header"])
            taken.append(header)
            words = header.words
            config = header.config
            disksize = words[W_DISKSIZE]
            try:
                codec = get_codec(
                    config["algorithm"],
                    level=config["level"],
                    dictionary=decode_bytes(config["dictionary"]),
                )
                recomp = {
                    int(p): get_codec(name, level=level)
                    for p, (name, level) in config["recomp"].items()
                }
            except (UnknownAlgorithmError, InvalidCodecParamsError) as exc:
                raise StateFormatError(
                    f"the device's algorithm cannot be used here: {exc}"
                ) from None
            table = SlotTable(disksize >> PAGE_SHIFT, fd=fds["slots"])
            taken.append(table)
            pool = Pool.attach({"arena": fds["arena"], "tables": fds["tables"]})
            taken.append(pool)
            backing = None
            if config["backing"] is not None:
                backing = BackingStore.attach(config["backing"], disksize, fds.get("backing"))
                taken.append(backing)
        except KeyError as exc:
            _close_untaken(fds, taken)
            raise StateFormatError(f"the state lacks {exc}") from None
        except (SlotTableFormatError, PoolFormatError, HeaderFormatError) as exc:
            _close_untaken(fds, taken)
            raise StateFormatError(str(exc)) from None
        except PoolDamagedError as exc:
            _close_untaken(fds, taken)
            raise StateCorruptError(str(exc)) from None
        except BaseException:
            _close_untaken(fds, taken)
            raise
        if words[W_CHAIN] != pool.max_pages_per_zspage:
            _close_untaken(fds, taken)
            raise StateFormatError("the device header and the pool disagree on the chain size")
        device = cls(
            disksize,
            max_pages_per_zspage=pool.max_pages_per_zspage,
            _resumed=(codec, pool, table, header),
        )
        for priority, recomp_codec in recomp.items():
            device._codecs[priority] = recomp_codec
        device._backing = backing
        try:
            device._settle()
        except BaseException:
            device.close()
            raise
        if device._wm_high:  # the watermark the dead daemon had set
            with device._lock:
                device._wm_update_locked()
            device._watermark.start()
            device._watermark.kick()
        return device

    def _settle(self):
        """After a takeover (resume): settle every slot, fix object sizes
        from the pool, free orphans, recount, rebuild the backing bitmap."""
        table = self._table
        pool = self._pool
        info_words = table.info
        handles = table.handle
        ac_time = table.ac_time
        now = _SECONDS.now - self._epoch
        referenced = bytearray()
        blocks = array("Q")  # the written-back slots' blocks
        for chunk, mapped in enumerate(table.present):
            if not mapped:
                continue
            first = chunk << CHUNK_SHIFT
            end = min(first + (1 << CHUNK_SHIFT), table.nr_slots)
            objects = array("Q")  # (index, info, handle) of the object slots
            for index, info, handle in zip(
                range(first, end), info_words[first:end], handles[first:end]
            ):
                if not (info or handle):
                    continue
                if info & (TRANSIT | PP_SLOT) or not info:
                    info, handle = table.settle(index)
                    if not info:
                        continue
                if (ac_time[index] & ~AC_IDLE) > now:
                    ac_time[index] = now  # a stamp from a parked word
                if info & SAME:
                    continue
                if info & WB:
                    blocks.append(handle)
                    continue
                objects.extend((index, info, handle))
            # The objects' sizes in one pool lock round.
            sizes = pool.sizes_of(objects[2::3])
            for index, info, handle, size in zip(objects[::3], objects[1::3], objects[2::3], sizes):
                if not size:
                    raise StateCorruptError(
                        f"slot {index} names pool handle {handle}, which holds no object"
                    )
                if handle >= len(referenced):
                    referenced.extend(bytes(handle + 1 - len(referenced) + 65536))
                if referenced[handle]:
                    raise StateCorruptError(f"two slots name pool handle {handle}")
                referenced[handle] = 1
                # The size is the pool's: a slot cut between its handle and
                # its info word has the old info (zramfs._slots).
                want = HUGE_INFO if size == PAGE_SIZE else (info & ~(SIZE_MASK | HUGE)) | size
                if want != info:
                    info_words[index] = want
        pool.free_unreferenced(referenced)
        table.recount()
        if self._backing is not None:
            try:
                self._backing.adopt(blocks)
            except BackingStoreError as exc:
                raise StateCorruptError(str(exc)) from None
        elif blocks:
            raise StateCorruptError(
                f"{len(blocks)} slots are written back, but there is no backing store"
            )

    def check(self):
        """Raise StateCorruptError unless the slot table, the pool and the
        counters agree: every object slot names a live object of its size,
        no object is unnamed, the pool is consistent (allocator._check),
        the state counters match a fresh count, the backing store's blocks
        in use are the written-back slots'.  O(slots): for tests."""
        with self._lock:
            table = self._table
            try:
                check_pool(self._pool)
            except PoolCorruptError as exc:
                raise StateCorruptError(f"pool: {exc}") from None
            counts = (
                table.pages_stored,
                table.same_pages,
                table.huge_pages,
                table.compr_data_size,
                table.wb_pages,
            )
            named = 0
            wb = 0
            for index in range(table.nr_slots):
                if not table.present[index >> CHUNK_SHIFT]:
                    continue
                info = table.info[index]
                if info & (TRANSIT | PP_SLOT):
                    raise StateCorruptError(f"slot {index}: info {info:#x} left in transit")
                if not info or info & SAME:
                    continue
                if info & WB:
                    wb += 1
                    continue
                named += 1
                size = self._pool.size_of(table.handle[index])
                if size != info & SIZE_MASK:
                    raise StateCorruptError(
                        f"slot {index}: info size {info & SIZE_MASK}, pool object {size}"
                    )
            table.recount()
            if counts != (
                table.pages_stored,
                table.same_pages,
                table.huge_pages,
                table.compr_data_size,
                table.wb_pages,
            ):
                raise StateCorruptError(f"slot counters {counts}, a fresh count says otherwise")
            live = self._pool.stats().objs_used
            if live != named:
                raise StateCorruptError(f"the pool holds {live} objects, the slots name {named}")
            if self._backing is not None and self._backing.blocks_used != wb:
                raise StateCorruptError(
                    f"{self._backing.blocks_used} backing blocks in use, {wb} slots written back"
                )

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
            self._limit_pages = self._w[W_LIMIT_PAGES] = pages
            self._wm_update_locked()

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
            self._w[W_INVALID_IO] += 1
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
        2-core machine.  A compression process sharing memfds was slower
        too (+33 % per MiB, +10-14 % pipelined in chunks): the copy and the
        hand-off cost 330-510 us of lz4's ~770 us per MiB in this thread
        (BENCHMARKS.md, "A compression process")."""
        infos = []
        payloads = []
        classify = self._classify
        for data, page in zip(compressed, pages):
            info, payload = classify(data, page)
            infos.append(info)
            payloads.append(payload)
        return infos, payloads

    def _decode(self, info, payload):
        """The page a slot holds, from its info and what _snapshot copied
        (not for a written-back slot: _wb_page reads those)."""
        if info & SIZE_MASK:
            if info & HUGE:
                return payload
            return self._decompress(payload, (info & COMP_PRIORITY_MASK) >> COMP_PRIORITY_SHIFT)
        if info & SAME:
            return payload.to_bytes(8, "little") * _WORDS_PER_PAGE
        return _ZERO_PAGE

    def _decompress(self, obj, priority=0):
        """One object's page, by the codec of ``priority`` (the slot's
        COMP_PRIORITY); CorruptedSlotError if it is not one."""
        try:
            page = self._codecs[priority].decompress(obj)
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
        if info & WB:
            # Backing I/O under the lock: the price of an atomic
            # read-modify-write of a written-back block (zram reads it
            # synchronously in its partial write too).
            self._w[W_BD_READS] += 1
            page = bytearray(self._backing.read(payload))
        else:
            page = bytearray(self._decode(info, payload))
        page[start : start + len(data)] = data
        return self._classify(self._codec.compress(page), page)

    # --- the one change of state --------------------------------------------------

    def _commit_locked(self, first, infos, payloads, check_limit=True):
        """Under the lock: slots first, first + 1, ... take the info words
        ``infos`` (from _classify, or 0 to empty them) with ``payloads``
        (an object's bytes, a same-filled slot's word, a written-back
        slot's backing block; ignored for empty).  A slot that was written
        back gives its block back to the backing store.  ``check_limit``
        False stores past mem_limit (a recompression, which shrinks).

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
        present = table.present
        if not (present[first >> CHUNK_SHIFT] and present[(end - 1) >> CHUNK_SHIFT]):
            # (A commit covers at most 4096 slots: two chunks at most.)
            table.map_chunks(first, end)
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
            # The watermark's cap too (_store_limit): replace may take a new zspage.
            limit = self._limit_pages if self._wm_bypass else self._store_limit
            fits = not limit or pool.pages_used <= limit
            if fits and pool.replace(handles[first], payloads[0], limit):
                slot_infos[first] = top
                table.account(old, infos)
                if pool.pages_used >= self._wm_trigger:
                    self._watermark.kick()
                return
        objs: Sequence
        if not top:
            objs = ()
        elif uniform:
            objs = payloads
        else:
            objs = [payload for info, payload in zip(infos, payloads) if info & SIZE_MASK]
        new_handles: Sequence[int] = self._store_locked(objs, check_limit) if objs else ()
        if _fault is not None:
            _fault("commit:stored")

        dead: Sequence[int]
        if not old_top:
            dead = ()
        elif old_top < PAGE_SIZE and (count == 1 or min(old)):  # all ordinary objects
            dead = handles[first:end].tolist()
        else:
            dead = [handle for info, handle in zip(old, handles[first:end]) if info & SIZE_MASK]
        if old_top >= WB:  # some old slot may be written back: free its block
            blocks = [handle for info, handle in zip(old, handles[first:end]) if info & WB]
            if blocks:
                self._backing.free(blocks)
        # The slots now, in the order zramfs._slots ("Surviving the process")
        # gives: a process killed at any point leaves each slot old or new.
        if not uniform or (top and old_top >= PAGE_SIZE):
            install = table.install
            new = iter(new_handles)
            for index, info, payload in zip(range(first, end), infos, payloads):
                # An object's handle, a same-filled slot's word, a backing
                # block, or 0.
                install(
                    index,
                    info,
                    next(new) if info & SIZE_MASK else payload if info & (SAME | WB) else 0,
                )
        elif top:
            # Ordinary objects over ordinary objects or empty slots: handles
            # first, then the info words.
            if count == 1:
                handles[first] = new_handles[0]
                if _fault is not None:
                    _fault("commit:handles")
                slot_infos[first] = top
            else:
                handles[first:end] = array("Q", new_handles)
                if _fault is not None:
                    _fault("commit:handles")
                slot_infos[first:end] = infos if type(infos) is array else array("I", infos)
        else:
            # Emptied: the info words first, then the handles.
            slot_infos[first:end] = array("I", bytes(4 * count))
            if _fault is not None:
                _fault("commit:emptied")
            handles[first:end] = array("Q", bytes(8 * count))
        if _fault is not None:
            _fault("commit:published")
        # The old objects last: until the slots stopped naming them, they
        # were what a restart would read.
        if dead:
            pool.free_many(dead)
            if _fault is not None:
                _fault("commit:freed")
        table.account(old, infos)

    def _store_locked(self, objs, check_limit=True):
        """Under the lock: new pool objects for ``objs``, all or none, in one
        pool lock round (1 MiB overwrite of fio-like data: 1800 -> 1540 us
        against two or three rounds per block); updates mem_used_max.
        MemLimitError past mem_limit (or the watermark's cap, _store_limit:
        its ``watermark`` attribute is then True) or a full pool."""
        pool = self._pool
        limit = (self._limit_pages if self._wm_bypass else self._store_limit) if check_limit else 0
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
            error = self._limit_error(
                f"write would take the pool to {exc.pages_used * PAGE_SIZE} bytes, "
                f"past mem_limit {limit * PAGE_SIZE}"
            )
            error.watermark = limit != self._limit_pages  # the watermark's cap
            raise error from exc
        # The peak is now, with the new and the old objects both in the pool.
        used = pool.pages_used
        if used > self._w[W_MAX_USED_PAGES]:
            self._w[W_MAX_USED_PAGES] = used
        if used >= self._wm_trigger:
            self._watermark.kick()
        return new_handles

    def _limit_error(self, message):
        """A write refused for memory; counted in failed_writes by
        _after_limit, once no writeback will make room for it."""
        return MemLimitError(message)

    def _after_limit(self, exc, commit, *args):
        """After ``commit(*args)`` (a write's change of state, run under the
        lock) raised MemLimitError ``exc``, and with no lock held: while the
        watermark's writeback frees memory (zramfs._watermark), wait for it
        and run ``commit`` again; else count the write in failed_writes and
        raise the error, as zram fails it."""
        first = True
        while self._watermark.wait_for_room(first):
            first = False
            try:
                with self._lock:
                    commit(*args)
                return
            except MemLimitError as again:
                exc = again
        if exc.watermark:
            # Only the watermark's cap refused it, and its writeback cannot
            # help (the store is full or failing): the write goes ahead, as
            # in zram, up to mem_limit.
            try:
                with self._lock:
                    self._wm_bypass = True
                    try:
                        commit(*args)
                    finally:
                        self._wm_bypass = False
                return
            except MemLimitError as again:
                exc = again
        with self._lock:
            self._w[W_FAILED_WRITES] += 1
        raise exc

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
            now = _SECONDS.now - self._epoch
            index = offset >> PAGE_SHIFT
            try:
                with self._lock:
                    self._w[W_NUM_WRITES] += 1
                    self._commit_locked(index, (info,), (payload,))
                    self._table.ac_time[index] = now
            except MemLimitError as exc:
                stamp = self._stamps(1)
                self._after_limit(
                    exc, self._commit_stamped_locked, index, (info,), (payload,), stamp
                )
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
                    stamps = self._stamps(len(sizes))
                    try:
                        with self._lock:
                            self._w[W_NUM_WRITES] += len(sizes)
                            self._commit_locked(first, sizes, compressed)
                            self._table.ac_time[first : first + len(sizes)] = stamps
                    except MemLimitError as exc:
                        self._after_limit(
                            exc, self._commit_stamped_locked, first, sizes, compressed, stamps
                        )
                    return
                infos, payloads = self._encode_many(compressed, pages)

        edges: Sequence[tuple[int, int, int, memoryview]]
        if partial:
            edges = ((0, first, head, view),)
        else:
            edges = []
            if head:
                edges.append((0, first, head, view[: PAGE_SIZE - head]))
            if tail:
                edges.append((len(infos) + bool(head), last, 0, view[length - tail :]))
        stamps = self._stamps(last - first + 1)
        try:
            with self._lock:
                self._w[W_NUM_WRITES] += last - first + 1
                self._commit_edges_locked(first, infos, payloads, edges, stamps)
        except MemLimitError as exc:
            self._after_limit(exc, self._commit_edges_locked, first, infos, payloads, edges, stamps)

    def _commit_stamped_locked(self, first, infos, payloads, stamps):
        """Under the lock: _commit_locked, then stamp the slots' ac_time."""
        self._commit_locked(first, infos, payloads)
        self._table.ac_time[first : first + len(stamps)] = stamps

    def _commit_edges_locked(self, first, infos, payloads, edges, stamps):
        """Under the lock: a write's whole blocks (``infos``, ``payloads``:
        left as they are, for a retry) with its ``edges`` read-modify-written
        in, committed and stamped (one atomic step for the edge blocks)."""
        infos = list(infos)
        payloads = list(payloads)
        try:
            for at, index, start, piece in edges:
                info, payload = self._rmw_locked(index, start, piece)
                infos.insert(at, info)
                payloads.insert(at, payload)
        except (CorruptedSlotError, BackingIOError):
            self._w[W_FAILED_WRITES] += 1
            raise
        self._commit_stamped_locked(first, infos, payloads, stamps)

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
            now = _SECONDS.now - self._epoch
            with self._lock:
                self._w[W_NUM_READS] += 1
                info = table.info[index]
                payload = table.handle[index]
                if info & SIZE_MASK:
                    payload = self._pool.read(payload)
                if info:
                    table.ac_time[index] = now
            if info & WB:
                return self._wb_page(index, info, payload)
            try:
                return self._decode(info, payload)
            except CorruptedSlotError:
                with self._lock:
                    self._w[W_FAILED_READS] += 1
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
        stamps = self._stamps(count)
        with self._lock:
            self._w[W_NUM_READS] += count
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
                table.ac_time[first : last + 1] = stamps
            else:
                slots = self._snapshot(first, last + 1)
                self._stamp_stored_locked(first, infos, stamps)
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
                pages = self._decode_slots(first, slots)
        except CorruptedSlotError:
            with self._lock:
                self._w[W_FAILED_READS] += 1
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

    def _decode_slots(self, first, slots):
        """The pages of slots first, first + 1, ... from _snapshot.  A run
        of written-back slots in consecutive blocks (what one writeback of
        a stretch makes) is read with one preadv and kept as one piece,
        then checked under the lock to be still theirs; slot by slot
        (_wb_page) otherwise."""
        decode = self._decode
        pages = []
        at = 0
        count = len(slots)
        while at < count:
            info, payload = slots[at]
            if not info & WB:
                pages.append(decode(info, payload))
                at += 1
                continue
            end = at + 1
            while end < count and slots[end][0] & WB and slots[end][1] == payload + end - at:
                end += 1
            if end - at > 1 and self._wb_run(first + at, slots[at:end], pages):
                at = end
                continue
            pages.append(self._wb_page(first + at, info, payload))
            at += 1
        return pages

    def _wb_run(self, index, run, pages):
        """Read the written-back slots from ``index`` (``run``: their
        (info, block) from the snapshot, blocks consecutive) in one preadv;
        append the piece to ``pages`` and return True if every slot still
        holds its block afterwards, else False (the caller goes slot by
        slot).  BackingIOError, counted in failed_reads, on failure."""
        table = self._table
        try:
            piece = self._backing.read(run[0][1], len(run))
        except BackingIOError:
            with self._lock:
                self._w[W_BD_READS] += len(run)
                self._w[W_FAILED_READS] += 1
            raise
        with self._lock:
            self._w[W_BD_READS] += len(run)
            infos = table.info[index : index + len(run)]
            blocks = table.handle[index : index + len(run)]
            if list(zip(infos, blocks)) != run:
                return False
        pages.append(piece)
        return True

    def _wb_page(self, index, info, block):
        """The page of written-back slot ``index``, which held ``block``
        (with ``info``) under the lock a moment ago: read from the backing
        store without the lock, then checked under it to be still that
        slot's block (a rewrite and a new writeback may have moved it;
        then the slot is read again).  BackingIOError, counted in
        failed_reads, if the store fails (the FUSE layer answers EIO)."""
        table = self._table
        while True:
            try:
                page = self._backing.read(block)
            except BackingIOError:
                with self._lock:
                    self._w[W_BD_READS] += 1
                    self._w[W_FAILED_READS] += 1
                raise
            with self._lock:
                self._w[W_BD_READS] += 1
                info_now = table.info[index]
                block_now = table.handle[index]
                if info_now == info and block_now == block:
                    return page
                if not info_now & WB:
                    payload = self._pool.read(block_now) if info_now & SIZE_MASK else block_now
                    break
            info, block = info_now, block_now
        try:
            return self._decode(info_now, payload)
        except CorruptedSlotError:
            with self._lock:
                self._w[W_FAILED_READS] += 1
            raise

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
                        empty = array("I", zeros)
                        self._commit_locked(start, empty, None)
                        # zram's slot_free zeroes ac_time too; release()
                        # then frees the stamps' pages with the rest.
                        table.ac_time[start:stop] = empty
                        table.release(start, stop)
                    self._w[W_NOTIFY_FREE] += stop - start
            if self._backing is not None:
                self._backing.reclaim()  # punch the freed blocks, outside the lock
        for index, start, size in edges:
            # An empty slot already reads as zeros (checked under the lock).
            edge = ((0, index, start, bytes(size)),)
            try:
                with self._lock:
                    if self._table.info[index]:
                        self._commit_edges_locked(index, (), (), edge, self._stamps(1))
            except MemLimitError as exc:
                self._after_limit(
                    exc, self._commit_edges_locked, index, (), (), edge, self._stamps(1)
                )

    # --- idle tracking ----------------------------------------------------------

    def _stamps(self, count):
        """``count`` copies of the current ac_time stamp, as an array('I') to
        store into a slice of the table (one C copy, no loop per slot)."""
        return array("I", (_SECONDS.now - self._epoch,)) * count

    def _stamp_stored_locked(self, first, infos, stamps):
        """Under the lock: stamp the slots from ``first`` that hold
        something (``infos`` their info words).  Empty ones stay unstamped,
        so a read of never-written slots touches no table memory."""
        if min(infos):
            self._table.ac_time[first : first + len(infos)] = stamps
        elif max(infos):
            ac_time = self._table.ac_time
            now = stamps[0]
            for index, info in enumerate(infos, first):
                if info:
                    ac_time[index] = now

    # mark_idle takes the lock for this many slots at a time: ~2 ms of a
    # used device (0.5 us a slot, 256 MiB of fio-like pages: 36 ms whole).
    _IDLE_BATCH = 4096

    def mark_idle(self, age=None):
        """Mark slots idle, as writing to zram's ``idle`` does: with ``age``
        None ("all") every slot that holds an object or a huge page; with
        ``age`` N (seconds, an int >= 0) those not read or written for more
        than N seconds, and the others are unmarked (zram's mark_idle).
        Same-filled and written-back slots are never idle, as in zram.  A
        read or write of a slot clears its mark.  Returns how many slots
        are marked idle now.

        The mark is bit 31 of the slot's ac_time (see zramfs._slots), so
        the info words and the I/O fast paths stay as they were.  The lock
        is taken once per 4096 slots.
        """
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or age < 0):
            raise InvalidIdleAgeError(f"idle age must be an int >= 0 seconds, not {age!r}")
        now = _SECONDS.exact() - self._epoch
        cutoff = None if age is None else now - age
        table = self._table
        info_bytes = table.info_bytes
        ac_time = table.ac_time
        skip = SAME | WB
        marked = 0
        for start in range(0, table.nr_slots, self._IDLE_BATCH):
            stop = min(start + self._IDLE_BATCH, table.nr_slots)
            with self._lock:
                if not info_bytes[start * 4 : stop * 4].tobytes().strip(b"\0"):
                    continue  # nothing stored here (memcmp speed)
                infos = table.info[start:stop]
                stamps = ac_time[start:stop]
                for index, info, stamp in zip(range(start, stop), infos, stamps):
                    if not info or info & skip:
                        continue
                    when = stamp & ~AC_IDLE
                    if cutoff is None or when < cutoff:
                        marked += 1
                        if not stamp & AC_IDLE:
                            ac_time[index] = when | AC_IDLE
                    elif stamp & AC_IDLE:
                        ac_time[index] = when
        return marked

    # --- post-processing: writeback and recompression ------------------------------
    #
    # Both run as zram's do (writeback_store, recompress_store): pick slots,
    # work on copies of their data outside the lock, install the results.
    # A picked slot gets PP_SLOT in its info word; any write or discard of
    # it replaces the word, so a result is installed only where the flag is
    # still set, and a slot rewritten meanwhile keeps its new data.  The
    # lock is taken once per batch (writeback_batch_size slots), never
    # across compression or backing I/O, so I/O to the device flows while
    # a long writeback runs.  One post-processing runs at a time (_pp_lock):
    # a second one gets PostProcessBusyError (EBUSY).

    # A batch's scan takes the lock for at most this many slots.
    _PP_SCAN = 4096

    def _pick_locked(self, pos, end, count, want):
        """Under the lock: up to ``count`` slots of [pos, end) that ``want``
        (info, ac_time) accepts, scanning at most _PP_SCAN slots.  Each gets
        PP_SLOT; returns ([(index, info, payload)], next pos), payload the
        object's bytes copied out, or a same-filled word."""
        table = self._table
        slot_infos = table.info
        stop = min(end, pos + self._PP_SCAN)
        picked = []
        read = self._pool.read
        if not table.info_bytes[pos * 4 : stop * 4].tobytes().strip(b"\0"):
            return picked, stop  # nothing stored here (memcmp speed)
        infos = slot_infos[pos:stop]
        for index, info, stamp in zip(range(pos, stop), infos, table.ac_time[pos:stop]):
            if info and want(info, stamp):
                handle = table.handle[index]
                slot_infos[index] = info | PP_SLOT
                picked.append((index, info, read(handle) if info & SIZE_MASK else handle))
                if len(picked) == count:
                    return picked, index + 1
        return picked, stop

    def _unpick_locked(self, indexes):
        """Under the lock: drop PP_SLOT where it is still set."""
        slot_infos = self._table.info
        for index in indexes:
            info = slot_infos[index]
            if info & PP_SLOT:
                slot_infos[index] = info & ~PP_SLOT

    def _decode_picked(self, picked):
        """Outside the lock: the pages of picked slots; a slot whose object
        does not decode is dropped (zram skips a slot it cannot read)."""
        pages = []
        for index, info, payload in picked:
            try:
                pages.append((index, info, self._decode(info, payload)))
            except CorruptedSlotError:
                with self._lock:
                    self._w[W_FAILED_READS] += 1
                    self._unpick_locked((index,))
        return pages

    # --- the backing store ---------------------------------------------------------

    def set_backing_dev(self, path):
        """Use the block device or file at ``path`` as the backing store
        (zram's ``backing_dev``; see zramfs._backing for files).
        BackingStoreError if it cannot be; PostProcessBusyError while slots
        are written back to the store in place."""
        with self._pp_lock:
            with self._lock:
                if self._table.wb_pages:
                    raise PostProcessBusyError(
                        f"{self._table.wb_pages} pages are written back to "
                        f"{self._backing.path}; the backing store cannot change"
                    )
            store = BackingStore(path, self.disksize)
            old, self._backing = self._backing, store
            with self._lock:
                self._set_config(backing=store.path)
            if old is not None:
                old.close()
            with self._lock:
                self._wm_update_locked()

    def reclaim_backing(self):
        """Punch the holes of backing blocks freed by rewrites since the
        last writeback or discard (zramfs._backing defers them: they are
        freed under the lock).  For a caller with nothing else to do, like
        populate_ahead; writeback and discard do it themselves."""
        store = self._backing
        if store is not None:
            store.reclaim()

    @property
    def backing_dev(self):
        """The backing store's path, or None."""
        store = self._backing
        return None if store is None else store.path

    @property
    def writeback_limit(self):
        """zram's ``writeback_limit``: pages writeback may still write while
        ``writeback_limit_enable`` is on (each page written takes one)."""
        return self._wb_limit

    @writeback_limit.setter
    def writeback_limit(self, pages):
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise InvalidArgumentError(f"writeback_limit must be an int >= 0 pages, not {pages!r}")
        with self._lock:
            self._wb_limit = self._w[W_WB_LIMIT] = pages

    @property
    def writeback_limit_enable(self):
        """zram's ``writeback_limit_enable`` (a bool; off by default)."""
        return self._wb_limit_enable

    @writeback_limit_enable.setter
    def writeback_limit_enable(self, value):
        with self._lock:
            self._wb_limit_enable = bool(value)
            self._w[W_WB_LIMIT_ENABLE] = int(self._wb_limit_enable)

    @property
    def writeback_batch_size(self):
        """zram's ``writeback_batch_size``: slots per batch (32): one lock
        hold to pick them, one pwritev per run of free blocks."""
        return self._wb_batch_size

    @writeback_batch_size.setter
    def writeback_batch_size(self, count):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgumentError(f"writeback_batch_size must be an int >= 1, not {count!r}")
        with self._lock:
            self._wb_batch_size = self._w[W_WB_BATCH] = count

    # --- the watermark (beyond zram; zramfs._watermark) ------------------------------

    @staticmethod
    def _wm_to_pages(value, name):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidWatermarkError(f"{name} must be an int >= 0 bytes, not {value!r}")
        return (value + _PAGE_MASK) >> PAGE_SHIFT  # whole pages, rounded up as mem_limit

    @property
    def writeback_watermark(self):
        """Bytes of pool memory (mem_used_total) at which the watermark
        thread starts writing the coldest slots back; 0 = off.  Active only
        with a backing store (inactive, not refused, without one: the
        store may be set later)."""
        return self._wm_high << PAGE_SHIFT

    @writeback_watermark.setter
    def writeback_watermark(self, value):
        pages = self._wm_to_pages(value, "writeback_watermark")
        with self._lock:
            check_watermarks(pages << PAGE_SHIFT, self._wm_low << PAGE_SHIFT, "writeback_watermark")
            self._wm_high = self._w[W_WM_HIGH] = pages
            self._wm_update_locked()
        if pages:
            self._watermark.start()
            self._watermark.kick()  # the pool may be over the new mark already

    @property
    def writeback_low_watermark(self):
        """Bytes of pool memory a watermark round writes back to; 0 = the
        default, 7/8 of the watermark."""
        return self._wm_low << PAGE_SHIFT

    @writeback_low_watermark.setter
    def writeback_low_watermark(self, value):
        pages = self._wm_to_pages(value, "writeback_low_watermark")
        with self._lock:
            check_watermarks(
                self._wm_high << PAGE_SHIFT, pages << PAGE_SHIFT, "writeback_low_watermark"
            )
            self._wm_low = self._w[W_WM_LOW] = pages

    def _wm_trigger_pages(self):
        """The high mark in pages: the watermark, or 15/16 of mem_limit if
        set and lower (writeback starts before writes reach the limit and
        wait); _NEVER when off."""
        high = self._wm_high
        if not high:
            return _NEVER
        limit = self._limit_pages
        return min(high, limit - limit // 16) if limit else high

    def _wm_low_pages(self):
        """The low mark in pages: writeback_low_watermark if set and below
        the high mark, else 7/8 of the high mark."""
        high = self._wm_trigger_pages()
        low = self._wm_low
        if low and low < high:
            return low
        return high * LOW_NUM // LOW_DEN

    def _wm_update_locked(self):
        """Under the lock: the pool page count at which a store kicks the
        watermark thread, and the cap a store waits at (without a backing
        store: neither)."""
        limit = self._limit_pages
        if self._backing is None or not self._wm_high:
            self._wm_trigger = _NEVER
            self._store_limit = limit
            return
        self._wm_trigger = self._wm_trigger_pages()
        cap = self._wm_high + self._wm_high // WM_CAP_DEN
        self._store_limit = min(cap, limit) if limit else cap

    def watermark_stats(self):
        """The watermark's WatermarkStats (``writeback_watermark_stat``)."""
        return self._watermark.stats()

    def writeback_watermark_stat(self):
        """The ``writeback_watermark_stat`` line (zramfs._watermark)."""
        return watermark_stat_line(self.watermark_stats())

    @property
    def watermark_error(self):
        """Why the watermark's last round stopped early (backing store full,
        an I/O error, writeback_limit), or None."""
        return self._watermark.error

    # --- writeback -----------------------------------------------------------------

    def writeback(self, request):
        """Write slots back to the backing store, as a write of ``request``
        (zram's syntax: "idle", "huge", "huge_idle", "incompressible",
        "type=MODE", "page_index=N", "page_indexes=A-B", see
        zramfs._pp_args.parse_writeback) to zram's ``writeback`` does.
        Returns the number of pages written back.

        A written-back slot keeps its page raw in one block of the store
        (WB; the block number in ``handle``) and its pool object is freed;
        raw, not compressed as zram's ``writeback_compressed`` can: each
        page takes one O_DIRECT 4 KiB block either way, so compressed
        objects would save no I/O or space without packing several into a
        block, and raw pages are read back without a codec;
        it still counts in orig_data_size, and in bd_stat's bd_count.
        Same-filled and already written-back slots are never picked.

        Errors, raised after what was written is installed: NoBackingDevError,
        InvalidArgumentError (bad request), PostProcessBusyError (another
        runs), WritebackLimitError (limit used up), BackingStoreFullError
        (no free block), BackingIOError (the store failed: the slots of the
        failed batch stay in RAM, nothing is lost; counted in wb_failures,
        and the reason kept in ``writeback_error``).
        """
        if self._backing is None:
            raise NoBackingDevError("writeback needs a backing device (backing_dev)")
        jobs = parse_writeback(request, self._table.nr_slots)
        if not self._pp_lock.acquire(blocking=False):
            raise PostProcessBusyError("a writeback or recompression is running")
        try:
            self.writeback_error = None
            written = 0
            for mode, first, end in jobs:
                written += self._writeback_range(self._wb_filter(mode), first, end)
            return written
        except (BackingStoreError, WritebackLimitError) as exc:
            self.writeback_error = str(exc)
            raise
        finally:
            self._pp_lock.release()

    @staticmethod
    def _wb_filter(mode):
        """The pick test of a writeback mode (zram's scan_slots_for_writeback)."""
        skip = SAME | WB
        need = (HUGE if mode & WB_HUGE else 0) | (INCOMPRESSIBLE if mode & WB_INCOMPRESSIBLE else 0)
        idle = AC_IDLE if mode & WB_IDLE else 0

        def want(info, stamp):
            return not info & skip and info & need == need and stamp & idle == idle

        return want

    def writeback_cold(self, pages):
        """Beyond zram: write back up to ``pages`` slots, the least recently
        read or written first (the oldest ac_time stamps), whatever their
        idle marks -- what a daemon calls when the pool nears a watermark.
        Returns the number written back; errors as ``writeback``.

        The cut-off stamp comes from one pass over the table (the lock
        taken per 4096 slots) and a sort of the candidates' stamps; slots
        at or below it are then written back in index order.
        """
        return self._writeback_cold(pages)

    def _writeback_cold(self, pages, abort=None):
        """writeback_cold; ``abort`` (a callable) is asked before each batch
        whether to stop early (the watermark thread's close)."""
        if self._backing is None:
            raise NoBackingDevError("writeback needs a backing device (backing_dev)")
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise InvalidArgumentError(f"pages must be an int >= 0, not {pages!r}")
        if not self._pp_lock.acquire(blocking=False):
            raise PostProcessBusyError("a writeback or recompression is running")
        try:
            self.writeback_error = None
            skip = SAME | WB
            table = self._table
            stamps = []
            for start in range(0, table.nr_slots, self._IDLE_BATCH):
                stop = min(start + self._IDLE_BATCH, table.nr_slots)
                with self._lock:
                    infos = table.info[start:stop]
                    if not max(infos):
                        continue
                    stamps += [
                        stamp & ~AC_IDLE
                        for info, stamp in zip(infos, table.ac_time[start:stop])
                        if info and not info & skip
                    ]
            if not stamps or not pages:
                return 0
            stamps.sort()
            cutoff = stamps[min(pages, len(stamps)) - 1]

            def want(info, stamp):
                return not info & skip and stamp & ~AC_IDLE <= cutoff

            return self._writeback_range(want, 0, table.nr_slots, pages, abort)
        except (BackingStoreError, WritebackLimitError) as exc:
            self.writeback_error = str(exc)
            raise
        finally:
            self._pp_lock.release()

    def _writeback_range(self, want, pos, end, max_pages=None, abort=None):
        """Write back the slots of [pos, end) that ``want`` picks, at most
        ``max_pages`` (None: no limit), until ``abort()`` (if given) is true."""
        store = self._backing
        written = 0
        while pos < end and max_pages != 0 and not (abort is not None and abort()):
            with self._lock:
                count = self._wb_batch_size
                if max_pages is not None:
                    count = min(count, max_pages)
                if self._wb_limit_enable:
                    if not self._wb_limit:
                        raise WritebackLimitError(
                            "writeback_limit is used up (writeback_limit_enable is on)"
                        )
                    count = min(count, self._wb_limit)
                picked, pos = self._pick_locked(pos, end, count, want)
            if not picked:
                continue
            pages = self._decode_picked(picked)
            runs = store.allocate(len(pages))
            done = []  # (index, block) written
            error = None
            at = 0
            try:
                for block, length in runs:
                    store.write(block, [page for _, _, page in pages[at : at + length]])
                    done.extend(
                        (index, b)
                        for (index, _, _), b in zip(pages[at:], range(block, block + length))
                    )
                    at += length
            except BackingIOError as exc:
                error = exc
            if at < len(pages) and error is None:
                error = BackingStoreFullError(
                    f"backing store {store.path} is full ({store.nr_blocks} blocks)"
                )
            if _fault is not None:
                _fault("writeback:written")
            # Blocks allocated but not written go back at once.
            store.unallocate([(b, 1) for b in self._unwritten(runs, at)])
            with self._lock:
                self._w[W_BD_WRITES] += len(done)
                if self._wb_limit_enable:
                    self._wb_limit = self._w[W_WB_LIMIT] = max(0, self._wb_limit - len(done))
                stale = []
                slot_infos = self._table.info
                ac_time = self._table.ac_time
                run = []  # (index, block) of consecutive slots, one commit
                for index, block in done:
                    if slot_infos[index] & PP_SLOT:
                        if run and index != run[-1][0] + 1:
                            self._commit_wb_locked(run)
                            run = []
                        run.append((index, block))
                        ac_time[index] &= ~AC_IDLE  # zram: a WB slot is never idle
                    else:
                        stale.append(block)  # rewritten meanwhile: block unused
                if run:
                    self._commit_wb_locked(run)
                if stale:
                    self._backing.free(stale)
                self._unpick_locked(index for index, _, _ in picked)
                if error is not None and not isinstance(error, BackingStoreFullError):
                    self._w[W_WB_FAILURES] += 1
            written += len(done) - len(stale)
            if max_pages is not None:
                max_pages -= len(done) - len(stale)
            if error is not None:
                raise error
        return written

    def _commit_wb_locked(self, run):
        """Under the lock: consecutive slots of ``run`` [(index, block)]
        become written back, in one change of state."""
        self._commit_locked(run[0][0], [WB] * len(run), [block for _, block in run])

    @staticmethod
    def _unwritten(runs, written):
        """The blocks of ``runs`` after the first ``written`` ones."""
        blocks = []
        for block, length in runs:
            skip = min(written, length)
            written -= skip
            blocks.extend(range(block + skip, block + length))
        return blocks

    # --- recompression ---------------------------------------------------------------

    def set_recomp_algorithm(self, name, priority=1, level=None):
        """zram's ``recomp_algorithm``: use the codec ``name`` (at ``level``)
        as the secondary algorithm of ``priority`` 1..3.  UnknownAlgorithmError
        or InvalidCodecParamsError from zramfs.codecs; PostProcessBusyError
        if slots were recompressed with the priority's algorithm in place."""
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 3:
            raise InvalidArgumentError(f"recomp_algorithm priority must be 1..3, not {priority!r}")
        codec = get_codec(name, level=level)
        with self._pp_lock:
            if self._recomp_used[priority] and self._codecs[priority] != codec:
                raise PostProcessBusyError(
                    f"slots are stored by {self._codecs[priority].name} (priority {priority}); "
                    "its algorithm cannot change"
                )
            self._codecs[priority] = codec
            with self._lock:
                self._set_config(
                    recomp={
                        **self._header.config["recomp"],
                        str(priority): [codec.name, codec.level],
                    }
                )

    def _set_config(self, **changes):
        """Under the lock: change settings of the header's JSON document."""
        self._header.set_config({**self._header.config, **changes})

    @property
    def codec(self):
        """The primary ``zramfs.codecs.Codec`` (its name, level and
        dictionary are the device's algorithm and algorithm_params; what a
        caller of ``resume`` reads them from)."""
        return self._codec

    @property
    def recomp_algorithms(self):
        """{priority: algorithm name} of the secondary algorithms set."""
        return {p: c.name for p, c in enumerate(self._codecs) if p and c is not None}

    def recomp_algorithm(self):
        """zram's ``recomp_algorithm`` text: a line per priority set, every
        algorithm with the chosen one in brackets ("#1: lz4 lz4hc [zstd]
        deflate"), as recomp_algorithm_show prints it."""
        return "".join(
            f"#{p}: " + " ".join(f"[{a}]" if a == name else a for a in CODECS) + "\n"
            for p, name in sorted(self.recomp_algorithms.items())
        )

    def recompress(self, request):
        """Recompress slots with the secondary algorithms, as a write of
        ``request`` to zram's ``recompress`` does ("type=idle|huge|huge_idle
        threshold=N algo=NAME priority=N max_pages=N", all optional, see
        zramfs._pp_args.parse_recompress).  Returns how many slots were
        recompressed.

        Each picked slot (an object or huge page, not same-filled, written
        back or INCOMPRESSIBLE, of at least ``threshold`` bytes, not yet
        stored by the highest priority asked for) is tried with each
        secondary algorithm in priority order; the first that stores it
        smaller (and under ``threshold``, if set) wins: the slot then holds
        that object and its priority in COMP_PRIORITY, and reads decode it
        with that codec.  A slot nothing shrank, when the last algorithm was
        tried, is flagged INCOMPRESSIBLE and skipped from then on.  Every
        attempted slot counts against ``max_pages`` and loses its idle mark.
        """
        args = parse_recompress(request)
        highest = max(self.recomp_algorithms, default=0)
        priority = args["priority"]
        prio = 1 if not priority else priority
        prio_end = highest + 1 if priority is None else prio + 1
        if args["threshold"] >= self._huge_class_size:
            raise InvalidArgumentError(
                f"recompress threshold must be below {self._huge_class_size} (huge_class_size)"
            )
        if args["algo"] is not None:
            for p in range(prio, 4):
                if self._codecs[p] is not None and self._codecs[p].name == args["algo"]:
                    prio, prio_end = p, p + 1
                    break
            else:
                raise NoRecompAlgorithmError(
                    f"recompress: {args['algo']} is not a recomp_algorithm "
                    f"(set: {self.recomp_algorithms or 'none'})"
                )
        prio_end = min(prio_end, highest + 1)
        if prio >= prio_end:
            raise NoRecompAlgorithmError("recompress needs a recomp_algorithm at that priority")
        if not self._pp_lock.acquire(blocking=False):
            raise PostProcessBusyError("a writeback or recompression is running")
        try:
            return self._recompress(
                args["mode"],
                args["threshold"],
                args["max_pages"],
                prio,
                prio_end,
                prio_end == highest + 1,
            )
        finally:
            self._pp_lock.release()

    def _recompress(self, mode, threshold, max_pages, prio, prio_end, last_tried):
        skip = SAME | WB | INCOMPRESSIBLE
        need = HUGE if mode & WB_HUGE else 0
        idle = AC_IDLE if mode & WB_IDLE else 0
        top = (prio_end - 1) << COMP_PRIORITY_SHIFT

        def want(info, stamp):
            return (
                not info & skip
                and info & need == need
                and stamp & idle == idle
                and (info & SIZE_MASK) >= threshold
                and (info & COMP_PRIORITY_MASK) < top
            )

        codecs = self._codecs
        huge_class_size = self._huge_class_size
        table = self._table
        pos = 0
        end = table.nr_slots
        done = 0
        while pos < end and max_pages != 0:
            count = (
                self._wb_batch_size if max_pages is None else min(self._wb_batch_size, max_pages)
            )
            with self._lock:
                picked, pos = self._pick_locked(pos, end, count, want)
            if not picked:
                continue
            if max_pages is not None:
                max_pages -= len(picked)
            results = []  # (index, new info or None, object)
            for index, info, page in self._decode_picked(picked):
                old_size = info & SIZE_MASK
                result = (index, None, None)
                first = max(prio, ((info & COMP_PRIORITY_MASK) >> COMP_PRIORITY_SHIFT) + 1)
                for p in range(first, prio_end):
                    codec = codecs[p]
                    if codec is None:
                        continue
                    data = codec.compress(page)
                    size = len(data)
                    if (
                        size < old_size
                        and size < huge_class_size
                        and not (threshold and size >= threshold)
                    ):
                        result = (index, size | p << COMP_PRIORITY_SHIFT, data)
                        break
                results.append(result)
            with self._lock:
                slot_infos = table.info
                ac_time = table.ac_time
                for index, info, data in results:
                    now = slot_infos[index]
                    if not now & PP_SLOT:
                        continue  # written or discarded meanwhile
                    ac_time[index] &= ~AC_IDLE  # zram: "we touched this entry"
                    if info is None:
                        if last_tried:
                            slot_infos[index] = now | INCOMPRESSIBLE
                        continue
                    slot_infos[index] = now & ~PP_SLOT
                    self._commit_locked(index, (info,), (data,), check_limit=False)
                    priority = info >> COMP_PRIORITY_SHIFT & 3
                    if not self._recomp_used[priority]:
                        self._recomp_used[priority] = True
                        self._w[W_RECOMP_USED] |= 1 << priority
                    done += 1
                self._unpick_locked(index for index, _, _ in picked)
        return done

    # --- maintenance and stats ----------------------------------------------------

    def compact(self):
        """Run pool compaction (zram's ``compact``).  Returns pages freed."""
        # Compaction moves objects under the pool's own lock and keeps
        # handles valid, so the slot table needs no change and no device lock.
        # The pool counts the pages it freed (pages_compacted, in its memfd).
        return self._pool.compact()

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
            self._w[W_MAX_USED_PAGES] = self._pool.pages_used

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
                mem_used_max=max(self._w[W_MAX_USED_PAGES], used) << PAGE_SHIFT,
                same_pages=table.same_pages,
                pages_compacted=self._pool.pages_compacted,
                huge_pages=table.huge_pages,
                huge_pages_since=table.huge_pages_since,
                failed_reads=self._w[W_FAILED_READS],
                failed_writes=self._w[W_FAILED_WRITES],
                invalid_io=self._w[W_INVALID_IO],
                notify_free=self._w[W_NOTIFY_FREE],
                num_reads=self._w[W_NUM_READS],
                num_writes=self._w[W_NUM_WRITES],
                bd_count=table.wb_pages,
                bd_reads=self._w[W_BD_READS],
                bd_writes=self._w[W_BD_WRITES],
                wb_failures=self._w[W_WB_FAILURES],
            )

    # block_state copies this many slots' info words per hold of the lock,
    # and formats them after letting go: a dump of a 4 GiB device (a million
    # slots) never keeps a read of disk waiting for more than one batch.
    _DUMP_BATCH = 4096

    def block_state(self):
        """zram's debugfs ``block_state``, as a list of text pieces: one line
        per slot that holds data, "%12zd %12u.%06d %c%c%c%c%c%c\\n" --
        index, last access, and the flags s (same), w (written back), h
        (huge), i (idle), r (recompressed), n (incompressible), '.' where
        unset.

        The access time is in seconds since boot, as zram's (its
        ktime_get_boottime stamp): the slot's ac_time (whole seconds since
        the device was made, on the monotonic clock, which counts from
        boot) plus the monotonic time the device was made.  Whole seconds,
        so the microseconds read 000000, as zram prints them since it
        keeps seconds too (after 6.18); the monotonic clock stops during
        suspend where zram's boottime does not.
        """
        pieces = []
        table = self._table
        # Keyed by stamp and flags; the device's second 0 on the monotonic
        # clock (seconds since boot) is the base of every access time.
        rest = _BlockStateRest(int(_SECONDS.start) + self._epoch)
        flag_bits = _FLAG_BITS
        for start in range(0, table.nr_slots, self._DUMP_BATCH):
            stop = min(start + self._DUMP_BATCH, table.nr_slots)
            with self._lock:
                infos = table.info[start:stop].tolist()
                stamps = table.ac_time[start:stop].tolist()
            pieces.append(
                "".join(
                    [
                        "%12d%s" % (index, rest[stamp << 32 | info & flag_bits])
                        for index, info, stamp in zip(range(start, stop), infos, stamps)
                        if info
                    ]
                )
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

    def bd_stat(self):
        """zram's ``bd_stat`` line (``bd_stat_line``)."""
        return bd_stat_line(self.stats())


# block_state's flag letters, in zram's order, for the info word's flag
# bits; the idle mark is AC_IDLE, in the slot's ac_time (see zramfs._slots).
_BLOCK_FLAGS = (
    (SAME, "s"),
    (WB, "w"),
    (HUGE, "h"),
    (AC_IDLE, "i"),
    (COMP_PRIORITY_MASK, "r"),
    (INCOMPRESSIBLE, "n"),
)
_FLAG_BITS = SAME | WB | HUGE | COMP_PRIORITY_MASK | INCOMPRESSIBLE


class _BlockStateRest(dict):
    """A block_state line after its index -- the access time and the flags
    -- by ``ac_time << 32 | info's flag bits``, for one dump: each string
    is made once, on first use, and the slots written in one second share
    it, so a dump of a million slots formats a few thousand (a dump takes
    ~1 s per million slots on this VM, as without access times)."""

    def __init__(self, base):
        super().__init__()
        self.base = base  # seconds since boot at the device's second 0

    def __missing__(self, key):
        stamp = key >> 32
        flags = key & _FLAG_BITS | stamp & AC_IDLE
        text = "".join(c if flags & bit else "." for bit, c in _BLOCK_FLAGS)
        rest = self[key] = " %12d.%06d %s\n" % (self.base + (stamp & ~AC_IDLE), 0, text)
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
    from ``Pool.stats()``: per size class the zspages in each fullness group
    (10 % .. 99 % used, and 100 %), objects allocated and used, pages, and
    freeable, zs_can_compact's estimate: the pages whole unused zspages'
    worth of free slots would give back.  The Total line sums every column
    but pages_per_zspage, as zsmalloc's does."""
    head = " %5s %5s " + "%9s " * 11 + "%13s %10s %10s %16s %8s\n"
    out = [
        head
        % (
            "class",
            "size",
            "10%",
            "20%",
            "30%",
            "40%",
            "50%",
            "60%",
            "70%",
            "80%",
            "90%",
            "99%",
            "100%",
            "obj_allocated",
            "obj_used",
            "pages_used",
            "pages_per_zspage",
            "freeable",
        )
    ]
    groups = "%9d " * 11
    fullness_totals = [0] * 11
    total_objs = total_used = total_pages = total_freeable = 0
    for c in pool_stats.classes:
        index = max(0, -(-(c.size - _ZS_MIN_ALLOC_SIZE) // _ZS_SIZE_CLASS_DELTA))
        freeable = (c.objs_allocated - c.objs_used) // c.objs_per_zspage * c.pages_per_zspage
        out.append(
            " %5d %5d %s%13d %10d %10d %16d %8d\n"
            % (
                index,
                c.size,
                groups % c.fullness,
                c.objs_allocated,
                c.objs_used,
                c.pages_used,
                c.pages_per_zspage,
                freeable,
            )
        )
        fullness_totals = [t + n for t, n in zip(fullness_totals, c.fullness)]
        total_objs += c.objs_allocated
        total_used += c.objs_used
        total_pages += c.pages_used
        total_freeable += freeable
    out.append("\n")
    out.append(
        " %5s %5s %s%13d %10d %10d %16s %8d\n"
        % (
            "Total",
            "",
            groups % tuple(fullness_totals),
            total_objs,
            total_used,
            total_pages,
            "",
            total_freeable,
        )
    )
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


def bd_stat_line(s):
    """zram's ``bd_stat`` line of DeviceStats ``s``: bd_count bd_reads
    bd_writes, in 4 KiB pages ("%8llu %8llu %8llu"), and appended, beyond
    zram, wb_failures: writebacks a failing backing store stopped."""
    return "%8d %8d %8d %8d\n" % (s.bd_count, s.bd_reads, s.bd_writes, s.wb_failures)
