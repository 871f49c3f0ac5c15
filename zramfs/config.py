"""Sizes, names and device settings, before anything is set up.

This module sits in front of the control path: ``zramfs.cli`` (and later the
boot-time setup from a zram-generator style config) turns what a person typed
into plain values here, before a daemon is started, a loop device attached
or swap enabled.  Nothing here touches a device; the only state it reads is
``MemTotal`` from ``/proc/meminfo``, for ``N%`` sizes and the default swap size,
and whether a disksize's slot table can be reserved (``check_disksize``).

One size grammar: `memparse`, the kernel's (what ``echo 4G > disksize`` and
``mem_limit`` accept), which the attribute files use as it is, and
`parse_size`, which adds the command line's one extra, ``N%`` of RAM.
Parsing and checking are separate steps, because the callers differ in what
they accept: a disksize must be a positive multiple of the page size, while a
``mem_limit`` of 0 means "no limit".

`DeviceConfig` is one device's settings as the CLI decided them.  It travels
to the daemon as its command line (`DeviceConfig.argv`) and is read back
there by the one parser (`DeviceConfig.add_arguments`/`from_args`), so the
two sides cannot drift apart.

Room is left for the zram-generator style config (one section per device,
``zram-size = min(ram / 2, 4096)``, drop-in directories): its size expressions
will be evaluated into the same integers and checked by the same functions.
"""

import argparse
import errno
import os
import re
import stat
from dataclasses import dataclass, fields

from allocator import PAGE_SIZE  # a disksize is a whole number of slots
from zramfs import mountinfo
from zramfs._slots import SlotTableTooLargeError, check_reservable
from zramfs.codecs import DEFAULT_ALGORITHM

__all__ = [
    "DEFAULT_SWAP_MAX",
    "DEFAULT_NAME",
    "DEFAULT_BACKEND",
    "DEFAULT_ALGORITHM",
    "ConfigError",
    "SizeError",
    "InvalidNameError",
    "BackingDevError",
    "memparse",
    "parse_size",
    "check_disksize",
    "mem_total",
    "default_swap_size",
    "check_name",
    "check_backing_dev",
    "DeviceConfig",
]

# zram-generator's default `zram-size = min(ram / 2, 4096)` (MiB): half the
# RAM, but never more than 4 GiB.
DEFAULT_SWAP_MAX = 4 << 30

# The first device's name, as the kernel's first zram device is zram0.
DEFAULT_NAME = "zram0"
# The FUSE transport: "dev" speaks the protocol on /dev/fuse itself (and
# can discard); zramfs.fuse.BACKENDS lists the others.
DEFAULT_BACKEND = "dev"

# The kernel's memparse(): a number in C notation (0x hex, leading-0 octal,
# decimal) with an optional K/M/G/T/P/E suffix in either case, each a factor
# of 1024.  The kernel ignores whatever follows; we refuse trailing text, so
# a typo cannot silently set a tiny size.  Surrounding blanks (the newline of
# `echo`) are allowed.
_MEMPARSE_RE = re.compile(r"\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMgGtTpPeE]?)\s*\Z")
_SUFFIX_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}

# The command line's extra: "50%", "12.5%" of MemTotal.
_PERCENT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*\Z")


class ConfigError(ValueError):
    """Raised when a setting given on the command line or in a config is invalid.

    The message is one line, fit to be shown after "zramfs: error: ".
    """


class SizeError(ConfigError):
    """Raised when a size cannot be read, or is not acceptable where it is used."""


class InvalidNameError(ConfigError):
    """Raised when a device name cannot be used (it names a directory and a mount source)."""


class BackingDevError(ConfigError):
    """Raised when a path cannot be a device's backing store (``--backing-dev``,
    a write to ``backing_dev``); ``errno`` is what the write answers."""

    def __init__(self, message, errno_=errno.EINVAL):
        super().__init__(message)
        self.errno = errno_


# A device name becomes a directory (/run/zramfs/NAME), the mount's source in
# /proc/self/mountinfo and a systemd instance name (zramfs-swap@NAME), so it
# is kept to characters none of those escape or split on.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def mem_total(meminfo="/proc/meminfo"):
    """Return the machine's RAM in bytes (``MemTotal`` of ``/proc/meminfo``)."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                # "MemTotal:       24684320 kB": the kernel's kB are KiB.
                return int(line.split()[1]) * 1024
    raise OSError(f"no MemTotal in {meminfo}")


def memparse(text):
    """Parse a size as the kernel's memparse() does: ``"64M"`` -> 67108864.

    ``0x`` hex and leading-0 octal as in C; suffixes K, M, G, T, P and E
    (either case) multiply by 1024 each.  Raises SizeError for anything else.
    """
    m = _MEMPARSE_RE.match(text)
    if m is None:
        raise SizeError(
            f"size {text.strip()!r} is not a number with an optional K/M/G/T/P/E suffix"
        )
    digits = m.group(1)
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)  # C's leading-zero octal, which Python's int(x, 0) refuses
    else:
        value = int(digits, 10)
    return value << _SUFFIX_SHIFT[m.group(2).lower()]


def parse_size(text, *, ram=None):
    """Turn a size such as ``"4G"``, ``"512M"``, ``"4096"`` or ``"50%"`` into bytes.

    `memparse`'s grammar, plus ``N%``: that share of ``ram`` (default:
    MemTotal), rounded down to a whole page so a percentage always makes a
    valid disksize.

    Raises SizeError for empty, negative or unreadable text.  Zero and
    alignment are the caller's business (see ``check_disksize``).
    """
    if not isinstance(text, str):
        text = str(text)
    shown = text.strip()
    if not shown:
        raise SizeError("size is empty")
    if shown.startswith("-"):
        raise SizeError(f"size '{shown}' is negative")
    m = _PERCENT_RE.match(text)
    if m is not None:
        if ram is None:
            ram = mem_total()
        from decimal import Decimal  # here: the daemon, which gets bytes, never loads it

        size = int(Decimal(m.group(1)) * ram / 100)
        return size - size % PAGE_SIZE
    try:
        return memparse(text)
    except SizeError:
        raise SizeError(
            f"size '{shown}' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM"
        ) from None


def check_disksize(size):
    """Return ``size`` if it is a valid disksize, else raise SizeError.

    A disksize must be positive and a whole number of 4 KiB pages, like a
    zram device's (and like what a loop device with --sector-size 4096 needs),
    and its slot table must fit in this machine's address space: the table is
    reserved whole, 16 bytes of address space per page, and costs memory only
    where written.  That is tried here (and dropped), so a size the kernel
    would refuse is refused before a daemon starts, with the largest that fits.
    """
    if size <= 0:
        raise SizeError("size must be greater than 0")
    if size % PAGE_SIZE:
        raise SizeError(f"size {size} is not a multiple of {PAGE_SIZE} bytes (the page size)")
    try:
        check_reservable(size // PAGE_SIZE)
    except SlotTableTooLargeError as exc:
        raise SizeError(str(exc)) from None
    return size


def default_swap_size(ram=None):
    """The swap size used when none is given: ``min(ram / 2, 4G)``, page aligned.

    The same default as zram-generator's ``zram-size = min(ram / 2, 4096)``.
    """
    if ram is None:
        ram = mem_total()
    size = min(ram // 2, DEFAULT_SWAP_MAX)
    return size - size % PAGE_SIZE


def check_name(name):
    """Return ``name`` if it can name a device (``zram0``, ``swap-1``), else raise InvalidNameError."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-', not starting with '_', '.' or '-'"
        )
    return name


# The mount type of every zramfs device (zramfs.system.FSTYPE; that module
# builds on this one, so the name is repeated here, once).
_ZRAMFS_FSTYPE = "fuse.zramfs"


def check_backing_dev(path, *, mountinfo_path=mountinfo.MOUNTINFO, sys_dev="/sys/dev/block"):
    """Return ``path`` if it can be a device's backing store, else raise BackingDevError.

    What zramfs._backing.BackingStore will take: a block device, a regular
    file that is empty, or a new file in an existing directory we may
    write.  Refused: a relative path (the daemon works in "/"), a
    directory, another kind of file, and anything on a zramfs mount -- a
    file there, or a loop device over one: writeback would then need
    zramfs's own I/O to make room in zramfs, and could deadlock.  A path
    that is lexically on a zramfs mount is refused before it is touched.
    Nothing is created here: a new file is made, sized to the disk, by
    the device when it is initialised.
    """
    if not path:
        raise BackingDevError("the backing device path is empty", errno.ENOENT)
    if not os.path.isabs(path):
        raise BackingDevError(f"backing device {path!r} is not an absolute path")
    mounts = [m for m in mountinfo.mounts(mountinfo_path) if m.fstype == _ZRAMFS_FSTYPE]

    def refuse_on_zramfs(p, dev=None):
        for m in mounts:
            if p == m.mountpoint or p.startswith(m.mountpoint.rstrip("/") + "/") or dev == m.dev:
                raise BackingDevError(
                    f"backing device {path} is on the zramfs mount {m.mountpoint}: "
                    "writeback into zramfs itself could deadlock"
                )

    refuse_on_zramfs(os.path.normpath(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BackingDevError(f"backing device {path}: {e.strerror}", e.errno) from None
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if st is None:
        try:
            pst = os.stat(parent)
        except OSError as e:
            raise BackingDevError(
                f"backing file {path}: directory {parent}: {e.strerror}", e.errno
            ) from None
        if not stat.S_ISDIR(pst.st_mode):
            raise BackingDevError(
                f"backing file {path}: {parent} is not a directory", errno.ENOTDIR
            )
        refuse_on_zramfs(real, f"{os.major(pst.st_dev)}:{os.minor(pst.st_dev)}")
        if not os.access(parent, os.W_OK):
            raise BackingDevError(
                f"backing file {path}: no permission to create it in {parent}", errno.EACCES
            )
        return path
    if stat.S_ISDIR(st.st_mode):
        raise BackingDevError(f"backing device {path} is a directory", errno.EISDIR)
    if stat.S_ISBLK(st.st_mode):
        # A loop device over a file on zramfs is zramfs too.
        rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        try:
            with open(os.path.join(sys_dev, rdev, "loop", "backing_file")) as f:
                backing = f.read().rstrip("\n")
        except OSError:
            backing = None
        if backing:
            try:
                refuse_on_zramfs(backing)
            except BackingDevError:
                raise BackingDevError(
                    f"backing device {path} is a loop device over {backing}, on zramfs: "
                    "writeback into zramfs itself could deadlock"
                ) from None
        return path
    if not stat.S_ISREG(st.st_mode):
        raise BackingDevError(
            f"backing device {path} is neither a block device nor a regular file", errno.ENOTBLK
        )
    refuse_on_zramfs(real, f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if st.st_size:
        raise BackingDevError(
            f"backing file {path} exists and is not empty ({st.st_size} bytes); "
            "give a new path or an empty file",
            errno.EEXIST,
        )
    return path


@dataclass(frozen=True)
class DeviceConfig:
    """One device's settings, from the CLI to the daemon's command line and back.

    Carried as plain values: the CLI has checked them (`parse_size`,
    `check_disksize`, `check_name`, the codec's name); the daemon's own
    layers check them again and report what they refuse.
    """

    mountpoint: str
    # disksize in bytes; None: mount the device uninitialised (zram's
    # initstate 0), for a write to its `disksize` file to initialise.
    size: int | None
    algorithm: str = DEFAULT_ALGORITHM
    mem_limit: int = 0  # zram's "no limit"
    # zram's algorithm_params text ("level=3 dict=/path"); "" for none.
    algorithm_params: str = ""
    name: str = DEFAULT_NAME
    fuse_backend: str = DEFAULT_BACKEND
    # FUSE reader threads; None: the FUSE layer's default.
    threads: int | None = None
    # The device's run directory (see zramfs.system), where the daemon
    # writes its record; None: it writes none (a daemon started by hand).
    run_dir: str | None = None
    # zram's backing_dev: a block device or a file (absolute); None: none.
    backing_dev: str | None = None
    # zram's recomp_algorithm writes ("algo=zstd priority=1 level=9"), in order.
    recomp_algorithms: tuple[str, ...] = ()
    # Beyond zram (zramfs._watermark), bytes; 0: off / 7/8 of the watermark.
    writeback_watermark: int = 0
    writeback_low_watermark: int = 0

    def __post_init__(self):
        # A daemon record read back from JSON has a list here.
        object.__setattr__(self, "recomp_algorithms", tuple(self.recomp_algorithms))

    def argv(self):
        """The daemon's arguments (after ``python -m zramfs.daemon``); `from_args` reads them back."""
        argv = [
            self.mountpoint,
            "--algorithm", self.algorithm,
            "--mem-limit", str(self.mem_limit),
            "--name", self.name,
            "--fuse-backend", self.fuse_backend,
        ]  # fmt: skip
        if self.size is not None:
            argv += ["--size", str(self.size)]
        if self.algorithm_params:
            argv += ["--algorithm-params", self.algorithm_params]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.run_dir is not None:
            argv += ["--run-dir", self.run_dir]
        if self.backing_dev is not None:
            argv += ["--backing-dev", self.backing_dev]
        for text in self.recomp_algorithms:
            argv += ["--recomp-algorithm", text]
        if self.writeback_watermark:
            argv += ["--writeback-watermark", str(self.writeback_watermark)]
        if self.writeback_low_watermark:
            argv += ["--writeback-low-watermark", str(self.writeback_low_watermark)]
        return argv

    @staticmethod
    def add_arguments(parser, *, backends=(DEFAULT_BACKEND,)):
        """Add the arguments `argv` writes to an argparse parser (the daemon's)."""

        def size(text):
            try:
                return memparse(text)
            except SizeError:
                raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None

        parser.add_argument("mountpoint")
        parser.add_argument(
            "--size", type=size, default=None,
            help="disksize in bytes (K/M/G... suffixes accepted); without it the device starts uninitialised",
        )  # fmt: skip
        parser.add_argument("--algorithm", default=DEFAULT_ALGORITHM)
        parser.add_argument(
            "--algorithm-params", default="", help="zram's algorithm_params, e.g. 'level=3'"
        )
        parser.add_argument("--mem-limit", type=size, default=0, help="bytes; 0 = no limit")
        parser.add_argument(
            "--name", default=DEFAULT_NAME, help="the mount's source name (shown in /proc/mounts)"
        )
        parser.add_argument("--fuse-backend", default=DEFAULT_BACKEND, choices=backends)
        parser.add_argument("--threads", type=int, default=None, help="FUSE reader threads")
        parser.add_argument(
            "--run-dir", default=None, help="where the daemon writes its record and log"
        )
        parser.add_argument(
            "--backing-dev", default=None, help="zram's backing_dev: a block device or a file"
        )
        parser.add_argument(
            "--recomp-algorithm", dest="recomp_algorithms", action="append", default=[],
            help="zram's recomp_algorithm, e.g. 'algo=zstd priority=1'; repeatable",
        )  # fmt: skip
        parser.add_argument(
            "--writeback-watermark", type=size, default=0, help="bytes of pool; 0 = off"
        )
        parser.add_argument(
            "--writeback-low-watermark", type=size, default=0, help="bytes; 0 = 7/8 of the mark"
        )

    @classmethod
    def from_args(cls, args):
        """The DeviceConfig in an argparse namespace filled by `add_arguments`."""
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        return cls(**{**values, "mountpoint": os.path.abspath(args.mountpoint)})
