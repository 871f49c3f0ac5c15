"""Hypothesis model test: a BlockDevice behaves like a bytearray.

Random writes, reads and discards at any offset and length (partial blocks,
same-filled, compressible and incompressible data), idle marks, writebacks
to a backing file and recompressions with zstd run against both; after
every step the stats must match what the model says zram would count.  The
device's choices are deterministic in a page's content (same-filled? does it
compress below huge_class_size? does zstd shrink it?), so the model computes
every mm_stat and bd_stat column except the pool's own (mem_used_total,
pages_compacted) exactly, and the state each slot must be in (empty, same,
object, huge, wb) with its flags (idle, recompressed, incompressible).
Every change of state is reported as a hypothesis event ("slot object ->
wb"), so ``pytest --hypothesis-show-statistics`` shows which transitions ran.
"""

import random
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zramfs._slots import AC_IDLE, COMP_PRIORITY_SHIFT, INCOMPRESSIBLE, SIZE_MASK, state_of
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
        parts.append(
            make_data(
                rng.choice(KINDS[:-1]), rng.randrange(1 << 30), rng.randrange(1, 2 * PAGE_SIZE)
            )
        )
    return b"".join(parts)[:length]


def ranges(draw):
    offset = draw(
        st.one_of(
            st.integers(0, NR_PAGES).map(lambda p: p * PAGE_SIZE),
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
        self.tmp = tempfile.mkdtemp(prefix="zramfs-model-")
        self.dev = BlockDevice(DISKSIZE, backing_dev=f"{self.tmp}/backing")
        self.dev.set_recomp_algorithm("zstd", priority=1)
        self.dev.writeback_batch_size = 3
        self.model = bytearray(DISKSIZE)
        # Which slots hold something: written since the last whole-block discard.
        self.stored = [False] * NR_PAGES
        # Flags of stored slots; a write of any part of the block clears them.
        self.wb = [False] * NR_PAGES
        self.idle = [False] * NR_PAGES
        self.recomp = [False] * NR_PAGES  # stored by zstd (priority 1)
        self.incomp = [False] * NR_PAGES
        self.bd_reads = 0
        self.bd_writes = 0
        self.codec = get_codec("lz4")
        self.zstd = get_codec("zstd")
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
        if self.wb[index]:
            return "wb"
        page = self._page(index)
        if page == page[:8] * 512:
            return "same"
        if self.recomp[index]:
            return "object"  # a recompressed huge page is an object now
        return "huge" if self._is_huge(page) else "object"

    def _size(self, index):
        """compr_data_size's share of a stored slot in RAM (not same)."""
        page = self._page(index)
        if self.recomp[index]:
            return len(self.zstd.compress(page))
        size = len(self.codec.compress(page))
        return PAGE_SIZE if size >= self.huge_class_size else size

    def _written(self, first, last):
        """Blocks first..last were written (whole or in part)."""
        for index in range(first, last + 1):
            self.wb[index] = self.idle[index] = self.recomp[index] = self.incomp[index] = False

    def _rmw_reads(self, offset, length):
        """Backing reads of the partial edge blocks of a write: zero or one
        per edge that is written back."""
        end = offset + length
        first, last = offset // PAGE_SIZE, (end - 1) // PAGE_SIZE
        head, tail = offset % PAGE_SIZE, end % PAGE_SIZE
        if first == last:
            edges = [first] if head or tail else []
        else:
            edges = ([first] if head else []) + ([last] if tail else [])
        return sum(self.wb[i] and self.stored[i] for i in edges)

    @rule(r=io_range(), kind=st.sampled_from(KINDS), seed=st.integers(0, 1 << 30))
    def write(self, r, kind, seed):
        offset, length = r
        data = make_data(kind, seed, length)
        self.dev.write(offset, data)
        if length:
            self.bd_reads += self._rmw_reads(offset, length)
            self._written(offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE)
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
        if length:
            for index in range(offset // PAGE_SIZE, (offset + length - 1) // PAGE_SIZE + 1):
                self.bd_reads += self.wb[index]
                self.idle[index] = False

    @rule(r=io_range())
    def discard(self, r):
        offset, length = r
        end = offset + length
        self.dev.discard(offset, length)
        if not length:
            return
        whole_first = -(-offset // PAGE_SIZE)
        whole_end = end // PAGE_SIZE
        self.bd_reads += self._rmw_reads(offset, length)  # the zeroed edges
        for index in {offset // PAGE_SIZE, (end - 1) // PAGE_SIZE}:
            if self.stored[index]:
                self._written(index, index)
        self.model[offset:end] = bytes(length)
        for index in range(whole_first, whole_end):
            self.stored[index] = False
            self._written(index, index)
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
            self._written(index, index)
            self.huge_since += 1
        finally:
            self.dev.mem_limit = 0
        assert self.dev.stats().failed_writes == self.limit_failures

    def _candidates(self):
        """Slots post-processing may pick: stored, in RAM, not same-filled."""
        return [
            i
            for i in range(NR_PAGES)
            if self.stored[i] and not self.wb[i] and self._state(i) != "same"
        ]

    @rule(age=st.sampled_from([None, 0, 3600]))
    def mark_idle(self, age):
        # No time passes in this test: "all" and 0 mark every candidate
        # accessed before this second... which may be this second, so only
        # "all" and a large age are exact; 0 is checked to run.
        self.dev.mark_idle(age)
        if age == 0:
            for i in range(NR_PAGES):
                self.idle[i] = bool(self.dev._table.ac_time[i] & AC_IDLE)
            return
        for i in self._candidates():
            self.idle[i] = age is None

    @rule(
        mode=st.sampled_from(
            ["idle", "huge", "huge_idle", "incompressible", "page_index", "page_indexes"]
        ),
        index=st.integers(0, NR_PAGES - 1),
    )
    def writeback(self, mode, index):
        picked = []
        for i in self._candidates():
            huge = self._state(i) == "huge"
            if mode == "idle" and self.idle[i] or mode == "huge" and huge:
                picked.append(i)
            elif mode == "huge_idle" and huge and self.idle[i]:
                picked.append(i)
            elif mode == "incompressible" and self.incomp[i]:
                picked.append(i)
            elif mode == "page_index" and i == index or mode == "page_indexes" and i >= index:
                picked.append(i)
        if mode == "page_index":
            request = f"page_index={index}"
        elif mode == "page_indexes":
            request = f"page_indexes={index}-{NR_PAGES - 1}"
        else:
            request = mode
        assert self.dev.writeback(request) == len(picked)
        for i in picked:
            self.wb[i] = True
            self.idle[i] = self.recomp[i] = self.incomp[i] = False
        self.bd_writes += len(picked)

    @rule(mode=st.sampled_from(["", "type=idle", "type=huge", "type=huge_idle"]))
    def recompress(self, mode):
        done = 0
        for i in self._candidates():
            if self.incomp[i] or self.recomp[i]:
                continue
            huge = self._state(i) == "huge"
            if "idle" in mode and not self.idle[i] or "huge" in mode and not huge:
                continue
            old = self._size(i)
            self.idle[i] = False
            new = len(self.zstd.compress(self._page(i)))
            if new < old and new < self.huge_class_size:
                self.recomp[i] = True
                done += 1
            else:
                self.incomp[i] = True
        assert self.dev.recompress(mode) == done

    @invariant()
    def slots_are_in_their_states(self):
        table = self.dev._table
        states = [state_of(info) for info in table.info]
        assert states == [self._state(i) for i in range(NR_PAGES)]
        assert [bool(t & AC_IDLE) for t in table.ac_time] == self.idle
        assert [info >> COMP_PRIORITY_SHIFT & 3 for info in table.info] == [
            int(r) for r in self.recomp
        ]
        assert [bool(info & INCOMPRESSIBLE) for info in table.info] == self.incomp
        for i, recomp in enumerate(self.recomp):
            if recomp:
                event("slot recompressed")
                assert table.info[i] & SIZE_MASK == self._size(i)
        for was, now in zip(self.states, states):
            if was != now:
                event(f"slot {was} -> {now}")
        self.states = states

    @invariant()
    def stats_add_up(self):
        s = self.dev.stats()
        stored = [i for i, stored in enumerate(self.stored) if stored]
        states = [self._state(i) for i in stored]
        ram = [i for i in self._candidates()]
        assert s.orig_data_size == len(stored) * PAGE_SIZE
        assert s.same_pages == states.count("same")
        assert s.huge_pages == states.count("huge")
        assert s.huge_pages_since == self.huge_since
        assert s.compr_data_size == sum(self._size(i) for i in ram)
        assert (s.bd_count, s.bd_reads, s.bd_writes) == (
            states.count("wb"),
            self.bd_reads,
            self.bd_writes,
        )
        assert self.dev.bd_stat().split() == [
            str(s.bd_count),
            str(s.bd_reads),
            str(s.bd_writes),
            str(s.wb_failures),
        ]
        assert s.notify_free == self.notify_free
        assert s.failed_writes == self.limit_failures
        assert s.failed_reads == s.invalid_io == 0
        assert s.mem_used_total >= s.compr_data_size
        assert s.mem_used_max >= s.mem_used_total
        assert (s.mem_used_total == 0) == (not ram)
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
            shutil.rmtree(self.tmp)


DeviceModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestDeviceModel = DeviceModel.TestCase
