"""Hypothesis: random malloc / write / map / free / compact steps against a dict."""

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from allocator import Pool, PoolFullError
from allocator._check import check_pool

# Sizes that hit every kind of object: tiny, page-crossing, just below and
# at the huge threshold (3629 for a chain of 8), and whole pages.
sizes = st.one_of(
    st.integers(1, 64),
    st.integers(1, 4096),
    st.integers(1500, 2100),
    st.integers(3600, 4096),
    st.sampled_from([4096, 3628, 3629, 1670]),
)


class PoolMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    @initialize(
        chain=st.sampled_from([1, 2, 4, 8, 16]), cap=st.one_of(st.none(), st.integers(1, 64))
    )
    def make_pool(self, chain, cap):
        self.pool = Pool(max_pages_per_zspage=chain, max_pages=cap)
        self.model = {}
        self.counter = 0
        self.compacted = 0

    def teardown(self):
        if hasattr(self, "pool"):
            assert self.pool.stats().pages_compacted == self.compacted
            self.pool.close()

    def _data(self, size):
        self.counter += 1
        return (self.counter.to_bytes(4, "little") * (size // 4 + 1))[:size]

    @rule(target=handles, size=sizes)
    def malloc(self, size):
        before = self.pool.stats()
        try:
            h = self.pool.malloc(size)
        except PoolFullError:
            assert self.pool.stats() == before
            return multiple()
        assert h not in self.model
        data = self._data(size)
        self.pool.write(h, data)
        self.model[h] = data
        return h

    @rule(target=handles, size=st.sampled_from([40, 100, 1670, 3000]), n=st.integers(1, 40))
    def malloc_batch(self, size, n):
        # Many objects of one class, so that zspages fill up and frees leave
        # holes compaction can act on.
        new = []
        for _ in range(n):
            try:
                h = self.pool.malloc(size)
            except PoolFullError:
                break
            data = self._data(size)
            self.pool.write(h, data)
            self.model[h] = data
            new.append(h)
        return multiple(*new)

    @rule(step=st.integers(2, 4), start=st.integers(0, 3))
    def free_spread(self, step, start):
        for h in sorted(self.model)[start::step]:
            self.pool.free(h)
            del self.model[h]

    @rule(h=handles)
    def rewrite(self, h):
        if h in self.model:
            data = self._data(len(self.model[h]))
            self.pool.write(h, data)
            self.model[h] = data

    @rule(h=handles, delta=st.integers(-40, 40))
    def replace(self, h, delta):
        # A size near the old one: sometimes the same class (kept in place),
        # sometimes not (refused, nothing changes).
        if h in self.model:
            size = min(max(len(self.model[h]) + delta, 1), 4096)
            data = self._data(size)
            if self.pool.replace(h, data):
                self.model[h] = data

    @rule(h=handles, mode=st.sampled_from(["w", "rw"]))
    def write_through_map(self, h, mode):
        if h in self.model:
            data = self._data(len(self.model[h]))
            with self.pool.map(h, mode) as view:
                if mode == "rw":
                    assert bytes(view) == self.model[h]
                view[:] = data
            self.model[h] = data

    @rule(h=consumes(handles))
    def free(self, h):
        if h in self.model:
            self.pool.free(h)
            del self.model[h]

    @rule(n=st.integers(1, 20), limit=st.one_of(st.just(0), st.integers(1, 64)))
    def populate_ahead(self, n, limit):
        # What the FUSE session does between requests, under any limit.
        for _ in range(n):
            before = self.pool.stats()
            if not self.pool.populate_ahead(limit):
                break
            after = self.pool.stats()
            assert after.pages_used == before.pages_used
            assert after.objs_used == before.objs_used
            caps = [x for x in (limit, self.pool.max_pages) if x]
            if caps:
                assert after.pages_used + after.pages_ready <= min(caps)

    @precondition(lambda self: self.model)
    @rule()
    def compact(self):
        before = self.pool.pages_used
        freed = self.pool.compact()
        assert self.pool.pages_used == before - freed
        assert self.pool.stats().pages_ready == 0
        self.compacted += freed

    @invariant()
    def consistent(self):
        if not hasattr(self, "pool"):
            return
        check_pool(self.pool)
        for h, data in self.model.items():
            assert self.pool.read(h) == data
            with self.pool.map(h, "r") as view:
                assert view == data
        st_ = self.pool.stats()
        assert st_.objs_used == len(self.model)
        assert st_.bytes_used == sum(map(len, self.model.values()))
        if not self.model:
            assert st_.pages_used == 0


PoolMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPool = PoolMachine.TestCase
