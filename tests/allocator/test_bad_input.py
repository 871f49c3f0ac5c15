"""Every bad input gets a clear exception and leaves the pool consistent."""

import pytest

from allocator import Pool, PoolError, PoolFullError, PoolLimitError
from allocator._check import check_pool


@pytest.fixture
def filled(pool):
    """A pool holding a few objects, small, crossing and huge, with their data."""
    objs = {}
    for size in (1, 100, 1670, 3000, 4096):
        h = pool.malloc(size)
        data = bytes([size % 251]) * size
        pool.write(h, data)
        objs[h] = data
    return pool, objs


def _unchanged(pool, objs, before):
    check_pool(pool)
    assert pool.stats() == before
    for h, data in objs.items():
        assert pool.read(h) == data


@pytest.mark.parametrize("size", [0, -1, -4096, 4097, 10**9])
def test_malloc_bad_size(filled, size):
    pool, objs = filled
    before = pool.stats()
    with pytest.raises(ValueError, match=rf"^size must be in 1\.\.4096, got {size}$"):
        pool.malloc(size)
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("size", [1.5, "10", None, 4000.0])
def test_malloc_size_not_an_int(filled, size):
    pool, objs = filled
    before = pool.stats()
    with pytest.raises(TypeError):
        pool.malloc(size)
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_write_of_wrong_length(filled, delta):
    pool, objs = filled
    before = pool.stats()
    for h, data in objs.items():
        n = len(data) + delta
        if n < 0:
            continue
        with pytest.raises(
            ValueError, match=rf"^write of {n} bytes to an object of {len(data)} bytes$"
        ):
            pool.write(h, b"\xee" * n)
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("handle", [0, -1, -2, 6, 10**6, 2**70])
@pytest.mark.parametrize("op", ["free", "read", "write", "map"])
def test_unknown_handle(filled, handle, op):
    pool, objs = filled
    before = pool.stats()
    if op == "free":
        with pytest.raises(ValueError, match=rf"^free of unknown or freed handle {handle}$"):
            pool.free(handle)
    elif op == "read":
        with pytest.raises(ValueError, match=rf"^read of unknown or freed handle {handle}$"):
            pool.read(handle)
    elif op == "write":
        with pytest.raises(ValueError, match=rf"^write to unknown or freed handle {handle}$"):
            pool.write(handle, b"x")
    else:
        with pytest.raises(ValueError, match=rf"^unknown or freed handle {handle}$"):
            with pool.map(handle, "rw"):
                pass  # pragma: no cover
        assert not pool._lock.locked()
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("size", [100, 1670, 4096])
def test_double_free_and_use_after_free(filled, size):
    pool, objs = filled
    h = next(h for h, d in objs.items() if len(d) == size)
    pool.free(h)
    del objs[h]
    before = pool.stats()
    with pytest.raises(ValueError, match=rf"^free of unknown or freed handle {h}$"):
        pool.free(h)
    with pytest.raises(ValueError, match=rf"^read of unknown or freed handle {h}$"):
        pool.read(h)
    with pytest.raises(ValueError, match=rf"^write to unknown or freed handle {h}$"):
        pool.write(h, b"x" * size)
    with pytest.raises(ValueError, match=rf"^unknown or freed handle {h}$"):
        with pool.map(h):
            pass  # pragma: no cover
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("mode", ["", "x", "wr", "R", None])
def test_map_bad_mode(filled, mode):
    pool, objs = filled
    before = pool.stats()
    h = next(iter(objs))
    with pytest.raises(ValueError, match=r"^map mode must be one of \('r', 'w', 'rw'\), got "):
        pool.map(h, mode)
    _unchanged(pool, objs, before)


@pytest.mark.parametrize("chain", [0, -1, 17, 100, "8", 8.0, None])
def test_bad_max_pages_per_zspage(chain):
    with pytest.raises(
        ValueError, match=rf"^max_pages_per_zspage must be an int in 1\.\.16, got {chain!r}$"
    ):
        Pool(max_pages_per_zspage=chain)


@pytest.mark.parametrize("cap", [0, -5, 1.5, "100"])
def test_bad_max_pages(cap):
    with pytest.raises(ValueError, match=rf"^max_pages must be None or an int >= 1, got {cap!r}$"):
        Pool(max_pages=cap)


@pytest.mark.parametrize("cap", [0, -1, 1.5, "8", True])
def test_bad_max_objects(cap):
    with pytest.raises(
        ValueError, match=rf"^max_objects must be None or an int >= 1, got {cap!r}$"
    ):
        Pool(max_objects=cap)


@pytest.mark.parametrize("size", [1, 100, 1670, 4096])
def test_max_objects_caps_live_objects(size):
    with Pool(max_objects=20) as pool:
        objs = {}
        for i in range(20):
            objs[pool.store(bytes([i]) * size)] = bytes([i]) * size
        before = pool.stats()
        with pytest.raises(PoolFullError, match=r"^pool is full: all 20 handles are in use$"):
            pool.malloc(size)
        with pytest.raises(PoolFullError, match=r"^pool is full: all 20 handles are in use$"):
            pool.malloc(4097 - size)
        _unchanged(pool, objs, before)
        # The worst case the reservation must hold: each object alone in a
        # zspage of its own class, with ready zspages besides; then each
        # in a huge page of its own.
        pool.free_many(list(objs))
        sizes = [100 + 150 * i for i in range(20)]
        stored = pool.store_many([bytes([i]) * sizes[i] for i in range(19)])
        while pool.populate_ahead():
            pass
        pool.populate_wait()
        assert pool.stats().pages_ready
        stored.append(pool.store(bytes(sizes[19])))
        assert sum(c.zspages for c in pool.stats().classes) == 20
        pool.free_many(stored)
        pool.store_many([bytes([i]) * 4096 for i in range(20)])
        check_pool(pool)


@pytest.mark.parametrize("size", [100, 1670, 4096])
def test_pool_full_changes_nothing(size):
    with Pool(max_pages=32) as pool:
        objs = {}
        with pytest.raises(
            PoolFullError,
            match=r"^pool is full: \d+ of max_pages=32 pages in use, "
            r"\d+ more needed$",
        ) as info:
            for i in range(100000):
                h = pool.malloc(size)
                pool.write(h, bytes([i % 256]) * size)
                objs[h] = bytes([i % 256]) * size
        assert isinstance(info.value, MemoryError) and isinstance(info.value, PoolError)
        before = pool.stats()
        assert before.pages_used <= 32
        with pytest.raises(PoolFullError):
            pool.malloc(size)
        _unchanged(pool, objs, before)
        # Freeing makes room again.
        h = next(iter(objs))
        pool.free(h)
        del objs[h]
        h = pool.malloc(size)
        pool.write(h, b"\x01" * size)
        check_pool(pool)


@pytest.mark.parametrize("size", [100, 4096])
def test_out_of_handles_changes_nothing(monkeypatch, size):
    import allocator._pool

    monkeypatch.setattr(allocator._pool, "MAX_HANDLE", 5)
    with Pool() as pool:
        objs = {}
        for i in range(5):
            h = pool.malloc(size)
            pool.write(h, bytes([i]) * size)
            objs[h] = bytes([i]) * size
        before = pool.stats()
        with pytest.raises(PoolFullError, match=r"^pool is full: all 5 handles are in use$"):
            pool.malloc(size)
        with pytest.raises(PoolFullError, match=r"^pool is full: all 5 handles are in use$"):
            pool.malloc(4096 + 100 - size)
        _unchanged(pool, objs, before)
        pool.free(next(iter(objs)))
        pool.malloc(size)
        check_pool(pool)


@pytest.mark.parametrize("size", [100, 1670, 4096])
def test_store_many_past_its_limit_raises_and_stores_nothing(filled, size):
    pool, objs = filled
    before = pool.stats()
    limit = before.pages_used + 3
    with pytest.raises(
        PoolLimitError,
        match=rf"^store would take the pool to \d+ pages, "
        rf"past the limit of {limit}$",
    ) as info:
        pool.store_many([bytes([7]) * size] * 400, limit)
    assert info.value.pages_used > limit and info.value.max_pages == limit
    _unchanged(pool, objs, before)
    # Under the limit the same call stores everything, in order.
    got = pool.store_many([bytes([i]) * size for i in range(2)], limit)
    assert [pool.read(h) for h in got] == [bytes([i]) * size for i in range(2)]
    check_pool(pool)
