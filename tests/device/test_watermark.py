"""The watermark (beyond zram): with a backing store and
``writeback_watermark`` set, a thread writes the coldest slots back when
the pool reaches the mark, until it is under the low mark; a write that
mem_limit refuses waits for it instead of failing; a full backing store
loses nothing; close stops the thread.

The waits below are for a background thread to finish (each with a
generous deadline), not timings."""

import random
import threading
import time

import pytest

from tests._support.pages import obj_page
from zramfs._backing import BackingStore
from zramfs._slots import WB
from zramfs._watermark import CHUNK_MIN
from zramfs.device import (
    PAGE_SIZE,
    BlockDevice,
    InvalidWatermarkError,
    MemLimitError,
    WatermarkStats,
)

MiB = 1 << 20
NR = 4096  # 16 MiB device


@pytest.fixture
def dev(tmp_path):
    with BlockDevice(NR * PAGE_SIZE, backing_dev=tmp_path / "backing") as dev:
        yield dev


def fill(dev, count, first=0):
    model = {}
    for i in range(first, first + count):
        model[i] = obj_page(i)
        dev.write(i * PAGE_SIZE, model[i])
    return model


def check(dev, model):
    for i, page in model.items():
        assert dev.read(i * PAGE_SIZE, PAGE_SIZE) == page, i


def wb_slots(dev):
    return [i for i, info in enumerate(dev._table.info) if info & WB]


def settle(dev, until, timeout=30):
    """Wait for the watermark thread until ``until()`` holds and it is idle."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, (dev.stats(), dev.watermark_stats())
        time.sleep(0.01)
    # Idle: no writer waiting, no kick pending, and the pool not moving.
    used = -1
    while used != dev.stats().mem_used_total:
        used = dev.stats().mem_used_total
        time.sleep(0.05)


def watermark_threads():
    return [t for t in threading.enumerate() if t.name == "zramfs-watermark"]


def test_marks_are_bytes_in_whole_pages_and_the_low_mark_defaults_to_seven_eighths(dev):
    assert (dev.writeback_watermark, dev.writeback_low_watermark) == (0, 0)
    dev.writeback_watermark = 8 * MiB + 1
    assert dev.writeback_watermark == 8 * MiB + PAGE_SIZE
    assert dev._wm_low_pages() == (8 * MiB + PAGE_SIZE) // PAGE_SIZE * 7 // 8
    dev.writeback_low_watermark = 4 * MiB
    assert dev._wm_low_pages() == 4 * MiB // PAGE_SIZE
    # 15/16 of a mem_limit below the watermark is the high mark, and the
    # low mark 7/8 of that.
    dev.mem_limit = 2 * MiB
    assert dev._wm_trigger_pages() == 2 * MiB // PAGE_SIZE * 15 // 16
    assert dev._wm_low_pages() == 2 * MiB // PAGE_SIZE * 15 // 16 * 7 // 8


def test_bad_marks_are_refused(dev):
    for bad in (-1, 1.5, "1M", True):
        with pytest.raises(InvalidWatermarkError, match="int >= 0"):
            dev.writeback_watermark = bad
        with pytest.raises(InvalidWatermarkError, match="int >= 0"):
            dev.writeback_low_watermark = bad
    dev.writeback_watermark = 4 * MiB
    with pytest.raises(InvalidWatermarkError, match="must be below writeback_watermark"):
        dev.writeback_low_watermark = 4 * MiB
    dev.writeback_low_watermark = 2 * MiB
    with pytest.raises(InvalidWatermarkError, match="must be above writeback_low_watermark"):
        dev.writeback_watermark = 2 * MiB
    assert (dev.writeback_watermark, dev.writeback_low_watermark) == (4 * MiB, 2 * MiB)
    dev.writeback_watermark = 0  # off is always allowed
    dev.writeback_low_watermark = 8 * MiB  # and then any low mark


def test_reaching_the_mark_writes_back_to_under_the_low_mark(dev):
    model = fill(dev, NR // 2)  # 8 MiB of pages, ~3.5 MiB of pool
    used = dev.stats().mem_used_total
    assert used > 2 * MiB
    dev.writeback_watermark = 2 * MiB
    low = 2 * MiB * 7 // 8
    settle(dev, lambda: dev.stats().mem_used_total <= low)
    s = dev.stats()
    w = dev.watermark_stats()
    assert s.mem_used_total <= low
    assert w.triggered == 1 and w.failed == 0 and w.waited == 0
    assert w.written == s.bd_count == len(wb_slots(dev)) > 0
    # It wrote back about what it had to, not everything.
    assert s.bd_count < NR // 2
    check(dev, model)

    # More writes take the pool to the mark again: a second round.
    model.update(fill(dev, NR // 4, first=NR // 2))
    settle(dev, lambda: dev.stats().mem_used_total <= 2 * MiB)
    assert dev.watermark_stats().triggered >= 2
    check(dev, model)


def test_the_coldest_slots_go_first(dev):
    model = {}
    order = list(range(0, NR, 7))[:400]
    random.Random(1).shuffle(order)
    for i in order:  # written in this order, a second apart
        model[i] = obj_page(i)
        dev.write(i * PAGE_SIZE, model[i])
        dev._epoch -= 1
    dev.writeback_watermark = dev.stats().mem_used_total // 2
    settle(dev, lambda: dev.watermark_stats().written)
    done = set(wb_slots(dev))
    assert CHUNK_MIN <= len(done) < len(order)
    # Exactly the oldest ones.
    assert done == set(order[: len(done)])
    check(dev, model)


def test_a_full_backing_store_loses_nothing_and_is_counted(dev, tmp_path):
    model = fill(dev, NR // 2)
    dev._backing.close()
    dev._backing = BackingStore(tmp_path / "small", 40 * PAGE_SIZE)
    dev.writeback_watermark = 1 * MiB
    settle(dev, lambda: dev.watermark_stats().failed)
    s = dev.stats()
    w = dev.watermark_stats()
    assert w.failed == 1 and w.triggered == 1
    assert s.bd_count == w.written == 40
    assert "full" in dev.watermark_error
    assert s.mem_used_total > 1 * MiB  # what did not fit stays in RAM
    check(dev, model)


def test_writes_at_mem_limit_wait_for_writeback_instead_of_failing(dev):
    dev.mem_limit = 1 * MiB
    dev.writeback_watermark = 4 * MiB  # mem_limit is the high mark then
    model = fill(dev, NR // 2)  # ~3.5 MiB of pool: three times the limit
    s = dev.stats()
    assert s.failed_writes == 0
    assert s.mem_used_max <= 1 * MiB
    assert s.bd_count > 0
    # 1 MiB writes too (the whole-block path), and unaligned ones (the edges').
    big = b"".join(obj_page(NR + i) for i in range(256))
    dev.write(NR // 2 * PAGE_SIZE, big)
    dev.write(NR // 2 * PAGE_SIZE + 256 * PAGE_SIZE + 100, big[:5000])
    assert dev.stats().failed_writes == 0
    check(dev, model)
    assert dev.read(NR // 2 * PAGE_SIZE, len(big)) == big
    assert dev.read(NR // 2 * PAGE_SIZE + 256 * PAGE_SIZE + 100, 5000) == big[:5000]


def test_writes_wait_at_an_eighth_above_the_watermark(dev):
    dev.writeback_watermark = 1 * MiB
    model = fill(dev, NR)  # ~7 MiB of pool without the watermark
    s = dev.stats()
    assert s.mem_used_max <= 1 * MiB + 1 * MiB // 8
    assert s.failed_writes == 0
    assert dev.watermark_stats().failed == 0
    check(dev, model)


def test_writes_go_past_the_cap_when_the_store_is_full(dev, tmp_path):
    dev._backing.close()
    dev._backing = BackingStore(tmp_path / "small", 8 * PAGE_SIZE)
    dev.writeback_watermark = 1 * MiB
    model = fill(dev, NR // 2)  # as zram would store them: no failure
    s = dev.stats()
    assert s.failed_writes == 0
    assert s.mem_used_total > 2 * MiB
    assert s.bd_count == 8
    assert dev.watermark_stats().failed >= 1
    check(dev, model)


def test_writes_fail_at_mem_limit_when_the_store_is_full(dev, tmp_path):
    dev._backing.close()
    dev._backing = BackingStore(tmp_path / "small", 8 * PAGE_SIZE)
    dev.mem_limit = 1 * MiB
    dev.writeback_watermark = 1 * MiB
    model = {}
    with pytest.raises(MemLimitError):
        for i in range(NR):
            model[i] = obj_page(i)
            dev.write(i * PAGE_SIZE, model[i])
    del model[i]
    s = dev.stats()
    assert s.failed_writes == 1
    assert s.bd_count == 8
    assert dev.watermark_stats().failed >= 1
    check(dev, model)


def test_without_a_backing_store_the_watermark_is_inactive():
    with BlockDevice(NR * PAGE_SIZE, mem_limit=1 * MiB) as dev:
        dev.writeback_watermark = 1 * MiB  # allowed: a store may be set later
        with pytest.raises(MemLimitError):
            fill(dev, NR)
        assert dev.stats().failed_writes == 1
        assert dev.watermark_stats() == WatermarkStats(0, 0, 0, 0, 0)
        assert dev.writeback_watermark_stat() == "%8d %8d %8d %8d %8d\n" % (0, 0, 0, 0, 0)


def test_close_stops_the_thread(tmp_path):
    before = len(watermark_threads())
    dev = BlockDevice(NR * PAGE_SIZE, backing_dev=tmp_path / "b")
    fill(dev, NR)
    dev.writeback_watermark = 1 * MiB
    assert len(watermark_threads()) == before + 1
    dev.close()  # in the middle of a round, most likely: it stops after a batch
    assert len(watermark_threads()) == before
