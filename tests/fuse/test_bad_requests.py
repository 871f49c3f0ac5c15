"""Requests zramfs refuses: each gets an errno, none ends the daemon."""

import errno
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest


def expect_errno(expected, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno in (expected if isinstance(expected, tuple) else (expected,)), e.value
    return e.value


def test_truncating_disk_to_zero_is_ignored_by_path_and_by_fd(zram):
    # open(O_TRUNC) reaches the filesystem as truncate(path, 0), and a block
    # device ignores O_TRUNC; so every truncation to 0 is ignored, alike.
    data = os.urandom(1 << 20)
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.truncate(zram.disk, 0)
        os.ftruncate(fd, 0)
        r = subprocess.run(["truncate", "-s", "0", str(zram.disk)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert os.stat(zram.disk).st_size == zram.disksize
    zram.assert_alive()


def test_truncating_disk_to_another_size_is_eperm_by_path_and_by_fd(zram):
    for size in (4096, zram.disksize * 2):
        expect_errno(errno.EPERM, os.truncate, zram.disk, size)
        fd = os.open(zram.disk, os.O_RDWR)
        try:
            expect_errno(errno.EPERM, os.ftruncate, fd, size)
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


# What /sys/block/zram0 answers, measured as root (kernel 6.18): VFS gives
# EACCES when a directory cannot create files, EPERM for the other changes;
# ENOTDIR comes from VFS itself, before any filesystem is asked.
TREE_CHANGES = {
    "create": (errno.EACCES, lambda m: open(m / "new", "w")),
    "create-excl": (
        errno.EACCES,
        lambda m: os.open(m / "new", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
    ),
    "mknod": (errno.EACCES, lambda m: os.mknod(m / "node", stat.S_IFREG | 0o600)),
    "mkfifo": (errno.EPERM, lambda m: os.mkfifo(m / "fifo")),
    "mkdir": (errno.EPERM, lambda m: os.mkdir(m / "dir")),
    "unlink-disk": (errno.EPERM, lambda m: os.unlink(m / "disk")),
    "unlink-attr": (errno.EPERM, lambda m: os.unlink(m / "mm_stat")),
    "rename": (errno.EPERM, lambda m: os.rename(m / "disk", m / "disk2")),
    "rename-over": (errno.EPERM, lambda m: os.rename(m / "mm_stat", m / "io_stat")),
    "symlink": (errno.EPERM, lambda m: os.symlink("disk", m / "link")),
    "link": (errno.EPERM, lambda m: os.link(m / "disk", m / "hard")),
    "rmdir-file": (errno.ENOTDIR, lambda m: os.rmdir(m / "disk")),
}


@pytest.mark.parametrize("name", sorted(TREE_CHANGES))
def test_the_tree_is_fixed_as_in_sysfs(zram, name):
    expected, op = TREE_CHANGES[name]
    before = sorted(os.listdir(zram.mountpoint))
    expect_errno(expected, op, zram.mountpoint)
    assert sorted(os.listdir(zram.mountpoint)) == before
    zram.assert_alive()


@pytest.mark.parametrize(
    ("expected", "op"),
    [
        (errno.ENOTDIR, lambda m: os.listdir(m / "disk")),
        (errno.EISDIR, lambda m: os.open(m, os.O_WRONLY)),
    ],
    ids=["listdir-file", "open-root-for-write"],
)
def test_directory_mixups_get_an_errno(zram, expected, op):
    expect_errno(expected, op, zram.mountpoint)
    zram.assert_alive()


def test_xattrs_are_not_supported(zram):
    expect_errno((errno.EOPNOTSUPP, errno.ENODATA, errno.ENOSYS), os.getxattr, zram.disk, "user.x")
    expect_errno((errno.EOPNOTSUPP, errno.ENOSYS), os.setxattr, zram.disk, "user.x", b"1")
    zram.assert_alive()


@pytest.mark.parametrize("name", ["disk", "."])
def test_mode_and_owner_of_disk_and_the_root_are_fixed(zram, name):
    # disk holds other processes' memory; with allow_other, chmod 666 would
    # hand it to every user.
    path = zram.mountpoint / name
    before = os.stat(path)
    expect_errno(errno.EPERM, os.chmod, path, 0o666)
    expect_errno(errno.EPERM, os.chown, path, 65534, 65534)
    expect_errno(errno.EPERM, os.chown, path, -1, 65534)
    expect_errno(errno.EPERM, os.chown, path, 65534, -1)
    after = os.stat(path)
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode,
        before.st_uid,
        before.st_gid,
    )
    r = subprocess.run(["chmod", "666", str(path)], capture_output=True, text=True)
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr


def test_touch_works(zram):
    os.utime(zram.disk, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(zram.disk).st_mtime_ns == 2_000_000_000
    os.utime(zram.mountpoint)


def test_attribute_files_can_be_chmodded_as_in_sysfs(zram):
    # Like a udev rule on sysfs: root may hand an attribute to a group.
    os.chmod(zram.mountpoint / "mem_limit", 0o664)
    assert os.stat(zram.mountpoint / "mem_limit").st_mode & 0o777 == 0o664


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
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "cat",
            str(zram.mountpoint / "mm_stat"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
