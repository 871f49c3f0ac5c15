#!/usr/bin/env python3
"""Microbenchmark: 1 MiB writes into a BlockDevice with populating ahead between them, no FUSE (not a test).

    .venv/bin/python scripts/bench_populate.py [--mib 256] [--reps 3]
    ZRAMFS_NO_URING=1 .venv/bin/python scripts/bench_populate.py    # plain madvise

Writes --mib of fio-like pages (60 % compressible in 4 KiB chunks) as
512 KiB halves, the requests the FUSE session gets, and after each does
what the session does when no request waits (``populate_ahead`` until it
has nothing to start).  Prints, per MiB: the writes' wall and thread CPU
time, and the thread CPU populating took: where the page faults are paid,
on this thread (madvise) or on io_uring's kernel workers.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zramfs.device import PAGE_SIZE, BlockDevice  # noqa: E402

MIB = 1 << 20
HALF = MIB // 2


def chunk():
    """One MiB: each 4 KiB page 40 % random bytes, 60 % zeros."""
    rnd = int(PAGE_SIZE * 0.4)
    return b"".join(os.urandom(rnd) + bytes(PAGE_SIZE - rnd) for _ in range(MIB // PAGE_SIZE))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    data = [memoryview(chunk()) for _ in range(16)]
    for _ in range(args.reps):
        dev = BlockDevice(args.mib * MIB)
        wall = cpu = populate = 0.0
        for i in range(args.mib):
            for half in (0, HALF):
                t0, c0 = time.perf_counter(), time.thread_time()
                dev.write(i * MIB + half, data[i % 16][half : half + HALF])
                wall += time.perf_counter() - t0
                c1 = time.thread_time()
                cpu += c1 - c0
                while dev.populate_wanted and dev.populate_ahead():
                    pass
                populate += time.thread_time() - c1
            time.sleep(0.0002)  # the time fio and loop take to send the next
        dev.close()
        per = 1e6 / args.mib
        print(
            f"write wall {wall * per:.0f} us/MiB, write CPU {cpu * per:.0f} us/MiB, "
            f"populate CPU {populate * per:.0f} us/MiB"
        )


if __name__ == "__main__":
    main()
