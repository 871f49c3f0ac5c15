"""Frozen snapshots of a pool's counters, returned by ``Pool.stats()``.

Data flow: the device reads them for ``mm_stat`` (mem_used_total is
``pages_used * 4096``, pages_compacted, huge_pages); tests and the benchmark
read the per-class rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClassStats:
    """One size class, as zsmalloc's ``/sys/kernel/debug/zsmalloc/*/classes``."""

    #: Slot size in bytes (object plus its 4-byte header; 4096 for huge).
    size: int
    pages_per_zspage: int
    objs_per_zspage: int
    #: zspages the class holds now.
    zspages: int
    #: Slots in those zspages: ``zspages * objs_per_zspage``.
    objs_allocated: int
    #: Slots holding a live object.
    objs_used: int
    #: ``zspages * pages_per_zspage``.
    pages_used: int
    #: zspages per fullness group, zsmalloc's ZS_INUSE_RATIO_10 .. _99 and
    #: _100 (the ``classes`` columns 10% .. 99%, 100%): eleven counts, the
    #: first of zspages less than 10 % used, the last of full ones.
    fullness: tuple[int, ...] = (0,) * 11


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A pool's counters at one moment."""

    #: Pages the pool holds (memory really in use: ``pages_used * 4096``).
    pages_used: int
    #: Pages of ready zspages (``Pool.populate_ahead``): in memory (or
    #: being faulted in by io_uring's workers), holding no object yet, not
    #: in pages_used.
    pages_ready: int
    #: Pages freed by ``compact()`` since the pool was created.
    pages_compacted: int
    #: Live objects.
    objs_used: int
    #: Sum of the malloc'd sizes of live objects.
    bytes_used: int
    #: Objects of this size or more are stored one per page.
    huge_class_size: int
    #: The cap given to the constructor, or None.
    max_pages: int | None
    #: One row per (merged) size class, smallest first; the last is huge.
    classes: tuple[ClassStats, ...]
