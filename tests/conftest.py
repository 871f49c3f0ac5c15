"""Test tiers and the one place their "can this machine run it" checks live.

Tiers are folders (tests/allocator, tests/device, tests/cli, tests/generator,
tests/fuse, tests/system; shared helpers in tests/_support);
the fuse and system folders mark their tests with the matching marker.  A test
whose needs are not met is skipped with the reason -- unless
ZRAMFS_SYSTEM_TESTS=require (what .ci/run and scripts/test.sh set), where the
same unmet need is a failure, so CI can never go green by skipping.
"""

import os
import shutil

import pytest

REQUIRE = os.environ.get("ZRAMFS_SYSTEM_TESTS", "auto") == "require"

_SYSTEM_TOOLS = ("losetup", "mkswap", "swapon", "swapoff", "mkfs.ext4", "fsck.ext4", "fstrim")


def _unmet(marker_name):
    """Why a test with this marker cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if marker_name in ("fuse", "system"):
        if not os.path.exists("/dev/fuse"):
            return "needs /dev/fuse"
    if marker_name == "system":
        missing = [t for t in _SYSTEM_TOOLS if shutil.which(t) is None]
        if missing:
            return "needs " + ", ".join(missing)
        if not os.path.exists("/dev/loop-control"):
            return "needs loop devices (/dev/loop-control)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        # The folder decides the tier, so no fuse/system test can forget its mark.
        path = str(item.path)
        for tier in ("fuse", "system"):
            if f"{os.sep}tests{os.sep}{tier}{os.sep}" in path:
                item.add_marker(getattr(pytest.mark, tier))


def pytest_runtest_setup(item):
    for name in ("root", "fuse", "system"):
        if item.get_closest_marker(name) is None:
            continue
        reason = _unmet(name)
        if reason is None:
            continue
        if REQUIRE:
            pytest.fail(
                f"ZRAMFS_SYSTEM_TESTS=require, but this {name} test {reason}", pytrace=False
            )
        pytest.skip(reason)
