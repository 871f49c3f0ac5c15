"""zram's lifecycle with a loop device on `disk`: attach after init or
before it (then `losetup -c`), reset refused while the loop device holds
disk, reset after detaching, and what a write at mem_limit returns."""

import errno
import mmap
import os

import pytest

from tests._support.system import BACKENDS, attach, attr, detach, sh, store

MiB = 1 << 20


def blockdev_size(loop):
    return int(sh("blockdev", "--getsize64", loop))


def through(loop, offset, data=None, size=None):
    """pwrite `data` to, or pread `size` bytes from, the loop device with O_DIRECT."""
    buf = mmap.mmap(-1, size if data is None else len(data))  # page-aligned, as O_DIRECT wants
    fd = os.open(loop, os.O_RDWR | os.O_DIRECT)
    try:
        if data is None:
            return buf[: os.preadv(fd, [buf], offset)]
        buf[:] = data
        return os.pwritev(fd, [buf], offset)
    finally:
        os.close(fd)
        buf.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_loop_device_over_the_lifecycle(zramfs_env, backend):
    env = zramfs_env
    mnt = os.path.join(env.root, "zramfs")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "64M", "--name", "zramt-life", "--fuse-backend", backend)
    disk = os.path.join(mnt, "disk")
    store(mnt, "reset", "1")
    assert attr(mnt, "initstate") == "0\n"

    # Attached before init, the loop device has size 0 until `losetup -c`.
    loop = attach(disk)
    assert blockdev_size(loop) == 0
    store(mnt, "comp_algorithm", "zstd")
    store(mnt, "disksize", "16M")
    sh("losetup", "-c", loop)
    assert blockdev_size(loop) == 16 * MiB
    data = os.urandom(MiB) + bytes(MiB) + b"zramfs\n" * (2 * MiB // 7) + b"x" * (2 * MiB % 7)
    assert through(loop, 4 * MiB, data) == len(data)
    assert through(loop, 4 * MiB, size=len(data)) == data
    assert env.mm_stat(mnt)[0] >= 3 * MiB

    # reset is refused while the loop device holds disk, and works after.
    with pytest.raises(OSError) as e:
        store(mnt, "reset", "1")
    assert e.value.errno == errno.EBUSY
    detach(env, loop)
    store(mnt, "reset", "1")
    assert attr(mnt, "initstate") == "0\n"
    assert os.stat(disk).st_size == 0

    # Attached after init, the loop device has the new size at once.
    store(mnt, "comp_algorithm", "lz4hc")
    store(mnt, "disksize", "32M")
    loop = attach(disk)
    assert blockdev_size(loop) == 32 * MiB
    assert through(loop, 0, size=MiB) == bytes(MiB)  # the old data is gone
    assert through(loop, 28 * MiB, data) == len(data)
    assert through(loop, 28 * MiB, size=len(data)) == data
    detach(env, loop)
    store(mnt, "reset", "1")
    env.ok("umount", mnt)
    assert env.leftovers() == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_write_at_mem_limit_through_loop_is_enospc(zramfs_env, backend):
    # Kernel zram fails such a bio with EIO (zram_write_page's -ENOMEM becomes
    # BLK_STS_IOERR); through loop the writer sees the file's ENOSPC.
    env = zramfs_env
    mnt = os.path.join(env.root, "zramfs")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "16M", "--name", "zramt-limit", "--fuse-backend", backend)
    store(mnt, "mem_limit", "1M")
    loop = attach(os.path.join(mnt, "disk"))
    try:
        with pytest.raises(OSError) as e:
            for i in range(8):
                through(loop, i * MiB, os.urandom(MiB))
        assert e.value.errno == errno.ENOSPC
        assert int(attr(mnt, "io_stat").split()[1]) >= 1  # failed_writes
    finally:
        detach(env, loop)
    env.ok("umount", mnt)
    assert env.leftovers() == {}


def test_mount_without_size_is_uninitialised(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "zramfs")
    os.mkdir(mnt)
    proc = env.ok(
        "mount",
        mnt,
        "--name",
        "zramt-uninit",
        "--algorithm",
        "zstd",
        "--algorithm-params",
        "level=5",
    )
    assert (
        proc.stdout
        == f"zramt-uninit: uninitialised, mounted at {mnt} (write its disksize to start)\n"
    )
    assert attr(mnt, "initstate") == "0\n"
    assert attr(mnt, "comp_algorithm").split().count("[zstd]") == 1
    store(mnt, "disksize", "8M")
    assert env.device("zramt-uninit")["disksize"] == 8 * MiB
    env.ok("umount", mnt)
    assert env.leftovers() == {}
