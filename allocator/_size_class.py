"""Size classes: which object sizes share a zspage layout.

Data flow: ``Pool.malloc(size)`` turns a request size into a size class here,
once, through a flat lookup list; everything below (zspages, fullness groups,
compaction) works per class.  This module only does arithmetic at pool
creation -- nothing here runs on the hot path.
"""

from __future__ import annotations

from ._layout import (
    DEFAULT_MAX_PAGES_PER_ZSPAGE,
    MAX_CHAIN,
    MIN_CHAIN,
    OBJ_HEADER_SIZE,
    PAGE_SIZE,
    ZS_MAX_ALLOC_SIZE,
    ZS_MIN_ALLOC_SIZE,
    ZS_SIZE_CLASS_DELTA,
    ZS_SIZE_CLASSES,
)


def pages_per_zspage_for(class_size: int, max_pages_per_zspage: int) -> int:
    """The chain length (1..max) that wastes the smallest fraction of its pages.

    The kernel compares absolute waste; we compare the wasted *fraction*
    (``waste / (pages * PAGE_SIZE)``), which is what memory use depends on.
    Ties go to the shorter chain: fewer pages held by a partly used zspage.
    """
    best_pages, best_waste = 1, (PAGE_SIZE % class_size)
    for pages in range(2, max_pages_per_zspage + 1):
        waste = (pages * PAGE_SIZE) % class_size
        # waste/pages < best_waste/best_pages, without floats.
        if waste * best_pages < best_waste * pages:
            best_pages, best_waste = pages, waste
    return best_pages


class SizeClassTable:
    """The pool's classes, as flat lists indexed by class id.

    ``class_of[(size + 15) >> 4]`` maps a slot size (object plus header) to a
    class id.  Neighbouring classes with the same (pages_per_zspage,
    objs_per_zspage) are merged into the largest of them, as zsmalloc's
    ``can_merge`` does: they would lay out identical zspages, so keeping them
    apart would only multiply half-empty zspages.
    """

    __slots__ = (
        "size",
        "pages_per_zspage",
        "objs_per_zspage",
        "class_of",
        "huge_class_size",
        "max_pages_per_zspage",
    )

    def __init__(self, max_pages_per_zspage: object = DEFAULT_MAX_PAGES_PER_ZSPAGE):
        if (
            type(max_pages_per_zspage) is not int
            or not MIN_CHAIN <= max_pages_per_zspage <= MAX_CHAIN
        ):
            raise ValueError(
                f"max_pages_per_zspage must be an int in {MIN_CHAIN}..{MAX_CHAIN}, "
                f"got {max_pages_per_zspage!r}"
            )
        self.max_pages_per_zspage = max_pages_per_zspage
        size: list[int] = []
        ppz: list[int] = []
        opz: list[int] = []
        # class_of is indexed by slot size in 16-byte units (0..256).
        class_of = [0] * (ZS_MAX_ALLOC_SIZE // ZS_SIZE_CLASS_DELTA + 1)
        # Walk from the largest class down, as zsmalloc's pool creation does,
        # so a run of mergeable classes collapses into its largest member.
        prev = None
        for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
            s = ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA
            p = pages_per_zspage_for(s, max_pages_per_zspage)
            o = p * PAGE_SIZE // s
            if prev is not None and ppz[prev] == p and opz[prev] == o:
                cid = prev
            else:
                cid = len(size)
                size.append(s)
                ppz.append(p)
                opz.append(o)
                prev = cid
            class_of[s // ZS_SIZE_CLASS_DELTA] = cid
        # Slot sizes below the smallest class use the smallest class.
        for units in range(ZS_MIN_ALLOC_SIZE // ZS_SIZE_CLASS_DELTA):
            class_of[units] = class_of[ZS_MIN_ALLOC_SIZE // ZS_SIZE_CLASS_DELTA]
        # Ids were handed out largest first; renumber smallest first so that
        # stats list classes in the kernel's order.
        n = len(size)
        self.size = size[::-1]
        self.pages_per_zspage = ppz[::-1]
        self.objs_per_zspage = opz[::-1]
        self.class_of = [n - 1 - c for c in class_of]
        # The top class (4096) always has one object per one page: the huge
        # class.  Every class merged into it is huge too.  An object is huge
        # when its slot (size + header) would land there.
        huge = self.class_of[ZS_MAX_ALLOC_SIZE // ZS_SIZE_CLASS_DELTA]
        largest_normal = max((s for c, s in enumerate(self.size) if c != huge), default=0)
        # size + OBJ_HEADER_SIZE <= largest_normal fits a normal class.
        self.huge_class_size = largest_normal - OBJ_HEADER_SIZE + 1

    def __len__(self) -> int:
        return len(self.size)
