"""The public names, the size-class table and the basic calls."""

import dataclasses

import pytest

import allocator
from allocator import (
    PAGE_SIZE,
    ClassStats,
    Pool,
    PoolError,
    PoolFullError,
    PoolLimitError,
    PoolStats,
)
from allocator._check import check_pool
from allocator._size_class import SizeClassTable


def test_public_names_are_exported():
    assert set(allocator.__all__) == {
        "FALLOC_FL_KEEP_SIZE",
        "FALLOC_FL_PUNCH_HOLE",
        "PAGE_SHIFT",
        "PAGE_SIZE",
        "ClassStats",
        "Pool",
        "PoolDamagedError",
        "PoolError",
        "PoolFormatError",
        "PoolFullError",
        "PoolLimitError",
        "PoolStateError",
        "PoolStats",
    }
    for name in allocator.__all__:
        if not name.isupper():
            assert getattr(allocator, name).__module__.startswith("allocator.")
    # The kernel's page: what the pool gets from and gives back to it.
    assert allocator.PAGE_SIZE == 1 << allocator.PAGE_SHIFT == 4096
    assert issubclass(PoolFullError, PoolError)
    assert issubclass(PoolFullError, MemoryError)
    assert PoolFullError.__doc__.startswith("Raised when")
    assert issubclass(PoolLimitError, PoolError)
    assert PoolLimitError.__doc__.startswith("Raised when")


@pytest.mark.parametrize("chain", [1, 2, 4, 8, 16])
def test_each_class_picks_the_chain_that_wastes_least(chain):
    t = SizeClassTable(chain)
    for size, ppz, objs in zip(t.size, t.pages_per_zspage, t.objs_per_zspage):
        assert 1 <= ppz <= chain
        assert objs == ppz * PAGE_SIZE // size
        best = min(range(1, chain + 1), key=lambda p: ((p * PAGE_SIZE) % size) / p)
        assert ((ppz * PAGE_SIZE) % size) / ppz == ((best * PAGE_SIZE) % size) / best


def test_merged_classes():
    t = SizeClassTable(8)
    # zsmalloc with a chain of 8 has about 119 distinct classes; so do we.
    assert len(t) == 119
    assert t.size[0] == 32 and t.size[-1] == 4096
    layouts = list(zip(t.pages_per_zspage, t.objs_per_zspage))
    # Merging leaves no two neighbours with the same layout.
    assert all(a != b for a, b in zip(layouts, layouts[1:]))
    # Every 16-byte step maps to the smallest class that holds it.
    for units in range(2, 257):
        c = t.class_of[units]
        assert t.size[c] >= units * 16
        assert c == 0 or t.size[c - 1] < units * 16
    assert layouts[-1] == (1, 1)
    assert t.huge_class_size == 3629
    assert len(SizeClassTable(16)) > len(t) > len(SizeClassTable(4))


def test_malloc_write_read(pool):
    h = pool.malloc(100)
    assert isinstance(h, int) and h >= 1
    pool.write(h, b"a" * 100)
    assert pool.read(h) == b"a" * 100
    pool.write(h, bytearray(b"b" * 100))
    pool.write(h, memoryview(b"c" * 100))
    assert pool.read(h) == b"c" * 100
    assert pool.stats().objs_used == 1
    pool.free(h)
    assert pool.pages_used == 0


def test_every_size_round_trips(pool):
    handles = {}
    for size in range(1, 4097):
        h = pool.malloc(size)
        data = bytes([size & 255]) * size
        pool.write(h, data)
        handles[h] = data
    assert len(handles) == 4096
    check_pool(pool)
    for h, data in handles.items():
        assert pool.read(h) == data
    st = pool.stats()
    assert st.objs_used == 4096
    assert st.bytes_used == sum(range(1, 4097))
    for h in handles:
        pool.free(h)
    assert pool.pages_used == 0
    assert pool.stats().bytes_used == 0


def test_handles_are_reused_after_free(pool):
    hs = [pool.malloc(64) for _ in range(10)]
    pool.free(hs[3])
    assert pool.malloc(64) == hs[3]


def test_map_modes(pool):
    h = pool.malloc(200)
    pool.write(h, bytes(range(200)))
    with pool.map(h, "r") as view:
        assert isinstance(view, memoryview)
        assert view.readonly
        assert bytes(view) == bytes(range(200))
    with pool.map(h, "w") as view:
        view[:] = b"x" * 200
    assert pool.read(h) == b"x" * 200
    with pool.map(h, "rw") as view:
        assert bytes(view[:3]) == b"xxx"
        view[0:3] = b"abc"
    assert pool.read(h)[:4] == b"abcx"
    # The view is released when the block ends: it cannot reach the arena.
    with pytest.raises(ValueError, match="released memoryview"):
        view[0]
    # map holds the pool lock only inside the block.
    assert not pool._lock.locked()


def test_map_default_mode_is_read_only(pool):
    h = pool.malloc(10)
    with pool.map(h) as view:
        assert view.readonly


def test_stats_is_frozen_and_complete(pool):
    h = pool.malloc(1000)
    pool.write(h, b"z" * 1000)
    st = pool.stats()
    assert isinstance(st, PoolStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.pages_used = 1
    assert st.pages_used == pool.pages_used > 0
    assert st.objs_used == 1 and st.bytes_used == 1000
    assert st.huge_class_size == pool.huge_class_size
    assert st.max_pages is None and st.pages_compacted == 0
    assert all(isinstance(c, ClassStats) for c in st.classes)
    (row,) = [c for c in st.classes if c.zspages]
    assert row.size >= 1004 and row.objs_used == 1
    assert row.objs_allocated == row.objs_per_zspage
    assert row.pages_used == row.pages_per_zspage == st.pages_used
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.zspages = 3


def test_pool_is_a_context_manager():
    with Pool(max_pages_per_zspage=4, max_pages=64) as p:
        h = p.malloc(10)
        p.write(h, b"0123456789")
        assert p.stats().max_pages == 64
        assert p.max_pages_per_zspage == 4
    assert p.pages_used == 0


def test_fullest_zspage_with_room_gets_the_object(pool):
    # Class of 1000-byte slots; fill three zspages, then thin two of them.
    size = 996
    c = pool._class_of[(size + 4 + 15) >> 4]
    objs = pool._objs_per_zspage[c]
    hs = [pool.malloc(size) for _ in range(3 * objs)]
    zspage = {h: pool._lookup(h)[0] >> pool._zs_shift for h in hs}
    zs = sorted(set(zspage.values()))
    assert len(zs) == 3
    by_zs = {z: [h for h in hs if zspage[h] == z] for z in zs}
    for h in by_zs[zs[0]][: objs - 1]:  # first zspage: 1 object left
        pool.free(h)
    for h in by_zs[zs[1]][:2]:  # second: objs - 2 left (fuller)
        pool.free(h)
    for h in by_zs[zs[2]][:1]:  # third: objs - 1 left (fullest with room)
        pool.free(h)
    new = pool.malloc(size)
    assert pool._lookup(new)[0] >> pool._zs_shift == zs[2]
    new2 = pool.malloc(size)
    assert pool._lookup(new2)[0] >> pool._zs_shift == zs[1]


def test_replace_keeps_the_slot_when_the_new_size_is_in_the_same_class():
    with Pool() as pool:
        h = pool.malloc(1000)
        pool.write(h, b"a" * 1000)
        other = pool.store(b"b" * 1000)
        before = pool.stats()
        # 1000 and 990 round to the same 16-byte class.
        assert pool.replace(h, b"c" * 990)
        assert pool.read(h) == b"c" * 990
        assert pool.read(other) == b"b" * 1000
        after = pool.stats()
        assert after.pages_used == before.pages_used
        assert after.bytes_used == before.bytes_used - 10
        check_pool(pool)


def test_replace_refuses_another_class_and_changes_nothing():
    with Pool() as pool:
        h = pool.store(b"a" * 1000)
        before = pool.stats()
        assert not pool.replace(h, b"b" * 2000)
        assert not pool.replace(h, b"b" * PAGE_SIZE)  # huge: a page of its own
        assert pool.read(h) == b"a" * 1000
        assert pool.stats() == before
        big = pool.store(b"x" * PAGE_SIZE)
        assert not pool.replace(big, b"y" * PAGE_SIZE)  # huge objects never move slots
        check_pool(pool)


def test_replace_of_a_freed_handle_is_a_value_error():
    with Pool() as pool:
        h = pool.store(b"a" * 100)
        pool.free(h)
        with pytest.raises(ValueError, match="replace of unknown or freed handle"):
            pool.replace(h, b"b" * 100)
        check_pool(pool)


def test_gather_frames_objects_in_one_buffer():
    with Pool() as pool:
        datas = [bytes([i]) * n for i, n in enumerate((1, 100, 1000, 3000, PAGE_SIZE), 1)]
        hs = [pool.store(d) for d in datas]
        prefix = {len(d): b"<%d>" % len(d) for d in datas}
        out = pool.gather(reversed(hs), prefix, b"H", b"T")
        assert out == b"H" + b"".join(prefix[len(d)] + d for d in reversed(datas)) + b"T"
        pool.free(hs[1])
        with pytest.raises(ValueError, match="gather of unknown or freed handle"):
            pool.gather(hs, prefix)
        check_pool(pool)
