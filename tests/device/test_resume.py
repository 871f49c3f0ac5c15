"""A device taken over from its memfds after its daemon died at any step.

Each case builds a device with every kind of slot (objects, same-filled,
huge, empty, written back, recompressed), then runs one operation in a
forked child killed by SIGKILL at one step of its write path
(tests/_support/crash.py: every store, publish and free of the device, the
slot table and the pool).  The parent takes the memfds over with
``BlockDevice.resume``, as a restarted daemon does, and checks: every slot
reads back its old or its new page (never anything else), the state is
consistent and leaks nothing (``BlockDevice.check``: slot counters equal a
fresh count, every object named by one slot, the backing blocks in use the
written-back slots'), no counter went back, and the device works on.
"""

import itertools
import os
import random

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, given, settings

from tests._support.crash import DEVICE_STEPS, die_at, each_crash
from tests._support.pages import huge_page, obj_page
from zramfs._state import W_VERSION
from zramfs.device import PAGE_SIZE, BlockDevice, StateCorruptError, StateFormatError

NR = 256  # slots: a 1 MiB device, so one write can cover it whole
_paths = itertools.count()


def same_page(word):
    return word.to_bytes(8, "little") * (PAGE_SIZE // 8)


def kind_page(kind, seed):
    """A page of one kind: o(bject), z(ero), h(uge), s(ame-filled), e(mpty)."""
    return {
        "o": obj_page,
        "z": lambda s: bytes(PAGE_SIZE),
        "h": huge_page,
        "s": lambda s: same_page(0x0101010101010101 * (s % 200 + 1)),
        "e": lambda s: None,
    }[kind](seed)


class Case:
    """A device holding every kind of slot; ``old`` is what each slot reads."""

    def __init__(self, tmp_path, backing=False, recomp=False, holes=False):
        path = tmp_path / f"backing{next(_paths)}" if backing else None
        self.dev = BlockDevice(NR * PAGE_SIZE, backing_dev=path)
        if recomp:
            self.dev.set_recomp_algorithm("zstd")
        for i in range(NR):
            page = kind_page("ozhse"[i % 5], i)
            if page is not None:
                self.dev.write(i * PAGE_SIZE, page)
        if holes:  # room for compaction to move objects into
            for i in range(0, NR, 10):
                self.dev.discard(i * PAGE_SIZE, PAGE_SIZE)
        if backing:
            self.dev.writeback("page_indexes=100-150")
        self.old = [self.dev.read(i * PAGE_SIZE, PAGE_SIZE) for i in range(NR)]
        self.new = list(self.old)
        self.stats = self.dev.stats()

    def write(self, index, page):
        """The write an operation does, and what the slots then hold."""
        self.dev.write(index * PAGE_SIZE, page)

    def close(self):
        # Its state has been (or is being) taken over: keep the backing blocks.
        self.dev.close(handover=True)


def take_over(case):
    return BlockDevice.resume({name: os.dup(fd) for name, fd in case.dev.state_fds().items()})


# Operations: each sets case.new (in the parent, before the fork) and
# returns the function the child runs.


def op_rewrite_same_class(case):
    # Object over object of the same size class: Pool.replace.
    page = obj_page(1000)
    case.new[0] = page
    return lambda: case.write(0, page)


def op_rewrite_kinds(case):
    # Every change of kind, one 4 KiB write each.
    writes = [
        (5, bytes(PAGE_SIZE)),  # object -> same-filled (zero)
        (10, same_page(0xDEADBEEFCAFEF00D)),  # object -> same-filled, a 64-bit word
        (6, obj_page(2000)),  # same-filled -> object
        (7, obj_page(2001)),  # huge -> object
        (8, huge_page(2002)),  # same-filled -> huge
        (9, huge_page(2003)),  # empty -> huge
        (15, obj_page(2004)),  # object -> object (another class)
        (12, same_page(7)),  # huge -> same-filled
    ]
    return _writes(case, writes)


def _writes(case, writes):
    """Record `writes` ((index, page) pairs) as the new pages; the child's run writes them one by one."""
    for index, page in writes:
        case.new[index] = page

    def run():
        for index, page in writes:
            case.write(index, page)

    return run


def op_write_1m(case):
    pages = [kind_page("hzos"[i % 4], 5000 + i) for i in range(NR)]
    case.new = pages
    return lambda: case.dev.write(0, b"".join(pages))


def op_write_1m_objects(case):
    # Ordinary objects over a run of ordinary objects and empty slots: the
    # slice path (handles, then infos).
    pages = [obj_page(7000 + i) for i in range(NR)]
    case.dev.write(0, b"".join(obj_page(6000 + i) for i in range(NR)))
    case.old = [case.dev.read(i * PAGE_SIZE, PAGE_SIZE) for i in range(NR)]
    case.dev.discard(0, 64 * PAGE_SIZE)
    case.old[:64] = [bytes(PAGE_SIZE)] * 64
    case.stats = case.dev.stats()
    case.new = pages
    return lambda: case.dev.write(0, b"".join(pages))


def op_write_unaligned(case):
    data = random.Random(3).randbytes(3 * PAGE_SIZE)
    offset = 2 * PAGE_SIZE + 1000
    flat = bytearray(b"".join(case.old))
    flat[offset : offset + len(data)] = data
    case.new = [bytes(flat[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(NR)]
    return lambda: case.dev.write(offset, data)


def op_discard(case):
    offset, length = 3 * PAGE_SIZE + 100, 200 * PAGE_SIZE
    flat = bytearray(b"".join(case.old))
    flat[offset : offset + length] = bytes(length)
    case.new = [bytes(flat[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(NR)]
    return lambda: case.dev.discard(offset, length)


def op_writeback(case):
    return lambda: case.dev.writeback("page_indexes=0-99")


def op_rewrite_written_back(case):
    writes = [(i, obj_page(9000 + i) if i % 3 else bytes(PAGE_SIZE)) for i in range(100, 151)]
    return _writes(case, writes)


def op_recompress(case):
    return lambda: case.dev.recompress("")


def op_compact(case):
    return lambda: case.dev.compact()


OPS = {
    "rewrite_same_class": (op_rewrite_same_class, {}),
    "rewrite_kinds": (op_rewrite_kinds, {}),
    "write_1m": (op_write_1m, {}),
    "write_1m_objects": (op_write_1m_objects, {}),
    "write_unaligned": (op_write_unaligned, {}),
    "discard": (op_discard, {}),
    "writeback": (op_writeback, {"backing": True}),
    "rewrite_written_back": (op_rewrite_written_back, {"backing": True}),
    "recompress": (op_recompress, {"recomp": True}),
    "compact": (op_compact, {"holes": True}),
}

# Counters a restart must carry over; each may have counted the operation
# the dead daemon was in (a request the kernel sends again counts again).
MONOTONIC = (
    "failed_reads",
    "failed_writes",
    "invalid_io",
    "notify_free",
    "num_reads",
    "num_writes",
    "bd_reads",
    "bd_writes",
    "pages_compacted",
    "huge_pages_since",
    "mem_used_max",
)


@pytest.mark.parametrize("name", OPS)
def test_a_device_killed_at_any_step_is_taken_over_whole(tmp_path, name):
    op, options = OPS[name]
    runs = {}

    def build():
        case = Case(tmp_path, **options)
        runs[id(case)] = op(case)
        return case

    def verify(case, step, nth):
        dev = take_over(case)
        try:
            dev.check()
            stats = dev.stats()
            for field in MONOTONIC:
                assert getattr(stats, field) >= getattr(case.stats, field), (step, nth, field)
            assert stats.mem_limit == case.stats.mem_limit
            for i in range(NR):
                got = dev.read(i * PAGE_SIZE, PAGE_SIZE)
                assert got in (case.old[i], case.new[i]), (step, nth, i)
            # It works on: a whole rewrite, read back, still consistent.
            pages = [kind_page("ozhs"[i % 4], 11000 + i) for i in range(NR)]
            dev.write(0, b"".join(pages))
            assert dev.read(0, NR * PAGE_SIZE) == b"".join(pages)
            dev.compact()
            dev.check()
        finally:
            dev.close()

    reached = each_crash(DEVICE_STEPS, build, lambda case: runs[id(case)](), verify)
    assert sum(reached.values()) > 0, reached


def test_resume_keeps_every_page_counter_and_setting(tmp_path):
    case = Case(tmp_path, backing=True, recomp=True)
    case.dev.recompress("type=huge")
    case.dev.mem_limit = 64 << 20
    case.dev.writeback_limit = 77
    case.dev.writeback_limit_enable = True
    case.dev.writeback_batch_size = 5
    # Far above what the case stores: the watermark's thread has nothing to do.
    case.dev.writeback_watermark = 48 << 20
    case.dev.writeback_low_watermark = 40 << 20
    before = case.dev.stats()
    pages = [case.dev.read(i * PAGE_SIZE, PAGE_SIZE) for i in range(NR)]
    after_reads = case.dev.stats()
    dev = take_over(case)
    case.close()
    try:
        dev.check()
        assert dev.stats() == after_reads
        assert after_reads.num_reads == before.num_reads + NR
        assert dev.mem_limit == 64 << 20
        assert (dev.writeback_limit, dev.writeback_limit_enable) == (77, True)
        assert dev.writeback_batch_size == 5
        assert (dev.writeback_watermark, dev.writeback_low_watermark) == (48 << 20, 40 << 20)
        assert dev.recomp_algorithms == {1: "zstd"}
        assert dev.backing_dev == str(tmp_path / "backing0") or dev.backing_dev.startswith(
            str(tmp_path)
        )
        for i in range(NR):
            assert dev.read(i * PAGE_SIZE, PAGE_SIZE) == pages[i]
    finally:
        dev.close()


def test_a_resumed_device_resumes_again(tmp_path):
    case = Case(tmp_path)
    dev = take_over(case)
    case.close()
    dev.write(0, obj_page(1))
    fds = {name: os.dup(fd) for name, fd in dev.state_fds().items()}
    dev.close(handover=True)
    with BlockDevice.resume(fds) as again:
        again.check()
        assert again.read(0, PAGE_SIZE) == obj_page(1)


def test_resume_refuses_another_state_format():
    with BlockDevice(NR * PAGE_SIZE) as dev:
        fds = {name: os.dup(fd) for name, fd in dev.state_fds().items()}
    os.pwrite(fds["header"], (2).to_bytes(8, "little"), 8 * W_VERSION)
    message = (
        r"^the device's state is format 2, this zramfs reads format 1 only: "
        r"the daemon cannot be replaced without swapoff$"
    )
    with pytest.raises(StateFormatError, match=message):
        BlockDevice.check_state_format(fds)
    with pytest.raises(StateFormatError, match=message):
        BlockDevice.resume(fds)
    with pytest.raises(StateFormatError, match=r"^no 'header' among the state fds"):
        BlockDevice.resume({})


SMALL = 32
_kinds = st.sampled_from("ozhse")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write", "write_run", "discard"]),
            st.integers(0, SMALL - 1),
            _kinds,
            st.integers(1, 8),
        ),
        min_size=1,
        max_size=12,
    ),
    nth=st.integers(1, 80),
)
def test_any_sequence_killed_anywhere_leaves_each_slot_a_page_it_held(ops, nth):
    # Killed at the nth step of any kind the sequence reaches.
    dev = BlockDevice(SMALL * PAGE_SIZE)
    try:
        for i in range(SMALL):
            page = kind_page("ozhse"[i % 5], i)
            if page is not None:
                dev.write(i * PAGE_SIZE, page)
        # Every page each slot ever held: what it may read after the kill.
        held = [{dev.read(i * PAGE_SIZE, PAGE_SIZE)} for i in range(SMALL)]
        plan = []
        for seed, (what, index, kind, count) in enumerate(ops):
            count = min(count, SMALL - index)
            if what == "discard":
                pages = [bytes(PAGE_SIZE)] * count
            elif what == "write":
                pages = [kind_page(kind, 100 + seed) or bytes(PAGE_SIZE)]
                count = 1
            else:
                pages = [kind_page(kind, 100 * seed + j) or bytes(PAGE_SIZE) for j in range(count)]
            plan.append((what, index, pages))
            for j, page in enumerate(pages):
                held[index + j].add(page)

        def run():
            for what, index, pages in plan:
                if what == "discard":
                    dev.discard(index * PAGE_SIZE, len(pages) * PAGE_SIZE)
                else:
                    dev.write(index * PAGE_SIZE, b"".join(pages))

        event("killed" if die_at(None, nth, run) else "not killed")
        with BlockDevice.resume({n: os.dup(fd) for n, fd in dev.state_fds().items()}) as again:
            again.check()
            for i in range(SMALL):
                assert again.read(i * PAGE_SIZE, PAGE_SIZE) in held[i], i
    finally:
        dev.close()


def test_resume_refuses_a_state_that_contradicts_itself():
    with BlockDevice(NR * PAGE_SIZE) as dev:
        dev.write(0, obj_page(1))
        dev.write(PAGE_SIZE, obj_page(2))
        # Two slots naming one object: no crash leaves that behind.
        dev._table.handle[1] = dev._table.handle[0]
        fds = {name: os.dup(fd) for name, fd in dev.state_fds().items()}
    with pytest.raises(StateCorruptError, match=r"^two slots name pool handle \d+$"):
        BlockDevice.resume(fds)


def test_resume_refuses_a_slot_table_of_another_size():
    with BlockDevice(NR * PAGE_SIZE) as dev, BlockDevice(2 * NR * PAGE_SIZE) as other:
        fds = {name: os.dup(fd) for name, fd in dev.state_fds().items()}
        os.close(fds["slots"])
        fds["slots"] = os.dup(other.state_fds()["slots"])
    with pytest.raises(StateFormatError, match=r"^the slot table has 512 slots, the device 256$"):
        BlockDevice.resume(fds)


def test_a_backing_file_is_emptied_at_close_but_kept_for_a_handover(tmp_path):
    # Its blocks are swapped-out memory: nobody may find them after the
    # device is gone, but the daemon that resumes the state needs them.
    case = Case(tmp_path, backing=True)
    path = case.dev.backing_dev
    dev = take_over(case)
    case.close()
    assert os.stat(path).st_blocks > 0
    assert dev.read(120 * PAGE_SIZE, PAGE_SIZE) == case.old[120]
    dev.close()
    assert os.stat(path).st_size == 0
