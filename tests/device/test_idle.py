"""Idle tracking: ac_time stamps, mark_idle("all" and an age), and a read or
write clearing the mark, as zram's ``idle`` attribute and mark_slot_accessed
do.  Time is moved by shifting the device's epoch back (its clock is
seconds since the device was created)."""

import os

import pytest

from zramfs._slots import AC_IDLE, SLOT_BYTES
from zramfs.device import PAGE_SIZE, BlockDevice, InvalidIdleAgeError

NR = 16


def idle_slots(dev):
    return [i for i, stamp in enumerate(dev._table.ac_time) if stamp & AC_IDLE]


def page(kind, seed=0):
    if kind == "same":
        return bytes([seed]) * PAGE_SIZE
    if kind == "huge":
        return os.urandom(PAGE_SIZE)
    return (b"idle page %d " % seed) * 300 + bytes(PAGE_SIZE - 300 * len(b"idle page %d " % seed))


@pytest.fixture
def dev():
    with BlockDevice(NR * PAGE_SIZE) as dev:
        yield dev


def later(dev, seconds):
    dev._epoch -= seconds


def test_all_marks_objects_and_huge_pages_not_same_or_empty(dev):
    dev.write(0, page("object"))
    dev.write(PAGE_SIZE, page("huge"))
    dev.write(2 * PAGE_SIZE, page("same"))
    assert dev.mark_idle() == 2
    assert idle_slots(dev) == [0, 1]


def test_read_or_write_clears_the_mark(dev):
    for i in range(4):
        dev.write(i * PAGE_SIZE, page("object", i))
    dev.mark_idle()
    dev.read(0, PAGE_SIZE)  # one-page read
    dev.read(PAGE_SIZE + 10, 20)  # partial read of slot 1
    dev.write(2 * PAGE_SIZE, page("object", 9))
    assert idle_slots(dev) == [3]
    dev.mark_idle()
    dev.read(0, 4 * PAGE_SIZE)  # a run read clears all of them
    assert idle_slots(dev) == []


def test_age_marks_only_slots_untouched_that_long_and_unmarks_others(dev):
    dev.write(0, page("object", 1))
    later(dev, 100)
    dev.write(PAGE_SIZE, page("object", 2))
    later(dev, 20)
    assert dev.mark_idle(50) == 1
    assert idle_slots(dev) == [0]
    assert dev.mark_idle(200) == 0  # zram's mark_idle clears the younger ones
    assert idle_slots(dev) == []
    assert dev.mark_idle(0) == 2  # both were accessed before this second


def test_idle_keeps_object_slots_on_the_fast_paths(dev):
    dev.write(0, bytes(PAGE_SIZE // 2) + os.urandom(PAGE_SIZE // 2))
    info = dev._table.info[0]
    dev.mark_idle()
    assert dev._table.info[0] == info < PAGE_SIZE


def test_discard_zeroes_the_stamp_and_an_empty_read_stamps_nothing(dev):
    dev.write(0, page("object"))
    dev.mark_idle()
    dev.discard(0, PAGE_SIZE)
    dev.read(0, NR * PAGE_SIZE)
    assert list(dev._table.ac_time) == [0] * NR


def test_bad_age_is_refused():
    with BlockDevice(PAGE_SIZE) as dev:
        for age in (-1, 1.5, "10", True):
            with pytest.raises(InvalidIdleAgeError, match="idle age must be an int >= 0 seconds"):
                dev.mark_idle(age)


def test_the_stamp_fits_the_slot_budget():
    assert SLOT_BYTES == 16


def test_mark_idle_covers_every_batch_of_a_larger_device():
    with BlockDevice(10000 * PAGE_SIZE) as dev:
        for index in (0, 4095, 4096, 9999):
            dev.write(index * PAGE_SIZE, page("huge"))
        assert dev.mark_idle() == 4
        assert idle_slots(dev) == [0, 4095, 4096, 9999]
