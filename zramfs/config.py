"""Sizes and device settings, before anything is set up.

This module sits in front of the control path: ``zramfs.cli`` (and later the
boot-time setup from a zram-generator style config) turns what a person typed
into plain integers here, before a daemon is started, a loop device attached
or swap enabled.  Nothing here touches a device; the only state it reads is
``MemTotal`` from ``/proc/meminfo``, for ``N%`` sizes and the default swap size,
and whether a disksize's slot table can be reserved (``check_disksize``).

Parsing and checking are separate steps, because the callers differ in what
they accept: a disksize must be a positive multiple of the page size, while a
``mem_limit`` of 0 means "no limit".  ``parse_size`` only turns text into
bytes; ``check_disksize`` applies the disksize rules.

Room is left for the zram-generator style config (one section per device,
``zram-size = min(ram / 2, 4096)``, drop-in directories): its size expressions
will be evaluated into the same integers and checked by the same functions.
"""

import re
from decimal import Decimal, InvalidOperation

from ._slots import SlotTableTooLargeError, check_reservable

__all__ = [
    "PAGE_SIZE",
    "DEFAULT_SWAP_MAX",
    "ConfigError",
    "SizeError",
    "InvalidNameError",
    "parse_size",
    "check_disksize",
    "mem_total",
    "default_swap_size",
    "check_name",
]

# The unit of a zram slot and of a loop device attached with --sector-size
# 4096: a disksize must be a whole number of these.
PAGE_SIZE = 4096

# zram-generator's default `zram-size = min(ram / 2, 4096)` (MiB): half the
# RAM, but never more than 4 GiB.
DEFAULT_SWAP_MAX = 4 << 30

# Binary suffixes, as zram's own disksize attribute (memparse) reads them.
_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}

# "4G", "4 GiB", "4gb", "1.5M", "4096", "4096B", "50%".
_SIZE_RE = re.compile(
    r"""^\s*
    (?P<number>\d+(?:\.\d*)?|\.\d+)
    \s*
    (?:
        (?P<percent>%)
      | (?P<unit>[kmgt])?(?:i?b)?
    )
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)


class ConfigError(ValueError):
    """Raised when a setting given on the command line or in a config is invalid.

    The message is one line, fit to be shown after "zramfs: error: ".
    """


class SizeError(ConfigError):
    """Raised when a size cannot be read, or is not acceptable where it is used."""


class InvalidNameError(ConfigError):
    """Raised when a device name cannot be used (it names a directory and a mount source)."""


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


def parse_size(text, *, ram=None):
    """Turn a size such as ``"4G"``, ``"512M"``, ``"4096"`` or ``"50%"`` into bytes.

    Suffixes K, M, G and T are binary (K = 1024), in either case, optionally
    followed by ``B`` or ``iB``.  A plain number is bytes.  ``N%`` is that
    share of ``ram`` (default: MemTotal), rounded down to a whole page so a
    percentage always makes a valid disksize.  Fractions are allowed as long
    as the result is a whole number of bytes (``1.5K`` yes, ``0.1K`` no).

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
    m = _SIZE_RE.match(text)
    if m is None:
        raise SizeError(
            f"size '{shown}' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM"
        )
    try:
        number = Decimal(m["number"])
    except InvalidOperation:  # pragma: no cover - the regex only lets digits through
        raise SizeError(f"size '{shown}' is not a number") from None
    if m["percent"]:
        if ram is None:
            ram = mem_total()
        size = int(number * ram / 100)
        return size - size % PAGE_SIZE
    size = number * (1 << _SHIFTS[(m["unit"] or "").lower()])
    if size != size.to_integral_value():
        raise SizeError(f"size '{shown}' is not a whole number of bytes")
    return int(size)


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
