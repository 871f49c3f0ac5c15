#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""A swap workload that checks every page it wrote.

This is the load the system tests and the benchmark put on swap: run it in a
memory cgroup whose limit is well under ``--mib`` and its pages go out to swap
and come back.  It never needs zramfs itself; it only makes memory traffic
that a swap device has to get right.

1. Map ``--mib`` MiB of private anonymous memory (real anonymous pages, not
   shmem) and fill every 4 KiB page.
2. Make ``--touches`` random page touches: each reads the page and checks it;
   a share of them (``--rewrite``) then writes the page anew with the next
   generation, so swapped-out copies go stale and must be replaced.
3. Check every page once more.

A page's content is derived from (page index, generation), so it can be
checked without keeping a copy: 2 KiB taken from a pool of random bytes at an
offset hashed from (index, generation) -- incompressible -- followed by the
16-byte stamp (index, generation) repeated over 2 KiB, which compresses to
almost nothing.  So a page compresses about 2:1, like the swap data of the
measurements in docs/architecture.md, and a page that came back from the
wrong slot or is stale never matches.

Prints one JSON object: wall_s, fill_s, touch_s, check_s, pages, touches,
rewrites, bad_pages.  Exits 1 if any page was wrong, else 0.
"""

import argparse
import json
import mmap
import random
import struct
import sys
import time
from array import array

PAGE_SIZE = mmap.PAGESIZE  # the workload touches the machine's pages
HALF = PAGE_SIZE // 2

# The random half of every page comes from this pool.  1 MiB gives a quarter
# million distinct offsets, far more than the pages of any run, while staying
# small enough to build instantly; lz4 never sees two pages' random halves in
# one block, so the pool's size does not change the ratio.
POOL_SIZE = 1 << 20

_STAMP = struct.Struct("<QQ")
_MASK64 = (1 << 64) - 1


class Pages:
    """The expected content of each (page index, generation)."""

    def __init__(self, seed):
        self.pool = random.Random(seed).randbytes(POOL_SIZE + HALF)

    def content(self, index, generation):
        # Two odd 64-bit constants (golden ratio, xxhash's PRIME64_2) spread
        # neighbouring indexes and generations over the whole pool.
        h = ((index + 1) * 0x9E3779B97F4A7C15 ^ (generation + 1) * 0xC2B2AE3D27D4EB4F) & _MASK64
        offset = (h >> 17) % POOL_SIZE
        return self.pool[offset : offset + HALF] + _STAMP.pack(index, generation) * (
            HALF // _STAMP.size
        )


def run(mib, touches, rewrite, seed):
    pages = mib * 256
    expected = Pages(seed)
    rng = random.Random(seed + 1)
    generations = array("I", bytes(4 * pages))
    bad = set()

    start = time.monotonic()
    # MAP_PRIVATE: anonymous private pages are what swap is for; the default
    # MAP_SHARED would make shmem, which the kernel accounts differently.
    mm = mmap.mmap(-1, pages * PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(mm)
    try:
        for index in range(pages):
            offset = index * PAGE_SIZE
            view[offset : offset + PAGE_SIZE] = expected.content(index, 0)
        filled = time.monotonic()

        rewrites = 0
        for _ in range(touches):
            index = rng.randrange(pages)
            offset = index * PAGE_SIZE
            generation = generations[index]
            if view[offset : offset + PAGE_SIZE] != expected.content(index, generation):
                bad.add(index)
            if rng.random() < rewrite:
                generation += 1
                generations[index] = generation
                view[offset : offset + PAGE_SIZE] = expected.content(index, generation)
                rewrites += 1
        touched = time.monotonic()

        for index in range(pages):
            offset = index * PAGE_SIZE
            if view[offset : offset + PAGE_SIZE] != expected.content(index, generations[index]):
                bad.add(index)
        checked = time.monotonic()
    finally:
        view.release()
        mm.close()

    return {
        "wall_s": round(checked - start, 3),
        "fill_s": round(filled - start, 3),
        "touch_s": round(touched - filled, 3),
        "check_s": round(checked - touched, 3),
        "mib": mib,
        "pages": pages,
        "touches": touches,
        "rewrites": rewrites,
        "bad_pages": len(bad),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="swap_workload.py",
        description="Fill a working set with checkable, ~2:1 compressible pages, "
        "touch pages at random, check them all; print JSON.",
    )
    parser.add_argument("--mib", type=int, default=256, help="working set in MiB (default 256)")
    parser.add_argument(
        "--touches", type=int, default=300_000, help="random page touches (default 300000)"
    )
    parser.add_argument(
        "--rewrite",
        type=float,
        default=0.25,
        help="share of touches that also rewrite the page (default 0.25)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.mib < 1:
        parser.error("--mib must be at least 1")
    if args.touches < 0:
        parser.error("--touches must not be negative")
    if not 0.0 <= args.rewrite <= 1.0:
        parser.error("--rewrite must be between 0 and 1")

    result = run(args.mib, args.touches, args.rewrite, args.seed)
    print(json.dumps(result), flush=True)
    return 1 if result["bad_pages"] else 0


if __name__ == "__main__":
    sys.exit(main())
