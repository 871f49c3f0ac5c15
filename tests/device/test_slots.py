"""The slot table costs memory only where the device was written, and a
size whose table cannot be reserved is refused with a typed error.

RSS cases run in a fresh interpreter, so nothing else in the test process
moves its RSS; as root they lock memory the way the daemon does
(mlockall MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT).
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

from zramfs._slots import SLOT_BYTES, SlotTableTooLargeError, check_reservable, table_bytes
from zramfs.config import SizeError, check_disksize
from zramfs.device import PAGE_SIZE, BlockDevice, InvalidDiskSizeError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20
TiB = 1 << 40
# Far more address space than x86-64 (128 TiB) or arm64 (256 TiB) gives a
# process: its table alone would need 390 TiB.
IMPOSSIBLE = 99999 * TiB

SCRIPT = textwrap.dedent("""
    import ctypes, os, sys

    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(1 | 2 | 4) != 0:  # MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT
            sys.exit(f"mlockall: {os.strerror(ctypes.get_errno())}")

    from zramfs.device import BlockDevice

    def rss():
        # smaps_rollup is exact; status's VmRSS lags by per-CPU batches.
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1]) * 1024

    MiB = 1 << 20
    start = rss()
    dev = BlockDevice(1 << 40)
    empty = rss()
    # Reads of never-written slots map the zero page: no memory either.
    for offset in range(0, 1 << 40, 1 << 30):
        dev.read_parts(offset, MiB)  # read() would join into a 1 MiB buffer that malloc keeps
    read = rss()
    # 1 GiB of zeros: 262144 same-filled slots, 3 MiB of table, no pool memory.
    zeros = bytes(MiB)
    for offset in range(0, 1 << 30, MiB):
        dev.write(offset, zeros)
    written = rss()
    dev.discard(0, 1 << 30)
    discarded = rss()
    print(start, empty, read, written, discarded, dev.stats().same_pages)
""")


def test_an_empty_1_tib_device_costs_a_few_pages_of_table():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr
    start, empty, read, written, discarded, same = map(int, out.stdout.split())
    # The whole table would be 268 million slots * 12 bytes = 3 GiB.
    assert empty - start < 4 * MiB, (start, empty)
    # Reads cost no table; the 1 MiB each returns may stay in malloc's heap
    # (glibc raises its mmap threshold after the first free of one).
    assert read - empty < 2 * MiB, (empty, read)
    assert same == 0
    # 12 bytes per written slot (handle and info), 3 MiB here ...
    assert written - read > 2.5 * MiB, (read, written)
    # ... given back when the discard empties them again.
    assert written - discarded > 2.5 * MiB, (written, discarded)


def test_a_table_that_cannot_be_reserved_is_a_typed_error():
    slots = IMPOSSIBLE // PAGE_SIZE
    message = (
        r"^size 99999T is more than this machine can serve: its slot table needs 390T of "
        r"address space \(16 bytes per 4 KiB page\) and the kernel refused it \(.+\); "
        r"the largest size that fits now is (\d+)T$"
    )
    with pytest.raises(SlotTableTooLargeError, match=message) as info:
        check_reservable(slots)
    # The largest size it names does fit.
    largest = int(re.match(message, str(info.value))[1]) * TiB
    check_reservable(largest // PAGE_SIZE)
    assert table_bytes(slots) >= slots * SLOT_BYTES
    with pytest.raises(InvalidDiskSizeError, match=message):
        BlockDevice(IMPOSSIBLE)
    with pytest.raises(SizeError, match=message):
        check_disksize(IMPOSSIBLE)


def test_sizes_that_fit_pass_the_check():
    # kernel zram would allocate 16 TiB's table (64 GiB) up front; this one is reserved.
    assert check_disksize(16 * TiB) == 16 * TiB
    with BlockDevice(16 * TiB) as dev:
        last = dev.disksize - PAGE_SIZE
        dev.write(last, b"z" * PAGE_SIZE)
        assert dev.read(last, PAGE_SIZE) == b"z" * PAGE_SIZE
        assert dev.read(0, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_discard_keeps_what_it_does_not_cover_whole():
    # release() gives back only table pages that hold nothing but discarded
    # slots: the slots beside them keep their data.
    with BlockDevice(64 * MiB) as dev:
        data = os.urandom(1638) + bytes(PAGE_SIZE - 1638)
        for index in range(0, 16384, 7):
            dev.write(index * PAGE_SIZE, data)
        dev.discard(100 * PAGE_SIZE, 9000 * PAGE_SIZE)
        for index in range(0, 16384, 7):
            want = bytes(PAGE_SIZE) if 100 <= index < 9100 else data
            assert dev.read(index * PAGE_SIZE, PAGE_SIZE) == want
        assert (
            dev.stats().orig_data_size
            == sum(1 for index in range(0, 16384, 7) if not 100 <= index < 9100) * PAGE_SIZE
        )
