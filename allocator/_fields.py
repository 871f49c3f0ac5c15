"""The Pool's fields, declared once for the classes Pool is made of.

Where this sits: inside the allocator, beside the data path.  Pool
(allocator/_pool.py) is built from Compaction, ConsistencyCheck and Rebuild,
each in a module of its own; they use the pool's fields, which Pool.__init__
(or Pool.attach) sets and documents.  Declaring the fields here, in the one
base they share, lets mypy check every part without a copy of the list in
each.

Compiled with mypyc (see pyproject.toml), Pool is a native class, and a
native class has one base plus traits: so this class and the parts are
traits, and the methods the parts call on Pool are declared here too, once.
"""

from __future__ import annotations

import mmap
import threading
from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mypy_extensions import trait

if TYPE_CHECKING:
    from ._arena import Arena
    from ._uring import Populator


@trait
class PoolFields:
    """Pool's fields, for type checking; no behaviour, no storage (``__slots__ = ()``)."""

    __slots__ = ()

    _lock: threading.Lock
    _map: mmap.mmap
    _mv32: memoryview
    _zs_shift: int
    _handles: memoryview
    _meta: memoryview
    _class_size: list[int]
    _objs_per_zspage: list[int]
    _pages_per_zspage: list[int]
    _group_of: list[list[int]]
    _group_heads: list[int]
    _group_mask: list[int]
    _huge_class: int
    _zs_bump: memoryview
    _zs_freeobj: memoryview
    _zs_group: memoryview
    _zs_inuse: memoryview
    huge_class_size: int
    _class_of: list[int]
    _class_zspages: list[int]
    _free_handle: int
    _handles_end: int
    _zs_class: memoryview
    _zs_next: memoryview
    _zs_prev: memoryview
    _zs_freed: int
    _zs_end: int
    _zs_ready: list[array]
    _want: array | None
    _populator: Populator
    _huge_base: int
    _huge_free: array
    _huge_next: int
    _pages_used: int
    _ready_pages: int
    _bytes_used: int
    _arena: Arena
    _zs_mask: int
    _max_handle: int
    _max_zspages: int
    _huge_slots: int

    # Pool's methods that Compaction and Rebuild call; Pool defines them
    # (_pool.py), these bodies never run.
    def _partial(self, c: int) -> Iterator[int]:
        raise NotImplementedError

    def _unlink(self, c: int, g: int, z: int) -> None:
        raise NotImplementedError

    def _push(self, c: int, g: int, z: int) -> None:
        raise NotImplementedError

    def _take_slot(self, c: int, z: int) -> int:
        raise NotImplementedError

    def _free_zspage(self, z: int) -> int:
        raise NotImplementedError

    def _shrink_tables(self) -> None:
        raise NotImplementedError

    def _free_locked(self, handle: int) -> None:
        raise NotImplementedError
