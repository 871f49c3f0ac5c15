"""Memory overhead on realistic data, and the pool's lifecycle.

The overhead targets are about memory, not time, so they are tests; the
speed targets live in scripts/bench_allocator.py.
"""

import os
import random

import lz4.block
import pytest

from allocator import Pool


def _fio_like_blocks(n, seed):
    """lz4 blocks like fio's buffer_compress_percentage=60: 40 % random, 60 % zeros."""
    rng = random.Random(seed)
    return [
        lz4.block.compress(rng.randbytes(1638) + bytes(4096 - 1638), store_size=False)
        for _ in range(n)
    ]


def _ratio(pool):
    st = pool.stats()
    return st.pages_used * 4096 / st.bytes_used


def test_overhead_on_fio_like_lz4_blocks():
    blocks = _fio_like_blocks(8000, seed=7)
    with Pool() as pool:
        handles = []
        for data in blocks:
            h = pool.malloc(len(data))
            pool.write(h, data)
            handles.append(h)
        assert _ratio(pool) <= 1.03
        rng = random.Random(8)
        rng.shuffle(handles)
        for h in handles[: len(handles) // 2]:
            pool.free(h)
        pool.compact()
        assert _ratio(pool) <= 1.06
        for h in handles[len(handles) // 2 :]:
            assert len(pool.read(h)) > 1600


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_close_gives_everything_back():
    fds = _open_fds()
    pool = Pool()
    assert _open_fds() > fds  # the memfd (and mmap's dup of it)
    h = pool.malloc(100)
    pool.write(h, b"x" * 100)
    pool.close()
    assert _open_fds() == fds
    assert pool.pages_used == 0
    pool.close()  # twice is fine
    with pytest.raises(ValueError):
        pool.read(h)


def test_dropped_pool_closes_its_memfd():
    fds = _open_fds()
    pool = Pool()
    pool.write(pool.malloc(10), b"0123456789")
    del pool
    assert _open_fds() == fds


def test_capped_pool_reserves_only_what_it_can_use():
    with Pool(max_pages=256) as small, Pool() as big:
        assert small._arena.size < 16 << 20
        assert big._arena.size == 1 << 40


def test_pool_sized_by_max_objects_reserves_for_that_many():
    # 1000 objects: at most 1000 zspages of up to 8 pages holding them, 16
    # ready ones, and 1000 huge pages.
    with Pool(max_objects=1000) as small, Pool(max_objects=1 << 40) as big:
        assert small._arena.size <= (1 + 1000 + 16) * 8 * 4096 + 1000 * 4096
        assert small.stats().max_pages is None
        # Never more than the uncapped reservation.
        assert big._arena.size == 1 << 40
