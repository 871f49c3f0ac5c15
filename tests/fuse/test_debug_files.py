"""zram's and zsmalloc's debug files at the mount root: debug_stat,
block_state and classes, in the kernel's formats."""

import errno
import os
import re
import time

import pytest

PAGE = 4096


def fill(d, pages):
    fd = os.open(d.disk, os.O_WRONLY)
    try:
        for index, page in pages.items():
            os.pwrite(fd, page, index * PAGE)
    finally:
        os.close(fd)


def test_debug_stat(zram):
    # zram's debug_stat_show: "version: 1\n0 %8llu\n" (miss_free).
    assert zram.attr("debug_stat") == "version: 1\n0        0\n"


def test_block_state_lists_the_stored_slots_with_zram_flags(zram):
    pages = {
        0: bytes(PAGE),  # same-filled
        1: os.urandom(PAGE),  # huge: does not compress
        5: b"zramfs " * (PAGE // 7) + b"z" * (PAGE % 7),  # an ordinary object
        9: b"\xab" * PAGE,  # same-filled
    }
    fill(zram, pages)
    lines = zram.attr("block_state").splitlines(keepends=True)
    # "%12zd %12u.%06d %c%c%c%c%c%c\n": index, access time, s w h i r n.
    assert [line[:12] for line in lines] == [f"{i:12d}" for i in sorted(pages)]
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    for line in lines:
        assert re.fullmatch(r" {0,11}\d+ +\d+\.000000 [s.][w.][h.][i.][r.][n.]\n", line), line
        assert len(line) == 12 + 1 + 19 + 1 + 6 + 1
        # The last access, in whole seconds since boot, as zram's.
        assert now - 60 < int(line.split()[1].split(".")[0]) <= now
    flags = {int(line[:12]): line[-7:-1] for line in lines}
    assert flags == {0: "s.....", 1: "..h...", 5: "......", 9: "s....."}


def test_block_state_is_a_snapshot_taken_at_open(zram):
    fill(zram, {0: os.urandom(PAGE)})
    with open(zram.mountpoint / "block_state", "rb", buffering=0) as f:
        first = f.read(20)
        fill(zram, {3: os.urandom(PAGE)})
        rest = f.read()
    assert (first + rest).count(b"\n") == 1
    assert zram.attr("block_state").count("\n") == 2


def test_block_state_before_init_is_einval(uninitialised):
    with pytest.raises(OSError) as e:
        uninitialised.attr("block_state")
    assert e.value.errno == errno.EINVAL


def classes(d):
    """classes's rows and its Total line, checked against zsmalloc's layout."""
    head, *rows, blank, total = d.attr("classes").splitlines()
    assert head.split() == [
        "class",
        "size",
        "10%",
        "20%",
        "30%",
        "40%",
        "50%",
        "60%",
        "70%",
        "80%",
        "90%",
        "99%",
        "100%",
        "obj_allocated",
        "obj_used",
        "pages_used",
        "pages_per_zspage",
        "freeable",
    ]
    assert blank == ""
    assert total.split()[0] == "Total"
    rows = [[int(x) for x in r.split()] for r in rows]
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    for r in rows:
        # zspages per fullness group (10% .. 100%) add up to the class's
        # zspages: pages_used / pages_per_zspage.
        assert sum(r[2:13]) * r[16] == r[15]
    # The Total line sums every column but pages_per_zspage.
    sums = [sum(r[i] for r in rows) for i in (*range(2, 16), 17)]
    assert [int(x) for x in total.split()[1:]] == sums
    return sums[12], sums[13]  # obj_used, pages_used


def test_classes_in_zsmalloc_format(zram):
    fill(zram, {i: b"%04d zramfs " % i * 300 + bytes(PAGE - 3600) for i in range(64)})
    used, pages = classes(zram)
    assert used == 64
    assert pages * PAGE == zram.mm_stat()["mem_used_total"]


def test_classes_fullness_groups(zram):
    # 64 objects of one class, then every other page rewritten as zeros
    # (same-filled: its object is freed): the class's zspages move from
    # the 100% column to lower ones.
    fill(zram, {i: os.urandom(1400) + bytes(PAGE - 1400) for i in range(64)})

    def row():
        rows = [r.split() for r in zram.attr("classes").splitlines()[1:-2]]
        return next([int(x) for x in r] for r in rows if int(r[13]) > 0)

    before = row()
    assert before[14] == 64 and before[12] > 0
    fill(zram, {i: bytes(PAGE) for i in range(0, 64, 2)})
    after = row()
    assert after[1] == before[1] and after[14] == 32
    assert sum(after[2:13]) == sum(before[2:13])  # no zspage freed: each keeps half
    assert after[12] == 0  # none full any more


def test_classes_of_an_uninitialised_device(uninitialised):
    assert classes(uninitialised) == (0, 0)
