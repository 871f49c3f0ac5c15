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

The names are the kernel's (``comp_algorithm`` lists ``lz4 lz4hc zstd
deflate``), so a person who knows zram picks the same word here.

Every codec may be called from several threads at once (compression runs
outside the device lock).  lz4 and zlib are stateless calls that release the
GIL.  zstd keeps one compression context per thread, because a
``ZstdCompressor`` must not be shared between threads, and building a context
per page costs about three times the compression itself (measured: 12 us
against 4 us per 4 KiB page).

Parameters: each algorithm takes one optional ``level`` -- zram's
``algorithm_params level=N``.  What it means is the library's knob: lz4's
acceleration, lz4hc's and zstd's compression level, deflate's zlib level.
Further parameters (zstd dictionaries) would be new keyword arguments of
``get_codec``, carried on the ``Codec``.
"""

import threading
import zlib
from dataclasses import dataclass, field
from typing import Callable

import lz4.block
import zstandard

from allocator import PAGE_SIZE

__all__ = [
    "CODECS",
    "DEFAULT_ALGORITHM",
    "PAGE_SIZE",
    "Codec",
    "InvalidCodecParamsError",
    "UnknownAlgorithmError",
    "get_codec",
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
    """Raised when a codec parameter (such as ``level``) is out of its range."""


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


def _lz4(level):
    # level is lz4's acceleration: 1 is the default ratio, higher is faster
    # and compresses less (the kernel's lz4 backend reads its level the same way).
    if level is None or level == 1:
        return lz4_compress_page, lz4_decompress_page

    def compress(page, _c=lz4.block.compress, _a=level):
        return _c(page, mode="fast", acceleration=_a, store_size=False)

    return compress, lz4_decompress_page


def _lz4hc(level):
    def compress(page, _c=lz4.block.compress, _l=level):
        return _c(page, mode="high_compression", compression=_l, store_size=False)

    return compress, lz4_decompress_page


def _zstd(level):
    # One compression context per thread (see the module docstring).  The
    # frame keeps its content size, so decompress needs no size hint; the
    # checksum stays off because the page never leaves this process's memory.
    local = threading.local()

    def compress(page):
        try:
            cctx = local.cctx
        except AttributeError:
            cctx = local.cctx = zstandard.ZstdCompressor(level=level)
        return cctx.compress(page)

    def decompress(data):
        try:
            dctx = local.dctx
        except AttributeError:
            dctx = local.dctx = zstandard.ZstdDecompressor()
        return dctx.decompress(data, max_output_size=PAGE_SIZE)

    return compress, decompress


def _deflate(level):
    # Raw deflate (wbits=-15): no zlib header or adler32, as the kernel's
    # deflate backend stores it.
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


# In the order comp_algorithm lists them.  Level ranges are the libraries'.
_ALGORITHMS = {
    "lz4": _Algorithm(_lz4, None, 1, 65537),
    "lz4hc": _Algorithm(_lz4hc, 9, 1, 12),
    "zstd": _Algorithm(_zstd, 3, 1, 22),
    "deflate": _Algorithm(_deflate, 6, 0, 9),
}

CODECS = tuple(_ALGORITHMS)


def get_codec(name, *, level=None):
    """Return a ``Codec`` for the kernel algorithm ``name``.

    ``level`` (optional) is zram's ``algorithm_params level=``; ``None`` means
    the algorithm's default.
    """
    try:
        algorithm = _ALGORITHMS[name]
    except (KeyError, TypeError):
        raise UnknownAlgorithmError(
            f"unknown compression algorithm {name!r}; known: {' '.join(CODECS)}"
        ) from None
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
    compress, decompress = algorithm.builder(level)
    return Codec(name, level, compress, decompress)
