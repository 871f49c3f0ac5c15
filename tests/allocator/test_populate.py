"""Pool.populate_ahead: zspages faulted in before a malloc needs them.

Residency is read with mincore(2), which for a shmem mapping says whether
each page is in the memfd: the arena's pages, not Python's.

Every test runs twice: faulting through io_uring's kernel workers
(allocator._uring; here for every zspage, RING_MIN_BATCH 1) and with plain
madvise on the caller's thread (the fallback, chosen with ZRAMFS_NO_URING
as where io_uring is refused).
"""

import ctypes
import errno

import pytest

from allocator import Pool
from allocator._check import check_pool
from allocator._layout import READY_MAX
from allocator._uring import NO_URING_ENV, open_ring

PAGE = 4096
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


@pytest.fixture(autouse=True, params=["io_uring", "madvise"])
def faulting(request, monkeypatch):
    if request.param == "madvise":
        monkeypatch.setenv(NO_URING_ENV, "1")
    else:
        monkeypatch.delenv(NO_URING_ENV, raising=False)
        ring = open_ring()
        if ring is None:
            pytest.skip("io_uring is absent or refused here")
        ring.close()
        monkeypatch.setattr("allocator._uring.RING_MIN_BATCH", 1)
    return request.param


def resident(pool, addr, npages):
    """How many of the arena pages at [addr, addr + npages pages) are in memory."""
    anchor = ctypes.c_char.from_buffer(pool._map)
    base = ctypes.addressof(anchor)
    del anchor  # the address stays valid; the export must not outlive the test
    vec = ctypes.create_string_buffer(npages)
    assert _libc.mincore(base + addr, npages * PAGE, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw)


def ready_zspages(pool):
    return [(z, ppz) for ppz, ids in enumerate(pool._zs_ready) for z in ids]


def test_a_new_zspage_asks_for_the_next_and_populate_ahead_faults_it_in(pool):
    assert not pool.populate_wanted
    assert not pool.populate_ahead()
    pool.store(b"x" * 1700)
    assert pool.populate_wanted
    assert pool.populate_ahead()
    pool.populate_wait()
    [(z, ppz)] = ready_zspages(pool)
    assert resident(pool, z << pool._zs_shift, ppz) == ppz
    s = pool.stats()
    assert (s.pages_ready, s.pages_used) == (ppz, ppz)  # ready pages are not "used"
    assert not pool.populate_wanted and not pool.populate_ahead()
    check_pool(pool)


def test_the_next_zspage_of_that_chain_length_is_the_ready_one(pool):
    data = b"y" * 1700
    handles = [pool.store(data)]
    pool.populate_ahead()
    pool.populate_wait()
    [(z, _ppz)] = ready_zspages(pool)
    used = pool.pages_used
    while pool.pages_used == used:
        handles.append(pool.store(data))
    # The new zspage is the ready one: the object landed in its pages.
    assert pool._handles[handles[-1]] >> 13 >> pool._zs_shift == z
    assert pool.stats().pages_ready == 0
    assert pool.populate_wanted  # and asks for the next
    assert all(pool.read(h) == data for h in handles)
    check_pool(pool)


def test_ready_zspages_are_bounded_and_the_oldest_kind_makes_room(pool):
    # Objects of many sizes: zspages of every chain length, each asking for one.
    handles = [pool.store(b"z" * size) for size in range(100, 3600, 7)]
    while pool.populate_ahead():
        pass
    pool.populate_wait()
    ready = ready_zspages(pool)
    assert len(ready) == READY_MAX
    assert pool.stats().pages_ready == sum(ppz for _z, ppz in ready) <= READY_MAX * 8
    check_pool(pool)
    # Every ready page is in memory; no id is both ready and in use.
    for z, ppz in ready:
        assert resident(pool, z << pool._zs_shift, ppz) == ppz
    pool.free_many(handles)
    check_pool(pool)


def test_compact_gives_ready_pages_back(pool):
    h = pool.store(b"c" * 1700)
    pool.populate_ahead()
    pool.populate_wait()
    [(z, ppz)] = ready_zspages(pool)
    pool.compact()
    assert pool.stats().pages_ready == 0
    assert resident(pool, z << pool._zs_shift, ppz) == 0
    assert pool.read(h) == b"c" * 1700
    check_pool(pool)


@pytest.mark.parametrize("limit", [None, "arg"])
def test_populate_ahead_stays_within_the_cap(limit):
    # A capped pool (or an explicit limit) with no room for one more zspage
    # populates nothing: ready pages count against the cap.
    probe = Pool()
    probe.store(b"p" * 1700)
    ppz = probe.stats().pages_used
    probe.close()
    cap = ppz + ppz - 1
    p = Pool(max_pages=cap if limit is None else None)
    try:
        p.store(b"p" * 1700)
        assert p.populate_wanted
        assert not p.populate_ahead(cap if limit == "arg" else 0)
        assert p.stats().pages_ready == 0
        check_pool(p)
    finally:
        p.close()


class _RefusingMap:
    """Stands in for the arena's mmap under the madvise fallback: madvise fails."""

    def __init__(self, err):
        self.err = err

    def madvise(self, *args):
        raise OSError(self.err, "refused")


def _refuse(pool, err, faulting, monkeypatch):
    """Make the kernel refuse the next populate with err, the real way for io_uring:
    EINVAL for an advice it does not know, ENOMEM for a range nothing maps."""
    if faulting == "madvise":
        monkeypatch.setattr(pool._populator, "_map", _RefusingMap(err))
    elif err == errno.EINVAL:
        monkeypatch.setattr("allocator._uring.MADV_POPULATE_WRITE", 0x7FFF)
    else:
        pool._populator._opened = True
        pool._populator._ring = open_ring()
        pool._populator._base = 1 << 46  # nothing is mapped there


@pytest.mark.parametrize("err, gives_up", [(errno.EINVAL, True), (errno.ENOMEM, False)])
def test_a_refused_madvise_changes_nothing(pool, err, gives_up, faulting, monkeypatch):
    pool.store(b"r" * 1700)
    before = pool.stats()
    with monkeypatch.context() as m:
        _refuse(pool, err, faulting, m)
        started = pool.populate_ahead()
        assert started is (faulting == "io_uring")  # queued; it fails on the worker
        pool.populate_wait()
    assert pool.stats() == before
    check_pool(pool)
    # A new zspage asks again, unless the kernel has no MADV_POPULATE_WRITE
    # at all (EINVAL, before Linux 5.14): then nothing asks any more.
    pool.store(b"s" * 900)
    assert pool.populate_wanted is not gives_up


def test_the_ring_takes_batches_and_madvise_single_zspages(pool, faulting, monkeypatch):
    monkeypatch.setattr("allocator._uring.RING_MIN_BATCH", 4)
    pool.store(b"1" * 1700)  # one zspage wanted: faulted in here
    assert pool.populate_ahead()
    assert pool._populator.pending == 0 and pool.stats().pages_ready > 0
    pool.store_many([b"2" * size for size in range(100, 3600, 300)])  # many wanted
    assert len(pool._want) >= 4
    ready = len(ready_zspages(pool))
    assert pool.populate_ahead()
    # Through the ring, all in one call, in flight until seen done; with
    # madvise, one zspage faulted in per call.
    if faulting == "io_uring":
        assert pool._populator.pending >= 4 and len(ready_zspages(pool)) == ready
    else:
        assert pool._populator.pending == 0 and len(ready_zspages(pool)) == ready + 1
    pool.populate_wait()
    assert pool._populator.pending == 0
    for z, ppz in ready_zspages(pool):
        assert resident(pool, z << pool._zs_shift, ppz) == ppz


def test_a_pool_closed_while_populating_waits_for_the_workers():
    # The ring's madvise writes into the arena: close must not unmap under it.
    p = Pool()
    p.store_many([b"w" * size for size in range(100, 3600, 50)])
    assert p.populate_ahead()
    p.close()
    assert p._populator.pending == 0 and not p._populator.uses_ring
    assert not p.populate_wanted and not p.populate_ahead()


def test_a_closed_pool_populates_nothing():
    p = Pool()
    p.store(b"q" * 1700)
    p.close()
    assert not p.populate_wanted
    assert not p.populate_ahead()
