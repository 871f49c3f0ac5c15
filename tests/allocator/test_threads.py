"""Many threads at once on one pool, with compaction running beside them."""

import random

from allocator import Pool
from allocator._check import check_pool
from tests._support.threads import run_threads


def test_many_threads_and_compaction():
    pool = Pool()
    results = {}

    def worker(seed):
        rng = random.Random(seed)
        mine = {}
        for i in range(1500):
            if mine and rng.random() < 0.4:
                h = rng.choice(list(mine))
                assert pool.read(h) == mine.pop(h)
                pool.free(h)
            else:
                size = rng.choice(
                    [rng.randint(1, 200), rng.randint(1500, 1800), rng.randint(3000, 4096)]
                )
                h = pool.malloc(size)
                data = (seed.to_bytes(2, "little") + i.to_bytes(4, "little")) * (size // 6 + 1)
                data = data[:size]
                if rng.random() < 0.5:
                    pool.write(h, data)
                else:
                    with pool.map(h, "w") as view:
                        view[:] = data
                assert h not in mine
                mine[h] = data
        for h, data in mine.items():
            assert pool.read(h) == data
        results[seed] = mine

    def compactor(stop):
        while not stop.is_set():
            pool.compact()
            pool.stats()

    try:
        run_threads(worker, 8, beside=compactor)
        assert len(results) == 8
        check_pool(pool)
        everything = {h: d for mine in results.values() for h, d in mine.items()}
        assert len(everything) == sum(len(m) for m in results.values())
        for h, data in everything.items():
            assert pool.read(h) == data
        pool.compact()
        for h in everything:
            pool.free(h)
        assert pool.pages_used == 0
    finally:
        pool.close()
