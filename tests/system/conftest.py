"""Fixtures for the system tier (helpers in tests/_support/system.py)."""

import pytest

from tests._support.system import ZramfsEnv


@pytest.fixture
def zramfs_env(tmp_path):
    """A ZramfsEnv in tmp_path; teardown removes everything, then fails the test if it had to."""
    env = ZramfsEnv(tmp_path)
    try:
        yield env
    finally:
        left = env.cleanup()
    assert not left, f"the test left these behind (now removed): {left}"
