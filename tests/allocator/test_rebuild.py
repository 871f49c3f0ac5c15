"""A pool taken over from its memfds after its process died at any step.

Each case fills a pool, then runs one operation in a forked child that is
killed (SIGKILL) at one step of it (tests/_support/crash.py); the parent
takes the memfds over with ``Pool.attach``, as a restarted daemon does, and
checks: the pool is consistent, every object the parent knew reads back
whole (the one the operation changed: old or new bytes), the orphans a
caller sweeps with ``free_unreferenced`` are the only objects it did not
know, and the pool works on.
"""

import os
import random

import pytest

from allocator import PAGE_SIZE, Pool, PoolFormatError
from allocator._check import check_pool
from tests._support.crash import POOL_STEPS, each_crash

SIZES = (40, 300, 1000, 1500, 3000, PAGE_SIZE)


class Case:
    """A pool with objects of several classes and holes between them."""

    def __init__(self):
        rnd = random.Random(5)
        self.pool = Pool(max_objects=4096)
        self.data = {}
        for _ in range(600):
            data = rnd.randbytes(rnd.choice(SIZES))
            self.data[self.pool.store(data)] = data
        for h in list(self.data)[::3]:
            self.pool.free(h)
            del self.data[h]
        self.target = next(h for h, d in self.data.items() if len(d) == 1000)
        self.new = b"n" * 996  # the same class as 1000 bytes
        self.fds = None

    def take_fds(self):
        return {name: os.dup(fd) for name, fd in self.pool.state_fds().items()}

    def close(self):
        self.pool.close()


OPS = {
    "store": lambda case: case.pool.store(b"s" * 700),
    "free": lambda case: case.pool.free(case.target),
    "replace": lambda case: case.pool.replace(case.target, case.new),
    "compact": lambda case: case.pool.compact(),
    "free_all": lambda case: case.pool.free_many(list(case.data)),
}


@pytest.mark.parametrize("op", OPS)
def test_a_pool_killed_at_any_step_is_taken_over_whole(op):
    def verify(case, step, nth):
        pool = Pool.attach(case.take_fds())
        try:
            check_pool(pool)
            referenced = bytearray(max(case.data) + 1)
            for h in case.data:
                referenced[h] = 1
            pool.free_unreferenced(referenced)
            check_pool(pool)
            live = 0
            for h, data in case.data.items():
                if not pool.size_of(h):
                    # Only what the operation frees may be gone.
                    assert op in ("free", "free_all") and (op == "free_all" or h == case.target)
                    continue
                live += 1
                got = pool.read(h)
                if op == "replace" and h == case.target:
                    assert got in (data, case.new), (step, nth)
                else:
                    assert got == data, (step, nth, h)
            stats = pool.stats()
            assert stats.objs_used == live
            # And it works on: new objects, frees, compaction.
            more = [pool.store(bytes([i]) * (50 + 37 * i)) for i in range(40)]
            pool.free_many(more[::2])
            pool.compact()
            check_pool(pool)
        finally:
            pool.close()

    reached = each_crash(POOL_STEPS, Case, OPS[op], verify)
    assert sum(reached.values()) > 0, reached


def test_attach_keeps_every_object_and_counter():
    case = Case()
    case.pool.compact()
    before = case.pool.stats()
    fds = case.take_fds()
    case.close()
    with Pool.attach(fds) as pool:
        check_pool(pool)
        assert pool.stats() == before
        for h, data in case.data.items():
            assert pool.read(h) == data


def test_attach_of_an_emptied_pool_gives_a_fresh_one():
    case = Case()
    case.pool.free_many(list(case.data))
    fds = case.take_fds()
    case.close()
    with Pool.attach(fds) as pool:
        check_pool(pool)
        assert pool.stats().pages_used == 0
        h = pool.store(b"x" * 100)
        assert h == 1


def test_attach_refuses_what_is_not_a_pool_of_this_format():
    with Pool() as pool:
        fds = {name: os.dup(fd) for name, fd in pool.state_fds().items()}
    try:
        os.pwrite(fds["tables"], (99).to_bytes(8, "little"), 8)
        with pytest.raises(
            PoolFormatError, match=r"^the pool state is format 99, this code reads format 1 only$"
        ):
            Pool.attach(fds)
        os.pwrite(fds["tables"], bytes(8), 0)
        with pytest.raises(PoolFormatError, match=r"holds no pool tables"):
            Pool.attach(fds)
        with pytest.raises(PoolFormatError, match=r"attach needs the fds 'arena' and 'tables'"):
            Pool.attach({"arena": fds["arena"]})
    finally:
        for fd in fds.values():
            os.close(fd)
