"""Requests zramfs refuses: each gets an errno, none ends the daemon."""

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


def expect_errno(expected, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno in (expected if isinstance(expected, tuple) else (expected,)), e.value
    return e.value


def test_truncating_disk_is_eperm(zram):
    expect_errno(errno.EPERM, os.truncate, zram.disk, 4096)
    expect_errno(errno.EPERM, os.truncate, zram.disk, zram.disksize * 2)
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        expect_errno(errno.EPERM, os.ftruncate, fd, 0)
    finally:
        os.close(fd)
    r = subprocess.run(["truncate", "-s", "1M", str(zram.disk)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr
    assert os.stat(zram.disk).st_size == zram.disksize
    zram.assert_alive()


def test_write_past_the_end_is_enospc(zram):
    fd = os.open(zram.disk, os.O_WRONLY)
    try:
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x" * 4096, zram.disksize)
        expect_errno(errno.ENOSPC, os.pwrite, fd, b"x", zram.disksize + (1 << 30))
    finally:
        os.close(fd)
    zram.assert_alive()


def test_unknown_name_is_enoent(zram):
    expect_errno(errno.ENOENT, os.stat, zram.mountpoint / "nope")
    expect_errno(errno.ENOENT, open, zram.mountpoint / "zram0")
    zram.assert_alive()


@pytest.mark.parametrize(
    "op",
    [
        lambda m: os.mkdir(m / "dir"),
        lambda m: os.rmdir(m / "disk"),
        lambda m: os.unlink(m / "disk"),
        lambda m: os.unlink(m / "mm_stat"),
        lambda m: os.rename(m / "disk", m / "disk2"),
        lambda m: os.symlink("disk", m / "link"),
        lambda m: os.link(m / "disk", m / "hard"),
        lambda m: os.mknod(m / "node"),
        lambda m: open(m / "new", "w"),
        lambda m: os.listdir(m / "disk"),
        lambda m: os.open(m, os.O_WRONLY),
    ],
    ids=["mkdir", "rmdir", "unlink-disk", "unlink-attr", "rename", "symlink", "link", "mknod",
         "create", "listdir-file", "open-root-for-write"],  # fmt: skip
)
def test_unsupported_operations_get_an_errno(zram, op):
    with pytest.raises(OSError):
        op(zram.mountpoint)
    zram.assert_alive()
    assert sorted(os.listdir(zram.mountpoint))[0] == "comp_algorithm"


def test_xattrs_are_not_supported(zram):
    expect_errno((errno.EOPNOTSUPP, errno.ENODATA, errno.ENOSYS), os.getxattr, zram.disk, "user.x")
    expect_errno((errno.EOPNOTSUPP, errno.ENOSYS), os.setxattr, zram.disk, "user.x", b"1")
    zram.assert_alive()


def test_chmod_and_touch_work(zram):
    os.chmod(zram.disk, 0o660)
    assert os.stat(zram.disk).st_mode & 0o777 == 0o660
    os.utime(zram.disk, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(zram.disk).st_mtime_ns == 2_000_000_000


@pytest.fixture
def public_mountpoint():
    # pytest's tmp_path is 0700 root: other users could not even reach the mount.
    path = tempfile.mkdtemp(prefix="zramfs-test-")
    os.chmod(path, 0o755)
    yield Path(path)
    os.rmdir(path)


def test_other_users_cannot_open_disk(public_mountpoint, start):
    zram = start(mountpoint=public_mountpoint)
    # default_permissions: the kernel enforces disk's 0600 for non-root.
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(zram.disk)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
    # ...but may read the world-readable stats (allow_other).
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(zram.mountpoint / "mm_stat")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
