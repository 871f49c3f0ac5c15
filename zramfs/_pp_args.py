"""The kernel's syntax for zram's post-processing attributes, parsed.

Where this sits in the data flow::

    zramfs.fs (a write to idle, writeback, recompress, recomp_algorithm)
        -> zramfs.device (BlockDevice.mark_idle, writeback, recompress, ...)
               '-> zramfs._pp_args (this module): text -> arguments

zram parses these attributes in ``idle_store``, ``writeback_store``,
``recompress_store`` and ``recomp_algorithm_store`` (drivers/block/zram/
zram_drv.c), with the kernel's ``next_arg``: whitespace-separated
``key=value`` words.  The functions here take the same text and give the
same answers, including the kernel's quirks (unknown keys are ignored; the
legacy ``writeback`` modes are bare words; a bad ``type=`` of ``recompress``
means "any slot").  A bad value raises ``InvalidArgumentError`` carrying the
errno zram returns (EINVAL, or ERANGE for a page index past the device).
"""

import errno

__all__ = [
    "WB_HUGE",
    "WB_IDLE",
    "WB_INCOMPRESSIBLE",
    "InvalidArgumentError",
    "parse_idle",
    "parse_recomp_algorithm",
    "parse_recompress",
    "parse_writeback",
]

# writeback modes, zram's HUGE_WRITEBACK, IDLE_WRITEBACK and
# INCOMPRESSIBLE_WRITEBACK; 0 (PAGE_WRITEBACK) takes any slot in the range.
WB_HUGE = 1
WB_IDLE = 2
WB_INCOMPRESSIBLE = 4

_WB_MODES = {
    "idle": WB_IDLE,
    "huge": WB_HUGE,
    "huge_idle": WB_IDLE | WB_HUGE,
    "incompressible": WB_INCOMPRESSIBLE,
}
# recompress's type=: zram's RECOMPRESS_IDLE and RECOMPRESS_HUGE, which
# mean the same as the writeback bits of those names.
_RECOMPRESS_TYPES = {"idle": WB_IDLE, "huge": WB_HUGE, "huge_idle": WB_IDLE | WB_HUGE}


class InvalidArgumentError(ValueError):
    """Raised when an attribute's text is not what zram accepts; ``errno``
    is the error zram's store function returns for it."""

    def __init__(self, message, errno_=errno.EINVAL):
        super().__init__(message)
        self.errno = errno_


def _text(text):
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgumentError("not ASCII text") from None
    return text


def _args(text):
    """(key, value) pairs of ``text``; value None for a bare word."""
    for word in _text(text).split():
        key, eq, value = word.partition("=")
        yield key, value if eq else None


def _uint(key, value, bits=64):
    # kstrtoul & co.: decimal digits, optionally one leading "+".
    digits = value[1:] if value.startswith("+") else value
    if not digits.isdigit() or not digits.isascii():
        raise InvalidArgumentError(f"{key}={value}: not a decimal number")
    number = int(digits)
    if number >> bits:
        raise InvalidArgumentError(f"{key}={value}: too large", errno.ERANGE)
    return number


def parse_idle(text):
    """``idle``: "all" -> None (every slot), "N" -> N seconds (idle_store:
    kstrtouint with base 0, so 0x10 and 010 count too)."""
    word = _text(text).strip()
    if word == "all":
        return None
    try:
        age = int(word, 0)
    except ValueError:
        raise InvalidArgumentError(
            f"idle: {word!r} is neither 'all' nor a number of seconds"
        ) from None
    if not 0 <= age < 1 << 32:
        # kstrtouint's ERANGE, which idle_store turns into EINVAL like any failure.
        raise InvalidArgumentError(f"idle: {word!r} is out of range")
    return age


def _page_index(key, value, nr_pages):
    index = _uint(key, value)
    if index >= nr_pages:
        raise InvalidArgumentError(
            f"{key}={value}: past the last page ({nr_pages - 1})", errno.ERANGE
        )
    return index


def parse_writeback(text, nr_pages):
    """``writeback`` -> a list of (mode, first, end) slot ranges to write
    back in order, as writeback_store scans them: a bare mode word or
    ``type=MODE`` covers the whole device and ends the list;
    ``page_index=N`` and ``page_indexes=A-B`` (A to B inclusive) add ranges
    that take any stored slot.  Unknown keys are ignored."""
    jobs = []
    for key, value in _args(text):
        if not value or key == "type":
            # A bare word is the legacy form of type=WORD (so is "WORD=").
            name = value or key
            if name not in _WB_MODES:
                raise InvalidArgumentError(
                    f"writeback: unknown mode {name!r}; known: {' '.join(_WB_MODES)}"
                )
            jobs.append((_WB_MODES[name], 0, nr_pages))
            break
        if key == "page_index":
            index = _page_index(key, value, nr_pages)
            jobs.append((0, index, index + 1))
        elif key == "page_indexes":
            low, dash, high = value.partition("-")
            if not dash:
                raise InvalidArgumentError(f"page_indexes={value}: not FIRST-LAST")
            low = _page_index(key, low, nr_pages)
            high = _page_index(key, high, nr_pages)
            if low > high:
                raise InvalidArgumentError(f"page_indexes={value}: FIRST after LAST", errno.ERANGE)
            jobs.append((0, low, high + 1))
    return jobs


def parse_recomp_algorithm(text):
    """``recomp_algorithm`` -> (algo, priority, level): ``algo=NAME`` is
    required, ``priority`` 1..3 defaults to 1 (recomp_algorithm_store).
    ``level=N`` (None if absent) is beyond zram, which ignores the key and
    takes levels through ``algorithm_params``: zramfs sets the codec's level
    in the same write."""
    algo = None
    priority = 1
    level = None
    for key, value in _args(text):
        if not value:
            raise InvalidArgumentError(f"recomp_algorithm: {key} needs a value (key=value)")
        if key == "algo":
            algo = value
        elif key == "priority":
            priority = _uint(key, value, 31)
        elif key == "level":
            # kstrtoint: an optional sign, then decimal digits.
            digits = value[1:] if value[:1] in "+-" else value
            if not digits.isdigit() or not digits.isascii():
                raise InvalidArgumentError(f"level={value}: not a decimal number")
            level = int(value, 10)
    if algo is None:
        raise InvalidArgumentError("recomp_algorithm: algo=NAME is required")
    if not 1 <= priority <= 3:
        raise InvalidArgumentError(f"recomp_algorithm: priority must be 1..3, not {priority}")
    return algo, priority, level


def parse_recompress(text):
    """``recompress`` -> a dict of mode (WB_IDLE/WB_HUGE bits, 0 = any),
    threshold (bytes, 0 = none), max_pages (None = no limit), algo (None)
    and priority (None), as recompress_store reads them."""
    args = {"mode": 0, "threshold": 0, "max_pages": None, "algo": None, "priority": None}
    for key, value in _args(text):
        if not value:
            raise InvalidArgumentError(f"recompress: {key} needs a value (key=value)")
        if key == "type":
            args["mode"] = _RECOMPRESS_TYPES.get(value, 0)
        elif key == "max_pages":
            args["max_pages"] = _uint(key, value)
        elif key == "threshold":
            args["threshold"] = _uint(key, value, 32)
        elif key == "algo":
            args["algo"] = value
        elif key == "priority":
            args["priority"] = _uint(key, value, 32)
    return args
