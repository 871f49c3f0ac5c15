"""Pool.stats()'s fullness groups: zspages per group as zsmalloc's debugfs
``classes`` prints them (10 % .. 99 %, 100 %), worked out by hand from how
many objects each zspage holds."""

import random

SIZE = 1500  # the 1504-byte class: 19 objects in 7 pages


def class_of(pool, size=SIZE):
    return next(c for c in pool.stats().classes if c.size >= size + 4)


def group(inuse, objs):
    """zsmalloc's get_fullness_group, as an index into ClassStats.fullness."""
    return 10 if inuse == objs else inuse * 10 // objs


def test_fullness_counts_each_zspage_in_its_group(pool):
    objs = class_of(pool).objs_per_zspage
    # Three zspages, filled in turn; then free from the first two.
    handles = [pool.malloc(SIZE) for _ in range(3 * objs)]
    assert class_of(pool).fullness == (0,) * 10 + (3,)
    for h in handles[:objs]:  # the first zspage: all but one freed
        if h != handles[0]:
            pool.free(h)
    for h in handles[objs : objs + objs // 2]:  # the second: half freed
        pool.free(h)
    want = [0] * 11
    want[group(1, objs)] += 1
    want[group(objs - objs // 2, objs)] += 1
    want[10] += 1
    c = class_of(pool)
    assert c.fullness == tuple(want)
    assert sum(c.fullness) == c.zspages == 3
    assert c.objs_used == 1 + (objs - objs // 2) + objs


def test_fullness_matches_objs_used_after_random_churn(pool):
    rng = random.Random(5)
    live = []
    for _ in range(3000):
        if live and rng.random() < 0.45:
            pool.free(live.pop(rng.randrange(len(live))))
        else:
            live.append(pool.malloc(rng.choice((100, 700, SIZE, 3000, 4096))))
    for c in pool.stats().classes:
        assert len(c.fullness) == 11
        assert sum(c.fullness) == c.zspages
        # Full zspages hold objs_per_zspage objects; the others fewer.
        assert c.fullness[10] * c.objs_per_zspage <= c.objs_used
        assert c.objs_used <= c.fullness[10] * c.objs_per_zspage + sum(c.fullness[:10]) * (
            c.objs_per_zspage - 1
        )
    huge = pool.stats().classes[-1]
    assert huge.fullness == (0,) * 10 + (huge.zspages,)
    assert sum(c.objs_used for c in pool.stats().classes) == len(live)
    pool.compact()
    for c in pool.stats().classes:
        assert sum(c.fullness) == c.zspages


def test_an_empty_pool_has_no_zspage_in_any_group(pool):
    assert all(c.fullness == (0,) * 11 for c in pool.stats().classes)
