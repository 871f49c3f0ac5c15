"""The inode table: what a zramfs mount looks like, independent of FUSE.

Where this sits: a FUSE backend (``zramfs.fuse``: our own /dev/fuse session,
or pyfuse3) decodes a kernel request and calls one method here; this module
answers in terms of inodes, names, `Attr` and bytes, and forwards block I/O on
`disk` to the `zramfs.device.BlockDevice` below it.  It knows nothing of the
wire protocol, so both backends share it and errors leave it as typed
exceptions that the backend maps to errno with ``zramfs.fuse.errno_for``.

The tree is fixed, like a zram device's sysfs directory::

    /                 (ino 1)  the mount root
    /disk             (ino 2)  the block device's data, size = disksize
    /disksize ...              zram's attribute files, same names and formats

The device has zram's lifecycle.  Uninitialised (``device`` None,
``initstate`` 0), `disk` has size 0: reads find its end and writes get
ENOSPC, as on a block device of size 0; ``comp_algorithm``,
``algorithm_params``, ``mem_limit`` and the watermark's two files (beyond
zram) take their settings.  Writing
``disksize`` builds the BlockDevice with them; from then on the first two
and ``disksize`` answer EBUSY.  Writing ``reset`` closes the device (EBUSY
while `disk` is open: a loop device holds it open) and puts every setting
back to its default.  After either, the backend's ``on_resize`` hook tells
the kernel to drop its cached size of `disk`.

Attribute files report size 4096 (as sysfs does) and are opened direct_io by
the backends so every read renders fresh text.  The hot path (READ/WRITE on
`disk`) may bypass this class and call ``fs.device`` directly; `read` and
`write` here implement the same clamping rules for everyone else.

The tree is fixed and so are the modes and owners of `disk` and the root:
creating, removing or renaming names fails as it does in sysfs, and so
does chmod or chown of `disk` (swap contents) or of the root.  `disk` has
the fixed size of a block device: a truncation to 0 is ignored (that is
how open(O_TRUNC) arrives, and a block device ignores O_TRUNC), any other
size is refused.

Concurrency: the table is a handful of inodes.  `_lock` guards changes to
them (setattr), the device's lifecycle (init, reset, the settings before
init) and the count of `disk`'s opens, so an open never races a reset;
lookups and ``fs.device`` are read without it (single reads are atomic).
The device is closed only by a reset, which needs `disk` closed, so no
request is on the device then.  No method here waits on anything that
might need swap I/O.

Slow stores (`_AttrFile.slow`: writeback, recompress, idle, compact,
backing_dev, reset) may take seconds or touch other files; the backends run
them off the threads that serve `disk`.  Those that work on the device hold
it through `device_op`, counted under `_lock`; a reset (and `close`, at
unmount) waits on `_ops_done` until none is left, as zram's reset waits for
its dev_lock, so the device is never closed under a running writeback.
"""

import contextlib
import os
import stat
import threading
import time
from dataclasses import dataclass, replace

from allocator import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, Pool
from zramfs._backing import BackingStoreError
from zramfs._pp_args import parse_idle, parse_recomp_algorithm
from zramfs.codecs import (
    CODECS,
    DEFAULT_ALGORITHM,
    AlgorithmParams,
    InvalidCodecParamsError,
    UnknownAlgorithmError,
    get_codec,
    parse_algorithm_params,
)
from zramfs.config import SizeError, check_backing_dev
from zramfs.config import (
    memparse as _kernel_memparse,  # the kernel's size grammar, shared with the CLI
)
from zramfs.device import (
    DEFAULT_WB_BATCH_SIZE,
    PAGE_SIZE,
    BlockDevice,
    DeviceStats,
    InvalidDiskSizeError,
    InvalidWatermarkError,
    OutOfRangeError,
    WatermarkStats,
    bd_stat_line,
    check_watermarks,
    classes_table,
    debug_stat_text,
    io_stat_line,
    mm_stat_line,
    watermark_stat_line,
)

ROOT_INO = 1
DISK_INO = 2

# The size sysfs reports for every attribute file, whatever its content.
ATTR_FILE_SIZE = 4096

# fallocate(2) mode (linux/falloc.h) that only FUSE requests carry; KEEP_SIZE
# and PUNCH_HOLE come from the allocator, which punches holes itself.
FALLOC_FL_ZERO_RANGE = 0x10

# st_blocks counts 512-byte units, whatever the block size.
_ST_BLOCK = 512


class FsError(Exception):
    """Base of the errors the inode table raises; each maps to one errno."""


class NotFoundError(FsError):
    """Raised when a name or inode does not exist (ENOENT)."""


class NotPermittedError(FsError):
    """Raised when an operation is never allowed here: resizing `disk`, changing its
    mode or owner, removing or renaming a name (EPERM)."""


class ReadOnlyError(FsError):
    """Raised when something asks to write what cannot be written: an attribute file
    against its mode, or a new file in the fixed tree (EACCES)."""


class InvalidValueError(FsError):
    """Raised when a value written to an attribute file does not parse or is refused (EINVAL)."""


class BusyError(FsError):
    """Raised when the device's state forbids a change now: disksize,
    comp_algorithm or algorithm_params after init, reset while disk is open
    (EBUSY, as zram answers)."""


class ValueRangeError(FsError):
    """Raised when a number written is out of its type's range, e.g. reset
    past 16 bits (ERANGE, from the kernel's kstrtou16)."""


class ArgumentTooLongError(FsError):
    """Raised when a value written is longer than zram accepts, e.g. an
    algorithm name of 128 bytes or more (E2BIG)."""


class OutOfMemoryError(FsError):
    """Raised when writing disksize cannot get the memory (here: the address
    space) for the device's tables (ENOMEM, as zram's zram_meta_alloc)."""


class NotSupportedError(FsError):
    """Raised when an operation mode is not implemented, e.g. an fallocate mode (EOPNOTSUPP)."""


class IsADirectoryError(FsError):  # noqa: A001 - the errno's name, scoped to this module
    """Raised when a file operation is asked of the root directory (EISDIR)."""


class NotADirectoryError(FsError):  # noqa: A001
    """Raised when a directory operation is asked of a file (ENOTDIR)."""


@dataclass(frozen=True)
class Attr:
    """One inode's attributes, as stat(2) shows them."""

    ino: int
    mode: int  # full st_mode, type bits included
    nlink: int
    size: int
    blocks: int  # 512-byte units
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class StatFs:
    """statfs(2) for the mount.  loop(4) uses bsize as its discard granularity."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namelen: int


# mem_limit is kept in whole pages and shown in bytes, which must fit the
# unsigned long the kernel keeps it in.  The kernel's memparse() wraps
# silently past 64 bits (99999999T would become a small limit); we refuse.
_MEM_LIMIT_MAX = (1 << 64) - PAGE_SIZE
# disksize is a u64 in zram; the same refusal past 64 bits.
_DISKSIZE_MAX = (1 << 64) - PAGE_SIZE
# zram's ZRAM_MAX_ALGO_NAME_SZ: comp_algorithm refuses a name this long or
# longer with E2BIG before it looks the name up.
_MAX_ALGO_NAME = 128


def memparse(text):
    """config.memparse, refusing with InvalidValueError (EINVAL)."""
    try:
        return _kernel_memparse(text)
    except SizeError as e:
        raise InvalidValueError(str(e)) from None


def _decode(data):
    try:
        return bytes(data).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidValueError("attribute values are ASCII") from None


def _text(store):
    """A store that takes the written bytes as ASCII text."""
    return lambda fs, data: store(fs, _decode(data))


def _strip_newline(text):
    # sysfs hands a store what was written; zram drops one trailing newline
    # (echo adds it) and nothing else.
    return text[:-1] if text.endswith("\n") else text


def _kstrtou(text, bits, too_large=ValueRangeError):
    """The kernel's kstrtou<bits>(text, 10): decimal digits, an optional
    leading '+', one optional trailing newline.  InvalidValueError if not
    that, ``too_large`` (ERANGE, or what the store answers) past the type."""
    body = _strip_newline(text)
    if body.startswith("+"):
        body = body[1:]
    if not body or not body.isascii() or not body.isdigit():
        raise InvalidValueError(f"not a decimal number: {text.strip()!r}")
    value = int(body, 10)
    if value >> bits:
        raise too_large(f"{value} does not fit {bits} bits")
    return value


def _kstrtou16(text):
    return _kstrtou(text, 16)


class _AttrFile:
    """One zram-style attribute file: how it renders and how it takes a write."""

    __slots__ = ("name", "perm", "show", "store", "dump", "slow")

    def __init__(self, name, perm, show=None, store=None, dump=False, slow=False):
        self.name = name
        self.perm = perm
        self.show = show  # (fs) -> str, or None if write-only
        self.store = store  # (fs, bytes) -> None, or None if read-only
        # A dump is rendered once per open and read from that copy (the
        # debugfs files, too large to render again for each read).
        self.dump = dump
        # A slow store may take seconds (a writeback) or touch files: the
        # FUSE backends run it off the threads that serve `disk`, so I/O
        # keeps flowing while the writer waits, as zram's writer waits.
        self.slow = slow


def _available(selected):
    # zcomp_available_show: every name followed by a space, the selected one
    # in brackets, then a newline ("[lzo-rle] lzo lz4 \n" on the kernel).
    return "".join(f"[{c}] " if c == selected else f"{c} " for c in CODECS) + "\n"


def _show_comp_algorithm(fs):
    return _available(fs.algorithm)


def _store_mem_used_max(fs, text):
    # zram: anything but 0 is -EINVAL; on an uninitialised device, nothing to do.
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise InvalidValueError(f"mem_used_max takes 0, not {text.strip()!r}") from None
    if value != 0:
        raise InvalidValueError(f"mem_used_max takes 0, not {value}")
    device = fs.device
    if device is not None:
        device.reset_mem_used_max()


def _show_block_state(fs):
    device = fs.device
    if device is None:  # zram's read_block_state: -EINVAL before init
        raise InvalidValueError("block_state: the device is not initialised")
    return "".join(device.block_state())


def _store_compact(fs, _data):
    # Kernel zram's compact_store never looks at what was written; it
    # refuses an uninitialised device (-EINVAL).
    with fs.device_op("compact") as device:
        device.compact()


# -- post-processing: idle, writeback, recompression (zram's CONFIG_ZRAM_WRITEBACK
# and CONFIG_ZRAM_MULTI_COMP attributes; zramfs.device does the work) --------


def _store_idle(fs, text):
    # idle_store: "all" or seconds (kstrtouint base 0), then EINVAL before init.
    age = parse_idle(_strip_newline(text))
    with fs.device_op("idle") as device:
        device.mark_idle(age)


def _store_writeback(fs, text):
    # writeback_store: EINVAL before init, ENODEV without backing_dev, then
    # the request (zramfs._pp_args.parse_writeback); EIO when
    # writeback_limit runs out, ENOSPC when the store is full.
    with fs.device_op("writeback") as device:
        device.writeback(text)


def _store_recompress(fs, text):
    with fs.device_op("recompress") as device:
        device.recompress(text)


def _show_recomp_algorithm(fs):
    # recomp_algorithm_show: "#N: " and comp_algorithm's list, per priority set.
    return "".join(
        f"#{priority}: " + _available(name) for priority, (name, _) in sorted(fs.recomp.items())
    )


# The writeback settings zram keeps in struct zram, any time, before init
# too: name -> (parse of the written text, show of the value).  Parsed as
# their stores do: kstrtoull/kstrtouint, base 10, every failure EINVAL.
_WB_SETTINGS = {
    "writeback_limit": (lambda t: _kstrtou(t, 64, InvalidValueError), str),
    "writeback_limit_enable": (lambda t: bool(_kstrtou(t, 64, InvalidValueError)), int),
    "writeback_batch_size": (lambda t: _nonzero(_kstrtou(t, 32, InvalidValueError)), str),
}


def _nonzero(value):
    if not value:
        raise InvalidValueError("0 is not allowed here")
    return value


_WB_DEFAULTS = {
    "writeback_limit": 0,
    "writeback_limit_enable": False,
    "writeback_batch_size": DEFAULT_WB_BATCH_SIZE,
}


def _wb_setting_file(name):
    parse, show = _WB_SETTINGS[name]
    return _AttrFile(
        name,
        0o644,
        show=lambda fs: f"{show(fs.wb_setting(name))}\n",
        store=_text(lambda fs, t: fs.set_wb_setting(name, parse(t))),
    )


_ATTR_FILES = (
    _AttrFile(
        "disksize", 0o644, show=lambda fs: f"{fs.disksize}\n", store=_text(lambda fs, t: fs.init(t))
    ),
    _AttrFile("initstate", 0o444, show=lambda fs: f"{int(fs.device is not None)}\n"),
    # slow: a reset waits for a running writeback, recompression or compaction.
    _AttrFile("reset", 0o200, store=_text(lambda fs, t: fs.reset(t)), slow=True),
    _AttrFile(
        "comp_algorithm",
        0o644,
        show=_show_comp_algorithm,
        store=_text(lambda fs, t: fs.set_algorithm(t)),
    ),
    _AttrFile("algorithm_params", 0o200, store=_text(lambda fs, t: fs.set_algorithm_params(t))),
    _AttrFile(
        "mem_limit",
        0o644,
        show=lambda fs: f"{fs.mem_limit}\n",
        store=_text(lambda fs, t: fs.set_mem_limit(t)),
    ),
    _AttrFile(
        "mem_used_max",
        0o644,
        show=lambda fs: f"{fs.stats().mem_used_max}\n",
        store=_text(_store_mem_used_max),
    ),
    _AttrFile("mm_stat", 0o444, show=lambda fs: mm_stat_line(fs.stats())),
    _AttrFile("io_stat", 0o444, show=lambda fs: io_stat_line(fs.stats())),
    _AttrFile("compact", 0o200, store=_store_compact, slow=True),
    _AttrFile("debug_stat", 0o444, show=lambda fs: debug_stat_text()),
    # zram's debugfs file (/sys/kernel/debug/zram/zramN/block_state, 0400).
    _AttrFile("block_state", 0o400, show=_show_block_state, dump=True),
    # zsmalloc's debugfs file (/sys/kernel/debug/zsmalloc/zramN/classes).
    _AttrFile("classes", 0o444, show=lambda fs: classes_table(fs.pool_stats())),
    # Idle tracking, writeback and recompression, as zram's.
    _AttrFile("idle", 0o200, store=_text(_store_idle), slow=True),
    _AttrFile(
        "backing_dev",
        0o644,
        show=lambda fs: f"{fs.backing_dev or 'none'}\n",
        store=_text(lambda fs, t: fs.set_backing_dev(t)),
        slow=True,  # it looks at the path, which may be anywhere
    ),
    _AttrFile("writeback", 0o200, store=_text(_store_writeback), slow=True),
    *(_wb_setting_file(name) for name in _WB_SETTINGS),
    _AttrFile("bd_stat", 0o444, show=lambda fs: bd_stat_line(fs.stats())),
    _AttrFile(
        "recomp_algorithm",
        0o644,
        show=_show_recomp_algorithm,
        store=_text(lambda fs, t: fs.set_recomp_algorithm(t)),
    ),
    _AttrFile("recompress", 0o200, store=_text(_store_recompress), slow=True),
    # Beyond zram: writeback before memory runs out (zramfs._watermark).
    _AttrFile(
        "writeback_watermark",
        0o644,
        show=lambda fs: f"{fs.writeback_watermark}\n",
        store=_text(lambda fs, t: fs.set_watermark("writeback_watermark", t)),
    ),
    _AttrFile(
        "writeback_low_watermark",
        0o644,
        show=lambda fs: f"{fs.writeback_low_watermark}\n",
        store=_text(lambda fs, t: fs.set_watermark("writeback_low_watermark", t)),
    ),
    _AttrFile(
        "writeback_watermark_stat",
        0o444,
        show=lambda fs: watermark_stat_line(fs.watermark_stats()),
    ),
)
# Attribute files take the inode numbers after `disk`, in the order above.
_FIRST_ATTR_INO = DISK_INO + 1
# File handles of open dumps; open returns the inode number as the handle
# of every other file, so these never collide with one.
_FIRST_DUMP_FH = 1 << 32


def _empty_pool_stats():
    """What an empty pool reports: the classes table of an uninitialised device."""
    pool = Pool(max_objects=1)
    try:
        return pool.stats()
    finally:
        pool.close()


class Filesystem:
    """The inode table over one zram device (see the module docstring).

    ``device`` is a BlockDevice to serve at once (the daemon's ``--size``),
    or None for an uninitialised device, which a write to ``disksize``
    initialises.  ``fs.device`` is the BlockDevice now, or None.
    """

    def __init__(self, device=None):
        self._lock = threading.Lock()
        # What the next initialisation will use; kept in step with the
        # device while there is one.
        self.algorithm = device.algorithm if device is not None else DEFAULT_ALGORITHM
        self._params = AlgorithmParams()
        self._mem_limit = device.mem_limit if device is not None else 0
        # zram's backing_dev (a path, or None) and recomp_algorithm
        # ({priority: (name, level)}): set before init only, as in zram.
        self._backing_dev = None
        self.recomp = {}
        if device is not None:
            self.recomp = {p: (name, None) for p, name in device.recomp_algorithms.items()}
        # writeback_limit & co. before init; the device holds them after.
        self._wb_settings = dict(_WB_DEFAULTS)
        # The watermark's settings before init, in bytes (see set_watermark).
        self._watermarks = {"writeback_watermark": 0, "writeback_low_watermark": 0}
        self._disk_openers = 0
        # Slow stores working on the device now (device_op); a reset waits
        # for them (_ops_done) instead of closing the device under them.
        self._device_ops = 0
        self._ops_done = threading.Condition(self._lock)
        # Open dumps: file handle -> the text rendered at open.
        self._dumps = {}
        self._next_fh = _FIRST_DUMP_FH
        # Called (no arguments) after disk's size changed, so a FUSE backend
        # can tell the kernel to drop its cached size of disk.
        self.on_resize = None
        self.device = device
        now = time.time_ns()
        uid, gid = os.getuid(), os.getgid()

        def make(ino, mode, nlink, size):
            return Attr(ino, mode, nlink, size, 0, uid, gid, now, now, now)

        self._attrs = {
            ROOT_INO: make(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0),
            DISK_INO: make(DISK_INO, stat.S_IFREG | 0o600, 1, 0),
        }
        self._names = {b"disk": DISK_INO}
        self._attr_files = {}
        for i, af in enumerate(_ATTR_FILES):
            ino = _FIRST_ATTR_INO + i
            self._attrs[ino] = make(ino, stat.S_IFREG | af.perm, 1, ATTR_FILE_SIZE)
            self._names[af.name.encode()] = ino
            self._attr_files[ino] = af

    # -- the device's lifecycle (zram's disksize, reset, comp_algorithm, ...) --
    # Each takes what was written to the attribute file, checks it as zram's
    # store function does (the same errno for the same input), and changes
    # state under _lock, so an open of disk never races an init or a reset.

    @property
    def disksize(self):
        device = self.device
        return device.disksize if device is not None else 0

    @property
    def mem_limit(self):
        device = self.device
        return device.mem_limit if device is not None else self._mem_limit

    def pool_stats(self):
        """The pool's PoolStats (an empty pool's before init)."""
        device = self.device
        if device is not None:
            return device.pool_stats()
        return _empty_pool_stats()

    def stats(self):
        """The device's DeviceStats, or an uninitialised device's: all zero
        but mem_limit (zram shows the limit set before init)."""
        device = self.device
        if device is not None:
            return device.stats()
        return DeviceStats(*(0,) * 3, self._mem_limit, *(0,) * 11)

    def init(self, text):
        """disksize_store: size in memparse syntax, rounded up to a page."""
        size = memparse(text)
        if size == 0:
            raise InvalidValueError("disksize must be more than 0")
        if size > _DISKSIZE_MAX:
            raise InvalidValueError(f"disksize {text.strip()!r} does not fit 64 bits")
        self.init_size((size + PAGE_SIZE - 1) & -PAGE_SIZE)

    def init_size(self, size):
        """Initialise with ``size`` bytes as it is (the daemon's --size, which
        the CLI has checked): a size that is not a whole number of pages is
        refused, not rounded."""
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "disksize cannot change on an initialised device (write reset first)"
                )
            try:
                codec = get_codec(
                    self.algorithm, level=self._params.level, dictionary=self._params.dictionary
                )
            except InvalidCodecParamsError as exc:
                raise InvalidValueError(str(exc)) from None
            try:
                device = BlockDevice(
                    size, codec=codec, mem_limit=self._mem_limit, backing_dev=self._backing_dev
                )
            except InvalidDiskSizeError as exc:  # the slot table cannot be reserved, or a bad size
                raise OutOfMemoryError(str(exc)) from None
            except BackingStoreError as exc:  # e.g. no O_DIRECT where the file is
                raise InvalidValueError(str(exc)) from None
            try:
                for priority, (name, level) in sorted(self.recomp.items()):
                    device.set_recomp_algorithm(name, priority, level)
                for name, value in self._wb_settings.items():
                    setattr(device, name, value)
                # Checked as a pair when set: the watermark first, then its low mark.
                for name, value in self._watermarks.items():
                    setattr(device, name, value)
            except BaseException:
                device.close()
                raise
            self.device = device
        self._resized()

    def reset(self, text):
        """reset_store: any non-zero u16 frees everything and returns to
        uninitialised (size 0, default algorithm and parameters, no limit,
        statistics cleared); EBUSY while disk is open."""
        if not _kstrtou16(text):
            raise InvalidValueError("reset takes a non-zero number")
        with self._lock:
            # zram's reset waits for a writeback or recompression (dev_lock).
            while self._device_ops:
                self._ops_done.wait()
            if self._disk_openers:
                raise BusyError(f"disk is open ({self._disk_openers} opens, e.g. by a loop device)")
            device, self.device = self.device, None
            self.algorithm = DEFAULT_ALGORITHM
            self._params = AlgorithmParams()
            self._mem_limit = 0
            # zram_reset_device drops the backing device (reset_bdev) and
            # every algorithm; the writeback settings live in struct zram
            # and outlast a reset, writeback_limit's remaining budget too.
            self._backing_dev = None
            self.recomp = {}
            if device is not None:
                self._wb_settings = {name: getattr(device, name) for name in _WB_SETTINGS}
            self._watermarks = dict.fromkeys(self._watermarks, 0)
        if device is not None:
            device.close()
            self._resized()

    def close(self):
        """Close the device, if any (the daemon, once unmounted), after any
        slow store still working on it."""
        with self._lock:
            while self._device_ops:
                self._ops_done.wait()
            device, self.device = self.device, None
        if device is not None:
            device.close()

    def set_algorithm(self, text):
        """comp_algorithm_store: E2BIG, then EINVAL for a name this build
        lacks, then EBUSY once initialised."""
        name = _strip_newline(text)
        if len(name) >= _MAX_ALGO_NAME:
            raise ArgumentTooLongError(f"algorithm name of {len(name)} bytes is too long")
        try:
            get_codec(name)
        except UnknownAlgorithmError as exc:  # says why for lzo-rle, 842
            raise InvalidValueError(str(exc)) from None
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "the algorithm cannot change on an initialised device (write reset first)"
                )
            self.algorithm = name

    def set_algorithm_params(self, text):
        """algorithm_params_store (see codecs.parse_algorithm_params)."""
        try:
            request = parse_algorithm_params(text)
        except InvalidCodecParamsError as exc:
            raise InvalidValueError(str(exc)) from None
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "algorithm parameters cannot change on an initialised device (write reset first)"
                )
            try:
                self._params = request.resolve(self.algorithm)
            except InvalidCodecParamsError as exc:
                raise InvalidValueError(str(exc)) from None

    def set_mem_limit(self, text):
        """mem_limit_store: memparse syntax, any time."""
        limit = memparse(text)
        if limit > _MEM_LIMIT_MAX:
            raise InvalidValueError(f"mem_limit {text.strip()!r} does not fit 64 bits")
        with self._lock:
            device = self.device
            try:
                if device is not None:
                    device.mem_limit = limit
            except ValueError as e:  # the device's own range check
                raise InvalidValueError(str(e)) from None
            self._mem_limit = limit

    @contextlib.contextmanager
    def device_op(self, what):
        """The device, for a slow store to work on (``with fs.device_op("writeback")
        as device``): EINVAL before init, as zram's post-processing stores
        answer; a reset waits until the block ends."""
        with self._lock:
            device = self.device
            if device is None:
                raise InvalidValueError(
                    f"{what}: the device is not initialised (write disksize first)"
                )
            self._device_ops += 1
        try:
            yield device
        finally:
            with self._lock:
                self._device_ops -= 1
                self._ops_done.notify_all()

    def is_slow(self, ino):
        """Whether a write to inode ``ino`` may take long (see _AttrFile.slow)."""
        af = self._attr_files.get(ino)
        return af is not None and af.slow

    @property
    def backing_dev(self):
        """zram's backing_dev: the path, or None."""
        device = self.device
        return device.backing_dev if device is not None else self._backing_dev

    def set_backing_dev(self, text):
        """backing_dev_store: EBUSY once initialised; the path (one trailing
        newline dropped) checked by config.check_backing_dev, whose
        BackingDevError carries the errno.  The store itself is opened
        (a file created, sized to the disk) by the init."""
        path = _strip_newline(text)
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "backing_dev cannot change on an initialised device (write reset first)"
                )
        path = check_backing_dev(path)  # outside the lock: it stats the path
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "backing_dev cannot change on an initialised device (write reset first)"
                )
            self._backing_dev = path

    def set_recomp_algorithm(self, text):
        """recomp_algorithm_store: ``algo=NAME [priority=1..3]`` (zramfs also
        takes ``level=N``); EINVAL for a bad text or an unknown algorithm,
        E2BIG for a long name, EBUSY once initialised."""
        name, priority, level = parse_recomp_algorithm(text)
        if len(name) >= _MAX_ALGO_NAME:
            raise ArgumentTooLongError(f"algorithm name of {len(name)} bytes is too long")
        try:
            get_codec(name, level=level)
        except (UnknownAlgorithmError, InvalidCodecParamsError) as exc:
            raise InvalidValueError(str(exc)) from None
        with self._lock:
            if self.device is not None:
                raise BusyError(
                    "recomp_algorithm cannot change on an initialised device (write reset first)"
                )
            self.recomp[priority] = (name, level)

    def wb_setting(self, name):
        """writeback_limit, writeback_limit_enable or writeback_batch_size."""
        device = self.device
        return getattr(device, name) if device is not None else self._wb_settings[name]

    def set_wb_setting(self, name, value):
        """Set a writeback setting (already parsed), any time, as zram does."""
        with self._lock:
            device = self.device
            if device is not None:
                setattr(device, name, value)  # InvalidArgumentError: EINVAL
            self._wb_settings[name] = value

    # -- the watermark (beyond zram; zramfs._watermark) -------------------------

    @property
    def writeback_watermark(self):
        device = self.device
        if device is not None:
            return device.writeback_watermark
        return self._watermarks["writeback_watermark"]

    @property
    def writeback_low_watermark(self):
        device = self.device
        if device is not None:
            return device.writeback_low_watermark
        return self._watermarks["writeback_low_watermark"]

    def watermark_stats(self):
        """The watermark's counters (all 0 before init)."""
        device = self.device
        if device is not None:
            return device.watermark_stats()
        return WatermarkStats(0, 0, 0, 0, 0)

    def set_watermark(self, name, text):
        """writeback_watermark or writeback_low_watermark (``name``): memparse
        syntax, any time, like mem_limit; 0 = off (the low mark: 7/8 of the
        watermark).  EINVAL past 64 bits, or when the low mark would not be
        below the watermark (both set).  Allowed without a backing store,
        inactive until one is set."""
        value = memparse(text)
        if value > _MEM_LIMIT_MAX:
            raise InvalidValueError(f"{name} {text.strip()!r} does not fit 64 bits")
        with self._lock:
            marks = {**self._watermarks, name: value}
            try:
                check_watermarks(
                    marks["writeback_watermark"], marks["writeback_low_watermark"], name
                )
                if self.device is not None:
                    setattr(self.device, name, value)
            except InvalidWatermarkError as e:
                raise InvalidValueError(str(e)) from None
            self._watermarks = marks

    def _resized(self):
        hook = self.on_resize
        if hook is not None:
            hook()

    # -- lookups and attributes ---------------------------------------------

    def _attr(self, ino):
        try:
            return self._attrs[ino]
        except KeyError:
            raise NotFoundError(f"no inode {ino}") from None

    def lookup(self, parent_ino, name):
        if self._attr(parent_ino).ino != ROOT_INO:
            raise NotADirectoryError(f"inode {parent_ino} is not a directory")
        if name == b".":
            return self.getattr(ROOT_INO)
        if name == b"..":
            return self.getattr(ROOT_INO)
        try:
            return self.getattr(self._names[name])
        except KeyError:
            raise NotFoundError(f"no such file: {name!r}") from None

    def getattr(self, ino):
        a = self._attr(ino)
        if ino == DISK_INO:
            # disk's size is disksize (0 before init); its blocks what the
            # data really costs in RAM, so `du disk` means something.
            device = self.device
            if device is not None:
                a = replace(
                    a, size=device.disksize, blocks=device.stats().mem_used_total // _ST_BLOCK
                )
        return a

    def setattr(self, ino, size=None, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None):
        with self._lock:
            a = self._attr(ino)
            if size is not None and size != (self.disksize if ino == DISK_INO else a.size):
                if ino == ROOT_INO:
                    raise IsADirectoryError("cannot truncate the root directory")
                # open(O_TRUNC) arrives as size=0 (`dd of=disk`, `echo 1 >
                # compact`), indistinguishable from truncate(path, 0); a block
                # device and sysfs ignore O_TRUNC, so a 0 is ignored whatever
                # sent it.  (FUSE_ATOMIC_O_TRUNC would tell them apart, but
                # then the kernel sets its cached size of disk to 0 on every
                # O_TRUNC open, and async direct reads from loop come back
                # short until the size is fetched again.)
                if size != 0:
                    if ino == DISK_INO:
                        raise NotPermittedError(
                            f"disk size is fixed at {self.disksize} (write disksize instead)"
                        )
                    raise NotPermittedError("attribute files cannot be resized")
            if (mode is not None or uid is not None or gid is not None) and ino in (
                ROOT_INO,
                DISK_INO,
            ):
                # Only root may read disk, which holds other processes'
                # memory; with allow_other a chmod would open it to everyone.
                raise NotPermittedError("the mode and owner of disk and of the root are fixed")
            changes = {}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(a.mode) | stat.S_IMODE(mode)
            if uid is not None:
                changes["uid"] = uid
            if gid is not None:
                changes["gid"] = gid
            if atime_ns is not None:
                changes["atime_ns"] = atime_ns
            if mtime_ns is not None:
                changes["mtime_ns"] = mtime_ns
            if changes:
                changes["ctime_ns"] = time.time_ns()
                self._attrs[ino] = replace(a, **changes)
        return self.getattr(ino)

    # -- open and I/O --------------------------------------------------------

    def open(self, ino, flags):
        a = self._attr(ino)
        if ino == ROOT_INO:
            raise IsADirectoryError("the root is a directory")
        if ino == DISK_INO:
            # Counted, as the kernel counts a block device's openers: reset
            # is refused while any open of disk (a loop device's) is alive.
            with self._lock:
                self._disk_openers += 1
            return ino
        af = self._attr_files.get(ino)
        if af is not None:
            # Like kernfs: an attribute without a show (store) op cannot be
            # opened for reading (writing), not even by root.
            acc = flags & os.O_ACCMODE
            if acc in (os.O_WRONLY, os.O_RDWR) and af.store is None:
                raise ReadOnlyError(f"{af.name} is read-only")
            if acc in (os.O_RDONLY, os.O_RDWR) and af.show is None:
                raise ReadOnlyError(f"{af.name} is write-only")
            if af.dump:
                # Rendered without _lock (the device locks per batch).
                text = af.show(self).encode("ascii")
                with self._lock:
                    fh = self._next_fh
                    self._next_fh += 1
                    self._dumps[fh] = text
                return fh
        del a
        return ino

    def release(self, ino, fh=None):
        """The last close of an open file (FUSE RELEASE); ``fh`` is what
        open returned."""
        if ino == DISK_INO:
            with self._lock:
                self._disk_openers -= 1
        elif fh is not None:
            self._dumps.pop(fh, None)

    def opendir(self, ino):
        if self._attr(ino).ino != ROOT_INO:
            raise NotADirectoryError(f"inode {ino} is not a directory")

    def read(self, ino, offset, size, fh=None):
        dump = self._dumps.get(fh)
        if dump is not None:
            return dump[offset : offset + size]
        if ino == DISK_INO:
            # Like a block device: reads at or past the end (every read of an
            # uninitialised device) find end of file.
            device = self.device
            disksize = device.disksize if device is not None else 0
            if offset >= disksize:
                return b""
            return device.read(offset, min(size, disksize - offset))
        af = self._attr_files.get(ino)
        if af is None:
            self._attr(ino)
            raise IsADirectoryError("the root is a directory")
        if af.show is None:
            raise ReadOnlyError(f"{af.name} is write-only")
        text = af.show(self).encode("ascii")
        return text[offset : offset + size]

    def write(self, ino, offset, data):
        if ino == DISK_INO:
            device = self.device
            disksize = device.disksize if device is not None else 0
            if offset >= disksize:
                if len(data) == 0:
                    return 0
                # ENOSPC, as a block device answers a write at its end.
                raise OutOfRangeError(f"write at {offset} is past the end of disk ({disksize})")
            # A write that straddles the end is cut short, as on a block device.
            n = min(len(data), disksize - offset)
            device.write(offset, data if n == len(data) else memoryview(data)[:n])
            return n
        af = self._attr_files.get(ino)
        if af is None:
            self._attr(ino)
            raise IsADirectoryError("the root is a directory")
        if af.store is None:
            raise ReadOnlyError(f"{af.name} is read-only")
        af.store(self, data)
        return len(data)

    def fallocate(self, ino, mode, offset, length):
        if ino != DISK_INO:
            self._attr(ino)
            raise NotSupportedError("fallocate works on disk only")
        if offset < 0 or length <= 0:
            raise InvalidValueError("fallocate needs offset >= 0 and length > 0")
        end = offset + length
        device = self.device
        disksize = device.disksize if device is not None else 0
        if mode in (0, FALLOC_FL_KEEP_SIZE):
            # Preallocation: every block of disk already "exists".
            if end > disksize and not mode & FALLOC_FL_KEEP_SIZE:
                raise NotPermittedError(f"disk size is fixed at {disksize}")
            return
        if mode in (
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            FALLOC_FL_ZERO_RANGE,
            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
        ):
            if end > disksize and not mode & FALLOC_FL_KEEP_SIZE:
                raise NotPermittedError(f"disk size is fixed at {disksize}")
            end = min(end, disksize)
            if offset < end:
                # Discard frees whole blocks and zeroes partial edges: exactly
                # what both a punched hole and a zeroed range must read back as.
                device.discard(offset, end - offset)
            return
        raise NotSupportedError(f"fallocate mode {mode:#x} is not supported")

    # -- the tree is fixed ---------------------------------------------------
    # Answered as sysfs answers for /sys/block/zram0 (measured as root,
    # kernel 6.18): VFS gives EACCES when the directory has no create op
    # (open(O_CREAT), mknod of a regular file) and EPERM for the others.

    def create(self, parent_ino):
        """open(O_CREAT) of a new name, or mknod of a regular file: EACCES."""
        self.opendir(parent_ino)
        raise ReadOnlyError("no file can be created here")

    def mknod(self, parent_ino, mode):
        if stat.S_ISREG(mode):
            self.create(parent_ino)
        self.change_tree(parent_ino)

    def change_tree(self, parent_ino):
        """mkdir, unlink, rmdir, rename, link, symlink, and mknod of a special file: EPERM."""
        self.opendir(parent_ino)
        raise NotPermittedError("names cannot be added, removed or renamed here")

    # -- directory -----------------------------------------------------------

    def readdir(self, ino):
        self.opendir(ino)
        root = self._attrs[ROOT_INO]
        entries = [(b".", root), (b"..", root)]
        # getattr, not the table: a backend may hand these to the kernel as
        # its attributes (READDIRPLUS), and disk's size is the device's.
        entries.extend((name, self.getattr(i)) for name, i in self._names.items())
        return entries

    def statfs(self):
        blocks = self.disksize // PAGE_SIZE
        # "Free" is what is not stored: blocks never written or discarded.
        used = min(blocks, self.stats().orig_data_size // PAGE_SIZE)
        return StatFs(
            bsize=PAGE_SIZE,
            frsize=PAGE_SIZE,
            blocks=blocks,
            bfree=blocks - used,
            bavail=blocks - used,
            files=len(self._attrs),
            ffree=0,
            namelen=255,
        )
