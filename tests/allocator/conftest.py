"""Fixtures for the allocator tier: a pool that is always closed and checked."""

import pytest

from allocator import Pool
from allocator._check import check_pool


@pytest.fixture
def pool():
    p = Pool()
    try:
        yield p
        check_pool(p)
    finally:
        p.close()
