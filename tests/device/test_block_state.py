"""zram's debugfs ``block_state`` at the device tier: one line per slot that
holds data, with its last access in seconds since boot and zram's flags
(s w h i r n), each flag from the state the device is in."""

import os
import random
import re
import time

import pytest

from zramfs.device import PAGE_SIZE, BlockDevice

NR = 16
LINE = re.compile(r"( {0,11}\d+) ( {0,11}\d+)\.000000 ([s.][w.][h.][i.][r.][n.])\n")
B64 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


def lines(dev):
    """{slot: (access time, flags)}, every line checked against zram's format."""
    text = "".join(dev.block_state())
    out = {}
    for line in text.splitlines(keepends=True):
        m = LINE.fullmatch(line)
        assert m and len(line) == 40, line
        out[int(m[1])] = (int(m[2]), m[3])
    return out


def uptime():
    """Seconds since boot on the clock the stamps count (CLOCK_MONOTONIC)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def object_page(seed):
    return (b"block state %d " % seed) * 200 + bytes(
        PAGE_SIZE - 200 * len(b"block state %d " % seed)
    )


def test_access_times_are_seconds_since_boot_and_move_with_access(tmp_path):
    with BlockDevice(NR * PAGE_SIZE) as dev:
        before = int(uptime())
        dev.write(0, object_page(0))
        dev.write(PAGE_SIZE, object_page(1))
        after = uptime()
        state = lines(dev)
        assert sorted(state) == [0, 1]
        for when, flags in state.values():
            # A stamp may lag the clock by up to a second (zramfs.device._Seconds).
            assert before - 2 <= when <= after, (before, when, after)
            assert flags == "......"
        dev._epoch -= 100  # 100 s later, on the device's clock
        dev.read(PAGE_SIZE, PAGE_SIZE)  # a read is an access, as zram's
        state = lines(dev)
        assert state[1][0] - state[0][0] == 100


def test_flags_follow_the_slot_states(tmp_path):
    with BlockDevice(NR * PAGE_SIZE, backing_dev=tmp_path / "backing") as dev:
        dev.write(0, bytes(PAGE_SIZE))  # same-filled
        dev.write(PAGE_SIZE, os.urandom(PAGE_SIZE))  # huge
        dev.write(2 * PAGE_SIZE, object_page(2))  # an object
        rng = random.Random(3)  # lz4 leaves it huge, zstd shrinks it
        dev.write(3 * PAGE_SIZE, bytes(rng.choice(B64) for _ in range(PAGE_SIZE)))
        dev.write(4 * PAGE_SIZE, os.urandom(PAGE_SIZE))  # huge, then written back
        flags = {i: f for i, (_, f) in lines(dev).items()}
        assert flags == {0: "s.....", 1: "..h...", 2: "......", 3: "..h...", 4: "..h..."}
        dev.mark_idle()  # zram marks objects and huge pages, never same-filled ones
        flags = {i: f for i, (_, f) in lines(dev).items()}
        assert flags == {0: "s.....", 1: "..hi..", 2: "...i..", 3: "..hi..", 4: "..hi.."}
        dev.read(2 * PAGE_SIZE, PAGE_SIZE)  # an access clears the mark
        assert lines(dev)[2][1] == "......"
        assert dev.writeback("page_index=4") == 1
        assert lines(dev)[4][1] == ".w...."  # zram: a written-back slot is never idle
        dev.set_recomp_algorithm("zstd", priority=1)
        dev.recompress("type=huge")
        flags = {i: f for i, (_, f) in lines(dev).items()}
        assert flags[3] == "....r."  # recompressed (no longer huge nor idle)
        assert flags[1] == "..h..n"  # no algorithm could shrink it; touched, so not idle


@pytest.mark.parametrize("nr", [4095, 4096, 4097, 3 * 4096 + 5])
def test_every_stored_slot_has_one_line_across_batches(nr):
    with BlockDevice(nr * PAGE_SIZE) as dev:
        stored = sorted({0, nr - 1, nr // 2, min(4096, nr - 1)})
        for i in stored:
            dev.write(i * PAGE_SIZE, object_page(i))
        assert sorted(lines(dev)) == stored


def test_before_any_write_it_is_empty():
    with BlockDevice(NR * PAGE_SIZE) as dev:
        assert "".join(dev.block_state()) == ""
