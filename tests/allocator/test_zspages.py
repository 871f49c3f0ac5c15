"""Objects that cross page boundaries, huge objects, freeing, compaction."""

import random

import pytest

from allocator import PAGE_SIZE, Pool
from allocator._check import check_pool


def _crosses(pool, h):
    addr, size = pool._lookup(h)
    return addr // PAGE_SIZE != (addr + size - 1) // PAGE_SIZE


@pytest.mark.parametrize("size", [1670, 2500, 3600])
def test_objects_crossing_pages(pool, size):
    rng = random.Random(size)
    objs = {}
    for _ in range(40):
        h = pool.malloc(size)
        data = rng.randbytes(size)
        pool.write(h, data)
        objs[h] = data
    crossing = [h for h in objs if _crosses(pool, h)]
    assert len(crossing) >= 5
    for h, data in objs.items():
        assert pool.read(h) == data
    h = crossing[0]
    with pool.map(h, "r") as view:
        assert bytes(view) == objs[h]
    with pool.map(h, "w") as view:
        view[:] = b"\x55" * size
    with pool.map(h, "rw") as view:
        assert bytes(view) == b"\x55" * size
        view[-1:] = b"\x66"
    objs[h] = b"\x55" * (size - 1) + b"\x66"
    # Neighbours are untouched.
    for h, data in objs.items():
        assert pool.read(h) == data


def test_huge_objects_take_one_page_each(pool):
    hcs = pool.huge_class_size
    assert 3000 < hcs < 4096
    below = pool.malloc(hcs - 1)
    pages = pool.pages_used
    hs = [pool.malloc(s) for s in (hcs, hcs + 1, 4000, 4096)]
    assert pool.pages_used == pages + 4
    for i, h in enumerate(hs):
        size = pool._lookup(h)[1]
        pool.write(h, bytes([i]) * size)
    for i, h in enumerate(hs):
        assert pool.read(h) == bytes([i]) * pool._lookup(h)[1]
    huge_row = pool.stats().classes[-1]
    assert (huge_row.size, huge_row.pages_per_zspage, huge_row.objs_per_zspage) == (4096, 1, 1)
    assert huge_row.zspages == huge_row.objs_used == 4
    for h in hs:
        pool.free(h)
    assert pool.pages_used == pages
    pool.free(below)
    assert pool.pages_used == 0


def test_last_free_of_a_zspage_gives_its_pages_back(pool):
    hs = [pool.malloc(500) for _ in range(50)]
    assert pool.pages_used > 0
    for h in hs[:-1]:
        pool.free(h)
    assert 0 < pool.pages_used <= 8
    pool.free(hs[-1])
    assert pool.pages_used == 0
    assert all(c.zspages == 0 for c in pool.stats().classes)


@pytest.mark.parametrize("chain", [1, 4, 8, 16])
def test_compaction_keeps_handles_and_frees_pages(chain):
    rng = random.Random(chain)
    with Pool(max_pages_per_zspage=chain) as pool:
        objs = {}
        for _ in range(3000):
            size = rng.choice(
                [rng.randint(1, 400), rng.randint(1400, 2000), rng.randint(2000, 4096)]
            )
            h = pool.malloc(size)
            data = rng.randbytes(size)
            pool.write(h, data)
            objs[h] = data
        for h in rng.sample(sorted(objs), 2000):
            pool.free(h)
            del objs[h]
        before = pool.pages_used
        freed = pool.compact()
        assert freed > 0
        assert pool.pages_used == before - freed
        assert pool.stats().pages_compacted == freed
        check_pool(pool)
        for h, data in objs.items():
            assert pool.read(h) == data
        # Nothing is left to gain: every class has less than a zspage of holes.
        assert pool.compact() == 0
        for row in pool.stats().classes[:-1]:
            assert row.objs_allocated - row.objs_used < max(row.objs_per_zspage, 1)
        for h in objs:
            pool.free(h)
        assert pool.pages_used == 0


def test_compaction_of_one_class_moves_into_the_fullest(pool):
    size = 1000
    hs = [pool.malloc(size) for _ in range(400)]
    for i, h in enumerate(hs):
        pool.write(h, i.to_bytes(2, "little") * (size // 2))
    keep = hs[::4]
    for h in hs:
        if h not in keep:
            pool.free(h)
    before = pool.pages_used
    freed = pool.compact()
    assert freed >= before // 2
    for h in keep:
        i = hs.index(h)
        assert pool.read(h) == i.to_bytes(2, "little") * (size // 2)
    st = pool.stats()
    row = next(r for r in st.classes if r.zspages)
    assert row.objs_allocated - row.objs_used < row.objs_per_zspage


def test_compact_on_empty_pool(pool):
    assert pool.compact() == 0
