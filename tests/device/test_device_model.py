"""Hypothesis model test: a BlockDevice behaves like a bytearray.

Random writes, reads and discards at any offset and length (partial blocks,
same-filled, compressible and incompressible data) run against both; after
every step the stats must match what the model says zram would count.  The
device's choices are deterministic in a page's content (same-filled? does it
compress below huge_class_size?), so the model computes every mm_stat column
except the pool's own (mem_used_total, pages_compacted) exactly, and the
state each slot must be in (empty, same, object, huge).  Every change of
state is reported as a hypothesis event ("slot object -> huge"), so
``pytest --hypothesis-show-statistics`` shows which transitions ran.
"""

import random

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zramfs._slots import state_of
from zramfs.codecs import get_codec
from zramfs.device import PAGE_SIZE, BlockDevice, MemLimitError

NR_PAGES = 12
DISKSIZE = NR_PAGES * PAGE_SIZE

# How the bytes of a write are made; "seed" makes them reproducible.
KINDS = ("zeros", "word", "fio", "random", "text", "mixed")


def make_data(kind, seed, length):
    rng = random.Random(seed)
    if kind == "zeros":
        return bytes(length)
    if kind == "word":  # same-filled when it covers whole aligned pages
        return (rng.randbytes(8) * (length // 8 + 1))[:length]
    if kind == "fio":
        chunk = rng.randbytes(PAGE_SIZE * 4 // 10) + bytes(PAGE_SIZE * 6 // 10)
        return (chunk * (length // len(chunk) + 1))[:length]
    if kind == "random":  # incompressible: huge pages
        return rng.randbytes(length)
    if kind == "text":
        return (b"zram in userspace %d " % seed * (length // 20 + 1))[:length]
    # mixed: a page-sized patchwork of the others
    parts = []
    while sum(map(len, parts)) < length:
        parts.append(make_data(rng.choice(KINDS[:-1]), rng.randrange(1 << 30), rng.randrange(1, 2 * PAGE_SIZE)))
    return b"".join(parts)[:length]


def ranges(draw):
    offset = draw(
        st.one_of(
            st.integers(0, NR_PAGES) .map(lambda p: p * PAGE_SIZE),
            st.integers(0, DISKSIZE),
        )
    )
    room = DISKSIZE - offset
    length = draw(
        st.one_of(
            st.integers(0, room // PAGE_SIZE).map(lambda p: p * PAGE_SIZE),
            st.integers(0, min(room, 64)),
            st.integers(0, room),
        )
    )
    return offset, length


@st.composite
def io_range(draw):
    return ranges(draw)


class DeviceModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dev = BlockDevice(DISKSIZE)
        self.model = bytearray(DISKSIZE)
        # Which slots hold something: written since the last whole-block discard.
        self.stored = [False] * NR_PAGES
        self.codec = get_codec("lz4")
        self.huge_class_size = self.dev._pool.huge_class_size
        self.notify_free = 0
        self.huge_since = 0
        self.limit_failures = 0
        self.states = ["empty"] * NR_PAGES

    def _page(self, index):
        return bytes(self.model[index * PAGE_SIZE : (index + 1) * PAGE_SIZE])

    def _is_huge(self, page):
        return page != page[:8] * 512 and len(self.codec.compress(page)) >= self.huge_class_size

    def _state(self, index):
        """The state slot ``index`` must be in, from the model alone."""
        if not self.stored[index]:
            return "empty"
        page = self._page(index)
        if page == page[:8] * 512:
            return "same"
        return "huge" if self._is_huge(page) else "object"

    @rule(r=io_range(), kind=st.sampled_from(KINDS), seed=st.integers(0, 1 << 30))
    def write(self, r, kind, seed):
        offset, length = r
        data = make_data(kind, seed, length)
        self.dev.write(offset, data)
        self.model[offset : offset + length] = data
        if length:
            for index in range(offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE + 1):
                self.stored[index] = True
                if self._is_huge(self._page(index)):
                    self.huge_since += 1

    @rule(
        index=st.integers(0, NR_PAGES - 1),
        count=st.integers(1, 3),
        kind=st.sampled_from(("zeros", "word", "fio", "random")),
        seed=st.integers(0, 1 << 30),
    )
    def write_whole_pages(self, index, count, kind, seed):
        # Whole aligned pages of one kind: each slot goes straight to the
        # state the kind makes (same, object, huge), from whatever it was.
        count = min(count, NR_PAGES - index)
        self.write((index * PAGE_SIZE, count * PAGE_SIZE), kind, seed)

    @rule(r=io_range())
    def read(self, r):
        offset, length = r
        assert self.dev.read(offset, length) == self.model[offset : offset + length]

    @rule(r=io_range())
    def discard(self, r):
        offset, length = r
        end = offset + length
        self.dev.discard(offset, length)
        if not length:
            return
        self.model[offset:end] = bytes(length)
        whole_first = -(-offset // PAGE_SIZE)
        whole_end = end // PAGE_SIZE
        for index in range(whole_first, whole_end):
            self.stored[index] = False
        self.notify_free += max(0, whole_end - whole_first)
        # A zeroed edge of a stored block is a new page (same-filled or not).
        for index in {offset // PAGE_SIZE, (end - 1) // PAGE_SIZE}:
            if not whole_first <= index < whole_end and self.stored[index]:
                if self._is_huge(self._page(index)):
                    self.huge_since += 1

    @rule()
    def compact(self):
        self.dev.compact()

    @precondition(lambda self: any(self.stored))
    @rule(data=st.data())
    def write_over_a_tight_limit(self, data):
        # Lower mem_limit to what is in use, try a write that needs new pool
        # memory, and check that it changed nothing when it failed.
        used = self.dev.stats().mem_used_total
        self.dev.mem_limit = used
        index = data.draw(st.integers(0, NR_PAGES - 1))
        page = make_data("random", data.draw(st.integers(0, 1 << 30)), PAGE_SIZE)
        try:
            self.dev.write(index * PAGE_SIZE, page)
        except MemLimitError:
            self.limit_failures += 1
        else:
            self.model[index * PAGE_SIZE : (index + 1) * PAGE_SIZE] = page
            self.stored[index] = True
            self.huge_since += 1
        finally:
            self.dev.mem_limit = 0
        assert self.dev.stats().failed_writes == self.limit_failures

    @invariant()
    def slots_are_in_their_states(self):
        states = [state_of(info) for info in self.dev._table.info]
        assert states == [self._state(i) for i in range(NR_PAGES)]
        for was, now in zip(self.states, states):
            if was != now:
                event(f"slot {was} -> {now}")
        self.states = states

    @invariant()
    def stats_add_up(self):
        s = self.dev.stats()
        pages = [self._page(i) for i, stored in enumerate(self.stored) if stored]
        same = [p for p in pages if p == p[:8] * 512]
        others = [p for p in pages if p != p[:8] * 512]
        sizes = [len(self.codec.compress(p)) for p in others]
        huge = sum(size >= self.huge_class_size for size in sizes)
        assert s.orig_data_size == len(pages) * PAGE_SIZE
        assert s.same_pages == len(same)
        assert s.huge_pages == huge
        assert s.huge_pages_since == self.huge_since
        assert s.compr_data_size == sum(PAGE_SIZE if n >= self.huge_class_size else n for n in sizes)
        assert s.notify_free == self.notify_free
        assert s.failed_writes == self.limit_failures
        assert s.failed_reads == s.invalid_io == 0
        assert s.mem_used_total >= s.compr_data_size
        assert s.mem_used_max >= s.mem_used_total
        assert (s.mem_used_total == 0) == (not others)
        assert [int(v) for v in self.dev.mm_stat().split()] == [
            s.orig_data_size,
            s.compr_data_size,
            s.mem_used_total,
            s.mem_limit,
            s.mem_used_max,
            s.same_pages,
            s.pages_compacted,
            s.huge_pages,
            s.huge_pages_since,
        ]

    def teardown(self):
        try:
            assert self.dev.read(0, DISKSIZE) == self.model
        finally:
            self.dev.close()


DeviceModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestDeviceModel = DeviceModel.TestCase
