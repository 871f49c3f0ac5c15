"""The backing store on real storage: a tmpfs that fills up under a backing
file, a loop device as a backing block device (zram's own kind), and a loop
device that starts failing (its lower FUSE connection aborted: this kernel
has no device-mapper or fault injection).

No FUSE mount here: the device is driven directly, as the writeback
attribute will drive it, because what is tested is what the kernel's
filesystems and block layer do to zramfs's O_DIRECT I/O.  Run under the
machine lock (it mounts and attaches loop devices)."""

import errno
import os
import random
import subprocess

import pytest

from tests._support.system import attach, tmpfs
from zramfs._backing import BackingStore, BackingStoreError
from zramfs.device import PAGE_SIZE, BackingIOError, BlockDevice
from zramfs.fuse._mount import abort_connection, mount_at
from zramfs.launch import spawn_daemon

NR = 64


def huge_pages():
    return [random.Random(i).randbytes(PAGE_SIZE) for i in range(NR)]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs with room for 8 pages, unmounted afterwards."""
    with tmpfs(tmp_path / "small", 8 * PAGE_SIZE) as mnt:
        yield mnt


@pytest.fixture
def loop_device(tmp_path):
    """A loop device over a 1 MiB file, detached afterwards."""
    image = tmp_path / "image"
    image.write_bytes(bytes(1 << 20))
    dev = subprocess.run(
        ["losetup", "-f", "--show", "--direct-io=on", image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_a_backing_file_on_a_filesystem_that_fills_loses_nothing(small_tmpfs):
    pages = huge_pages()
    with BlockDevice(NR * PAGE_SIZE, backing_dev=small_tmpfs / "backing") as dev:
        for i, page in enumerate(pages):
            dev.write(i * PAGE_SIZE, page)
        dev.writeback_batch_size = 4
        with pytest.raises(BackingIOError) as info:
            dev.writeback("huge")
        assert info.value.errno == errno.ENOSPC
        s = dev.stats()
        assert s.bd_count == s.bd_writes == 8
        assert s.huge_pages == NR - 8
        assert s.wb_failures == 1
        assert "write of 4 blocks" in dev.writeback_error
        assert dev.read(0, NR * PAGE_SIZE) == b"".join(pages)
        # Freeing blocks (a discard punches them) makes room again.
        dev.discard(0, 8 * PAGE_SIZE)
        assert dev.writeback("page_indexes=8-11") == 4
        assert dev.read(8 * PAGE_SIZE, 56 * PAGE_SIZE) == b"".join(pages[8:])


def test_a_loop_device_as_backing_dev(loop_device):
    pages = huge_pages()
    with BlockDevice(NR * PAGE_SIZE, backing_dev=loop_device) as dev:
        assert dev._backing.nr_blocks == (1 << 20) // PAGE_SIZE
        # The device is claimed (O_EXCL), as zram claims its backing_dev.
        with pytest.raises(BackingStoreError):
            BackingStore(loop_device, 0)
        for i, page in enumerate(pages):
            dev.write(i * PAGE_SIZE, page)
        assert dev.writeback("huge") == NR
        assert dev.stats().mem_used_total == 0
        with open(loop_device, "rb") as raw:
            on_disk = raw.read(NR * PAGE_SIZE)
        assert sorted(
            on_disk[i : i + PAGE_SIZE] for i in range(0, len(on_disk), PAGE_SIZE)
        ) == sorted(pages)
        assert dev.read(0, NR * PAGE_SIZE) == b"".join(pages)
        dev.discard(0, NR * PAGE_SIZE)
        assert dev.stats().bd_count == 0
    # Closed: the claim is gone.
    BackingStore(loop_device, 0).close()
    assert os.path.exists(loop_device)


@pytest.fixture
def failing_block_device(tmp_path):
    """A real block device that can be made to fail: a loop device over the
    `disk` of a second zramfs mount (unsupervised), whose FUSE connection
    the test aborts when it wants every read and write to return EIO.
    Yields (loop device, fail); the mount and the loop are gone afterwards."""
    mnt = tmp_path / "lower"
    mnt.mkdir()
    proc = spawn_daemon(str(mnt), 1 << 20)
    loop = None
    try:
        loop = attach(str(mnt / "disk"))
        dev = mount_at(str(mnt)).dev

        def fail():
            assert abort_connection(dev)

        yield loop, fail
    finally:
        if loop is not None:
            subprocess.run(["losetup", "-d", loop], check=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        proc.terminate()
        proc.wait(timeout=30)


def test_a_backing_block_device_that_starts_failing_loses_nothing(failing_block_device):
    loop, fail = failing_block_device
    pages = huge_pages()
    with BlockDevice(NR * PAGE_SIZE, backing_dev=loop) as dev:
        for i, page in enumerate(pages):
            dev.write(i * PAGE_SIZE, page)
        assert dev.writeback("page_indexes=0-15") == 16
        fail()
        # A written-back slot whose read fails: EIO, counted in failed_reads.
        with pytest.raises(BackingIOError) as info:
            dev.read(0, PAGE_SIZE)
        assert info.value.errno == errno.EIO
        assert dev.stats().failed_reads == 1
        # A writeback that fails leaves its slots in RAM, counted and explained.
        with pytest.raises(BackingIOError):
            dev.writeback("huge")
        s = dev.stats()
        assert s.wb_failures == 1 and s.bd_count == 16
        assert dev.writeback_error
        assert dev.read(16 * PAGE_SIZE, (NR - 16) * PAGE_SIZE) == b"".join(pages[16:])
        # Rewriting a written-back slot needs no read of the store.
        dev.write(0, pages[0])
        assert dev.read(0, PAGE_SIZE) == pages[0]
