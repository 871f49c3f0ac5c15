"""The watermark's attribute files (beyond zram) on a real mount:
writeback_watermark and writeback_low_watermark take memparse sizes at any
time, like mem_limit, and refuse bad ones with EINVAL; their settings
survive until init and go with reset; writeback_watermark_stat is
read-only; and with a backing file, writes past mem_limit wait for the
watermark's writeback instead of failing with ENOSPC."""

import errno
import os
import random

import pytest

MiB = 1 << 20
PAGE = 4096
ZEROS = "%8d %8d %8d %8d %8d\n" % (0, 0, 0, 0, 0)


def errno_of(call, *args):
    with pytest.raises(OSError) as e:
        call(*args)
    return e.value.errno


def stat_of(d):
    keys = "triggered written waited failed compacted".split()
    return dict(zip(keys, map(int, d.attr("writeback_watermark_stat").split()), strict=True))


@pytest.fixture
def uninitialised(start):
    return start(size=None)


@pytest.mark.parametrize(
    "written, value",
    [("64M", 64 * MiB), ("1", PAGE), ("0x1000", PAGE), ("4097", 2 * PAGE), ("0", 0)],
)
def test_marks_take_memparse_sizes_rounded_up_to_a_page(zram, written, value):
    for name in ("writeback_watermark", "writeback_low_watermark"):
        zram.store("writeback_watermark", "0")
        zram.store(name, written + "\n")
        assert zram.attr(name) == f"{value}\n"


@pytest.mark.parametrize("bad", ["abc", "-5", "", "1.5M", "16E", str(1 << 64)])
def test_bad_marks_are_einval(zram, bad):
    zram.store("writeback_watermark", "8M")
    for name in ("writeback_watermark", "writeback_low_watermark"):
        assert errno_of(zram.store, name, bad + "\n") == errno.EINVAL
    assert zram.attr("writeback_watermark") == f"{8 * MiB}\n"
    assert zram.attr("writeback_low_watermark") == "0\n"


def test_the_low_mark_must_stay_below_the_watermark(zram):
    zram.store("writeback_watermark", "8M")
    assert errno_of(zram.store, "writeback_low_watermark", "8M") == errno.EINVAL
    zram.store("writeback_low_watermark", "6M")
    assert errno_of(zram.store, "writeback_watermark", "6M") == errno.EINVAL
    zram.store("writeback_watermark", "0")  # off, whatever the low mark
    assert (zram.attr("writeback_watermark"), zram.attr("writeback_low_watermark")) == (
        "0\n",
        f"{6 * MiB}\n",
    )


def test_the_stat_is_read_only_and_zero_at_first(zram):
    assert zram.attr("writeback_watermark_stat") == ZEROS
    assert errno_of(zram.store, "writeback_watermark_stat", "1") == errno.EACCES


def test_settings_before_init_are_kept_and_reset_puts_them_back(uninitialised):
    d = uninitialised
    assert d.attr("writeback_watermark_stat") == ZEROS
    d.store("writeback_watermark", "32M")
    d.store("writeback_low_watermark", "16M")
    assert errno_of(d.store, "writeback_watermark", "16M") == errno.EINVAL
    d.store("disksize", "64M")
    assert d.attr("writeback_watermark") == f"{32 * MiB}\n"
    assert d.attr("writeback_low_watermark") == f"{16 * MiB}\n"
    d.store("reset", "1")
    assert d.attr("writeback_watermark") == "0\n"
    assert d.attr("writeback_low_watermark") == "0\n"


def test_writes_past_mem_limit_wait_for_writeback_instead_of_enospc(start, tmp_path):
    backing = tmp_path / "backing"
    d = start(backing_dev=str(backing), mem_limit=MiB, writeback_watermark=4 * MiB)
    assert d.attr("writeback_watermark") == f"{4 * MiB}\n"
    rnd = random.Random(5)
    # 16 MiB of pages that compress about 2:1: eight times mem_limit.
    data = b"".join(rnd.randbytes(PAGE // 2) + bytes(PAGE // 2) for _ in range(16 * MiB // PAGE))
    fd = os.open(d.disk, os.O_RDWR)
    try:
        for offset in range(0, len(data), MiB):
            assert os.pwrite(fd, data[offset : offset + MiB], offset) == MiB
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert d.io_stat()["failed_writes"] == 0
    assert d.mm_stat()["mem_used_max"] <= MiB
    s = stat_of(d)
    assert s["written"] > 0 and s["failed"] == 0 and s["triggered"] >= 1
    assert os.stat(backing).st_blocks > 0
    d.assert_alive()
