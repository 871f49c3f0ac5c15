"""Compression codecs, by their kernel names.

Where this sits in the data flow::

    zramfs.fuse -> zramfs.fs -> zramfs.device (BlockDevice) -> allocator (Pool)
                                      |
                                      +-> zramfs._codec_batch (many pages a call)
                                      +-> zramfs.codecs (this module)

``BlockDevice`` is given a ``Codec`` (``get_codec(name)``, or one a caller
built) and hands every 4 KiB page to its ``compress`` before the result goes
into the pool, and what it reads back from the pool to ``decompress``;
``zramfs._codec_batch`` runs the same functions over many pages a call.
Codecs know nothing of slots, pools or locks: they are pure functions of a
page, like the kernel's ``crypto_comp``/``zcomp`` backends that zram calls
through ``zcomp_compress``.

The names are the kernel's (``comp_algorithm`` lists ``lzo lz4 lz4hc zstd
deflate``, in the kernel's order), so a person who knows zram picks the same
word here.  ``lzo`` is LZO1X-1, the kernel's lzo, through python-lzo (the
``zramfs[lzo]`` extra; it builds against liblzo2, which scripts/setup.sh
installs); without it, lzo is not listed and naming it says how to get it.
The kernel's other names have no Python implementation and are refused with
the closest codec named, never swapped for one silently (``NOT_IN_THIS_BUILD``):
``lzo-rle`` (zram's default: LZO1X with zero runs coded by length, a stream
format of its own) and ``842`` (IBM's, made for POWER's hardware unit).

Every codec may be called from several threads at once (compression runs
outside the device lock).  lz4 and zlib are stateless calls that release the
GIL.  zstd keeps one compression context per thread, because a
``ZstdCompressor`` must not be shared between threads, and building a context
per page costs about three times the compression itself (measured: 12 us
against 4 us per 4 KiB page).

Parameters are zram's ``algorithm_params`` (``parse_algorithm_params``
reads the kernel's syntax): ``level`` reaches every algorithm, as the
library's knob -- lz4's acceleration (the kernel's lz4 backend reads its
level the same way), lz4hc's and zstd's compression level, deflate's zlib
level.  ``dict`` is a pre-trained dictionary (``zstd --train``, or any
sample data): zstd and lz4/lz4hc take one (python-lz4's block API has a
``dict`` argument, LZ4_loadDict underneath, as the kernel's lz4 backend
uses); deflate refuses one, as the kernel's deflate backend does not use it.
A dictionary only pays when pages are alike and small to compress: it is
part of every page's compression and decompression.
"""

import importlib.util
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import lz4.block

from allocator import PAGE_SIZE

# zstandard and python-lzo are imported by the codec that uses them: a
# daemon on lz4 (the default) never loads them, and everything it loads
# stays locked in memory (zstandard alone: 1.1 MiB).  python-lzo is the
# optional zramfs[lzo] extra: found or not, without loading it.
_HAVE_LZO = importlib.util.find_spec("lzo") is not None

__all__ = [
    "CODECS",
    "DEFAULT_ALGORITHM",
    "PAGE_SIZE",
    "AlgorithmParams",
    "AlgorithmParamsRequest",
    "Codec",
    "InvalidCodecParamsError",
    "NOT_IN_THIS_BUILD",
    "UnknownAlgorithmError",
    "get_codec",
    "parse_algorithm_params",
]

# Codecs compress one PAGE_SIZE page at a time, as zram does; decompress
# knows the size it must give back, so no codec stores it in its output.

# zram's default since Linux 6.x is lzo-rle, which Python has no binding
# for; lz4 is the fastest here (measured on fio-like data: 3.7 us per page
# compress, 3.3 us decompress, ratio 0.408).
DEFAULT_ALGORITHM = "lz4"


class UnknownAlgorithmError(ValueError):
    """Raised when a compression algorithm name is not one of ``CODECS``."""


class InvalidCodecParamsError(ValueError):
    """Raised when codec parameters are refused: a ``level`` out of the
    algorithm's range, a dictionary the algorithm cannot use or a file that
    cannot be read, or ``algorithm_params`` text that does not parse."""


@dataclass(frozen=True)
class Codec:
    """One algorithm bound to its parameters.

    ``compress(page)`` takes any bytes-like object of ``PAGE_SIZE`` bytes
    (a memoryview slice is fine: no copy is made) and returns ``bytes``.
    ``decompress(data)`` returns the page; it may return fewer bytes or raise
    the library's own error when ``data`` is corrupt, and the device checks.

    The two callables are stored directly (no method in between) because the
    device calls them once per 4 KiB page on its hottest path.
    """

    name: str
    level: int | None
    compress: Callable[[object], bytes] = field(repr=False, compare=False)
    decompress: Callable[[object], bytes] = field(repr=False, compare=False)
    dictionary: bytes | None = field(default=None, repr=False)


# --- the algorithms ---------------------------------------------------------
# Each builder takes the level already checked against its range and returns
# (compress, decompress).


# lz4 at its default level, and the decoder of every raw lz4 block (lz4 and
# lz4hc store the same format).  Defined once, so that zramfs._codec_batch
# can tell a codec that uses them (and may call the library in bulk, or
# decode a run of objects as one lz4 frame) by identity.  Called
# positionally: keyword arguments build a dict per call (4 KiB page:
# compress 1.36 -> 1.14 us, decompress 2.03 -> 1.88 us).  Positions:
# (source, mode, store_size) and (source, uncompressed_size).
def lz4_compress_page(page, _c=lz4.block.compress):
    return _c(page, "default", False)


def lz4_decompress_page(data, _d=lz4.block.decompress, _n=PAGE_SIZE):
    return _d(data, _n)


def _lz4_dict_decompress(dictionary):
    def decompress(data, _d=lz4.block.decompress, _n=PAGE_SIZE, _dict=dictionary):
        return _d(data, _n, dict=_dict)

    return decompress


def _lz4(level, dictionary):
    # level is lz4's acceleration: 1 is the default ratio, higher is faster
    # and compresses less (the kernel's lz4 backend reads its level the same way).
    if dictionary is not None:

        def compress(page, _c=lz4.block.compress, _a=level or 1, _dict=dictionary):
            return _c(page, mode="fast", acceleration=_a, store_size=False, dict=_dict)

        return compress, _lz4_dict_decompress(dictionary)
    if level is None or level == 1:
        return lz4_compress_page, lz4_decompress_page

    def compress(page, _c=lz4.block.compress, _a=level):
        return _c(page, mode="fast", acceleration=_a, store_size=False)

    return compress, lz4_decompress_page


def _lz4hc(level, dictionary):
    if dictionary is not None:

        def compress(page, _c=lz4.block.compress, _l=level, _dict=dictionary):
            return _c(page, mode="high_compression", compression=_l, store_size=False, dict=_dict)

        return compress, _lz4_dict_decompress(dictionary)

    def compress(page, _c=lz4.block.compress, _l=level):
        return _c(page, mode="high_compression", compression=_l, store_size=False)

    return compress, lz4_decompress_page


def _zstd(level, dictionary):
    # One compression context per thread (see the module docstring).  The
    # frame keeps its content size, so decompress needs no size hint; the
    # checksum stays off because the page never leaves this process's memory.
    # A dictionary is digested once (ZstdCompressionDict), shared read-only.
    import zstandard

    local = threading.local()
    try:
        zdict = zstandard.ZstdCompressionDict(dictionary) if dictionary is not None else None
    except zstandard.ZstdError as exc:  # a dictionary zstd cannot digest
        raise InvalidCodecParamsError(f"zstd refused the dictionary: {exc}") from None

    def compress(page):
        try:
            cctx = local.cctx
        except AttributeError:
            cctx = local.cctx = zstandard.ZstdCompressor(level=level, dict_data=zdict)
        return cctx.compress(page)

    def decompress(data):
        try:
            dctx = local.dctx
        except AttributeError:
            dctx = local.dctx = zstandard.ZstdDecompressor(dict_data=zdict)
        return dctx.decompress(data, max_output_size=PAGE_SIZE)

    return compress, decompress


def _lzo(level, dictionary):
    # level 1: lzo1x_1, the kernel's lzo; 2-9: lzo1x_999 (python-lzo's
    # only other level): smaller, much slower to compress, same decoder.
    # python-lzo takes only read-only bytes, not the device's memoryviews.
    import lzo

    def compress(page, _c=lzo.compress, _l=level):
        return _c(bytes(page), _l, False)

    def decompress(data, _d=lzo.decompress, _n=PAGE_SIZE):
        return _d(bytes(data), False, _n)

    return compress, decompress


def _deflate(level, dictionary):
    # Raw deflate (wbits=-15): no zlib header or adler32, as the kernel's
    # deflate backend stores it.  No dictionary: get_codec refuses one
    # (_Algorithm.takes_dict).
    def compress(page, _c=zlib.compress, _l=level):
        return _c(page, _l, wbits=-15)

    def decompress(data, _d=zlib.decompress):
        return _d(data, wbits=-15, bufsize=PAGE_SIZE)

    return compress, decompress


@dataclass(frozen=True)
class _Algorithm:
    builder: Callable
    default_level: int | None
    min_level: int
    max_level: int
    takes_dict: bool


# In the order comp_algorithm lists them.  Level ranges are the libraries'.
_ALGORITHMS = {
    **({"lzo": _Algorithm(_lzo, 1, 1, 9, False)} if _HAVE_LZO else {}),
    "lz4": _Algorithm(_lz4, None, 1, 65537, True),
    "lz4hc": _Algorithm(_lz4hc, 9, 1, 12, True),
    "zstd": _Algorithm(_zstd, 3, 1, 22, True),
    "deflate": _Algorithm(_deflate, 6, 0, 9, False),
}

CODECS = tuple(_ALGORITHMS)

#: Kernel algorithm names this build cannot offer, and why, naming the
#: closest codec it has.  Refused (UnknownAlgorithmError: EINVAL at the
#: comp_algorithm file, exit 2 in the CLI), never replaced silently: a config
#: written for the kernel should say what it gets.
NOT_IN_THIS_BUILD = {
    "lzo-rle": "zram's default has no Python implementation (LZO1X with run-length coded zeros, its own "
    "stream format); the closest here is " + ("lzo" if _HAVE_LZO else "lz4"),
    "842": "842 has no Python implementation (IBM's algorithm for POWER's compression unit); "
    "the closest here is lz4",
}
if not _HAVE_LZO:
    NOT_IN_THIS_BUILD["lzo"] = (
        "lzo needs python-lzo, which is not installed (pip install 'zramfs[lzo]'); the closest here is lz4"
    )


def _algorithm(name):
    try:
        return _ALGORITHMS[name]
    except (KeyError, TypeError):
        why = NOT_IN_THIS_BUILD.get(name) if isinstance(name, str) else None
        if why is not None:
            raise UnknownAlgorithmError(
                f"compression algorithm {name!r} is not in this build: {why}"
            ) from None
        raise UnknownAlgorithmError(
            f"unknown compression algorithm {name!r}; known: {' '.join(CODECS)}"
        ) from None


def get_codec(name, *, level=None, dictionary=None):
    """Return a ``Codec`` for the kernel algorithm ``name``.

    ``level`` (optional) is zram's ``algorithm_params level=``; ``None`` means
    the algorithm's default.  ``dictionary`` (bytes, optional) is the content
    of ``algorithm_params dict=``.
    """
    algorithm = _algorithm(name)
    if dictionary is not None:
        if not algorithm.takes_dict:
            raise InvalidCodecParamsError(f"{name} takes no dictionary (zstd, lz4 and lz4hc do)")
        dictionary = bytes(dictionary)
        if not dictionary:
            raise InvalidCodecParamsError("the dictionary is empty")
    if level is not None:
        if isinstance(level, bool) or not isinstance(level, int):
            raise InvalidCodecParamsError(f"{name} level must be an int, not {level!r}")
        if not algorithm.min_level <= level <= algorithm.max_level:
            raise InvalidCodecParamsError(
                f"{name} level must be between {algorithm.min_level} and "
                f"{algorithm.max_level}, not {level}"
            )
    else:
        level = algorithm.default_level
    compress, decompress = algorithm.builder(level, dictionary)
    return Codec(name, level, compress, decompress, dictionary)


# --- algorithm_params ---------------------------------------------------------


class AlgorithmParams(NamedTuple):
    """What ``algorithm_params`` set for the primary algorithm: ``level``
    (None: the algorithm's default) and the dictionary's bytes (or None)."""

    level: int | None = None
    dictionary: bytes | None = None


class AlgorithmParamsRequest(NamedTuple):
    """One ``algorithm_params`` write, parsed: which algorithm it names
    (``algo=``, or None), ``priority``, ``level`` and ``dict`` (a path)."""

    algo: str | None
    priority: int
    level: int | None
    dict_path: str | None

    def resolve(self, selected):
        """The AlgorithmParams this request sets on a device whose algorithm
        is ``selected``: checks algo and priority against it (zram looks
        ``algo`` up among the device's algorithms, and zramfs has only the
        primary, priority 0), the level against the algorithm's range, and
        reads the dictionary file."""
        if self.algo is not None and self.algo != selected:
            raise InvalidCodecParamsError(
                f"algo={self.algo} is not this device's algorithm ({selected})"
            )
        if self.priority != 0:
            raise InvalidCodecParamsError(
                f"priority={self.priority}: zramfs has only the primary algorithm (priority 0), "
                "no recompression algorithms"
            )
        dictionary = None
        if self.dict_path is not None:
            try:
                with open(self.dict_path, "rb") as f:
                    dictionary = f.read()
            except OSError as exc:
                raise InvalidCodecParamsError(f"dict={self.dict_path}: {exc.strerror}") from None
        # Checked now, so the write fails rather than the later disksize.
        get_codec(selected, level=self.level, dictionary=dictionary)
        return AlgorithmParams(self.level, dictionary)


def _kstrtoint(key, value):
    # kstrtoint(val, 10): an optional sign, decimal digits; a 32-bit int.
    body = value[1:] if value[:1] in "+-" else value
    if not body.isascii() or not body.isdigit():
        raise InvalidCodecParamsError(f"{key}={value}: not a decimal number")
    number = int(value, 10)
    if not -(1 << 31) <= number < 1 << 31:
        raise InvalidCodecParamsError(f"{key}={value}: out of range")
    return number


def parse_algorithm_params(text):
    """Parse zram's ``algorithm_params`` syntax into an AlgorithmParamsRequest.

    Whitespace-separated ``key=value`` pairs (a value may be in double
    quotes, as the kernel's next_arg() allows): ``algo=NAME`` or
    ``priority=N`` says which algorithm, then ``level=N`` and
    ``dict=PATH``.  As zram, a pair without a value is refused; unlike zram,
    which skips keys it does not know, an unknown key is refused too, so a
    typo cannot pass silently.  zram-generator's ``zstd(level=3)`` is
    ``algo=zstd level=3`` here.
    """
    fields = {"algo": None, "priority": 0, "level": None, "dict": None}
    for token in _split_args(text):
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise InvalidCodecParamsError(
                f"{token!r} has no value (algorithm_params takes key=value)"
            )
        if key in ("priority", "level"):
            fields[key] = _kstrtoint(key, value)
        elif key in ("algo", "dict"):
            fields[key] = value
        else:
            raise InvalidCodecParamsError(
                f"unknown algorithm parameter {key!r} (known: algo, priority, level, dict)"
            )
    return AlgorithmParamsRequest(
        fields["algo"], fields["priority"], fields["level"], fields["dict"]
    )


def _split_args(text):
    """The kernel's next_arg(): split at whitespace outside double quotes,
    dropping the quotes."""
    tokens = []
    current = []
    quoted = False
    started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                tokens.append("".join(current))
                current = []
                started = False
        else:
            current.append(ch)
            started = True
    if quoted:
        raise InvalidCodecParamsError("algorithm_params has an unclosed double quote")
    if started:
        tokens.append("".join(current))
    return tokens
