#!/usr/bin/env python3
"""Microbenchmark: writeback to a backing file and reads back, no FUSE (not a test).

    .venv/bin/python scripts/bench_writeback.py [--mib 64] [--dir /var/tmp]

Stores --mib of half-compressible pages in a BlockDevice with a backing
file in --dir, writes every page back (``writeback page_indexes=...``),
reads them all back (checked), and times lz4's decode of the same pages on
its own: whether writing objects compressed (zram's writeback_compressed)
would pay.  Prints microseconds per page, wall time.
"""

import argparse
import os
import random
import sys
import time

import lz4.block

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramfs.device import PAGE_SIZE, BlockDevice  # noqa: E402


def pages(count, seed=1):
    """Half random bytes, half zeros, and an index: lz4 objects of ~2 KiB."""
    rnd = random.Random(seed)
    half = PAGE_SIZE // 2
    return [rnd.randbytes(half) + bytes(half - 16) + i.to_bytes(16, "little") for i in range(count)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=64)
    p.add_argument(
        "--dir", default="/var/tmp", help="where the backing file goes (not tmpfs: O_DIRECT)"
    )
    args = p.parse_args()
    nr = args.mib * (1 << 20) // PAGE_SIZE
    data = pages(nr)
    path = os.path.join(args.dir, f"bench-writeback-{os.getpid()}.backing")
    try:
        with BlockDevice(nr * PAGE_SIZE, backing_dev=path) as dev:
            dev.write(0, b"".join(data))
            dev.writeback_batch_size = 256
            t = time.perf_counter()
            written = dev.writeback(f"page_indexes=0-{nr - 1}")
            wb = time.perf_counter() - t
            t = time.perf_counter()
            back = dev.read(0, nr * PAGE_SIZE)
            rd = time.perf_counter() - t
            if back != b"".join(data):
                sys.exit("bench_writeback: a page read back differs")
    finally:
        if os.path.exists(path):
            os.unlink(path)
    objs = [lz4.block.compress(page, store_size=False) for page in data]
    t = time.perf_counter()
    for obj in objs:
        lz4.block.decompress(obj, uncompressed_size=PAGE_SIZE)
    dec = time.perf_counter() - t
    mean = sum(map(len, objs)) / nr
    print(
        f"{written} pages: writeback {wb / written * 1e6:.1f} us/page, "
        f"read back {rd / nr * 1e6:.1f} us/page, lz4 decode {dec / nr * 1e6:.2f} us/page, "
        f"mean lz4 object {mean:.0f} B"
    )


if __name__ == "__main__":
    main()
