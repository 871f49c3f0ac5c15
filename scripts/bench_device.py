#!/usr/bin/env python3
"""Microbenchmark: BlockDevice writes and reads, no FUSE (not a test).

    .venv/bin/python scripts/bench_device.py [--algorithm lz4] [--mib 256]

Data is fio-like: every 4 KiB page is 40 % random bytes then 60 % zeros, as
fio's buffer_compress_percentage=60 with buffer_compress_chunk=4096 and
refill_buffers makes it (lz4 ratio ~0.41).  Prints
microseconds per 4 KiB page for 4 KiB calls (random order) and 1 MiB calls
(sequential), both directions, as this thread's CPU time (time.thread_time:
other processes on a busy machine inflate it less) and as wall time; the
best of --repeat rounds.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramfs.device import PAGE_SIZE, BlockDevice


def fio_like(npages):
    random_part = PAGE_SIZE * 40 // 100
    zeros = bytes(PAGE_SIZE - random_part)
    return b"".join(os.urandom(random_part) + zeros for _ in range(npages))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--algorithm", default="lz4")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):
        dev, result = run(args)
        for name, (cpu, wall) in result.items():
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], cpu), min(old[1], wall))
    s = dev.stats()
    print(
        f"{args.algorithm}, {args.mib} MiB fio-like 60 % compressible data, best of {args.repeat}"
    )
    print("us per 4 KiB page          thread CPU    wall")
    for name, (cpu, wall) in best.items():
        print(f"{name:26s} {cpu:8.2f} {wall:8.2f}")
    print(
        f"compr/orig {s.compr_data_size / s.orig_data_size:.3f}  "
        f"mem_used_total/compr {s.mem_used_total / s.compr_data_size:.4f}"
    )
    print("mm_stat", dev.mm_stat(), end="")


def run(args):
    npages = args.mib * 256
    data = memoryview(fio_like(npages))
    order = list(range(npages))
    random.Random(1).shuffle(order)
    dev = BlockDevice(npages * PAGE_SIZE, algorithm=args.algorithm)
    step = 1 << 20
    result = {}

    def timed(name, fn):
        cpu, wall = time.thread_time(), time.perf_counter()
        fn()
        result[name] = (
            (time.thread_time() - cpu) / npages * 1e6,
            (time.perf_counter() - wall) / npages * 1e6,
        )

    def write_4k():
        for i in order:
            off = i * PAGE_SIZE
            dev.write(off, data[off : off + PAGE_SIZE])

    def read_4k():
        for i in order:
            dev.read(i * PAGE_SIZE, PAGE_SIZE)

    def write_1m():
        for off in range(0, npages * PAGE_SIZE, step):
            dev.write(off, data[off : off + step])

    def read_1m():
        for off in range(0, npages * PAGE_SIZE, step):
            dev.read(off, step)

    timed("4 KiB write, empty slots", write_4k)
    timed("4 KiB write, overwrite", write_4k)
    timed("4 KiB read (random)", read_4k)
    timed("1 MiB write, overwrite", write_1m)
    dev.discard(0, npages * PAGE_SIZE)
    timed("1 MiB write, empty device", write_1m)
    timed("1 MiB read", read_1m)
    return dev, result


if __name__ == "__main__":
    main()
