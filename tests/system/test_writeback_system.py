"""Writeback and recompression of a device in use, as a zram user drives them.

Each test mounts a device with `zramfs mount --backing-dev ... --recomp-algorithm
...`, uses it through a loop device, and works it with `echo` to its
attribute files only:

* fio writes the whole device with crc32c checksums; half of its pages are
  written back (after `idle` marking) and a quarter recompressed with zstd;
  fio then verifies every block: 0 errors;
* the backing file sits on a small tmpfs that fills: writeback fails with
  ENOSPC, nothing is lost, and the failure is counted;
* a writeback that cannot finish (its filesystem frozen) blocks its writer,
  as zram's does, while reads and writes of disk go on being served.

Run under the machine lock: loop devices, mounts, fsfreeze.
"""

import errno
import json
import os
import random
import subprocess
import threading

import pytest

from tests._support.system import BACKENDS, attach, attr, detach, sh, store, tmpfs

MiB = 1 << 20
PAGE = 4096


def bd_stat(mnt):
    keys = ("bd_count", "bd_reads", "bd_writes", "wb_failures")
    return dict(zip(keys, map(int, attr(mnt, "bd_stat").split()), strict=True))


def block_flags(mnt):
    """block_state's flag column, one entry per slot that holds data."""
    return [line.split()[-1] for line in attr(mnt, "block_state").splitlines()]


def fio(loop, size, *args):
    """fio over `loop` with crc32c verify headers in every 4 KiB block; its JSON job result."""
    proc = subprocess.run(
        [
            "fio", "--name=wb", f"--filename={loop}", "--direct=1", "--ioengine=psync",
            "--bs=4k", f"--size={size}", "--verify=crc32c", "--buffer_compress_percentage=50",
            "--refill_buffers", "--randseed=13", "--output-format=json",
            # No verify state file: fio would leave it in the working directory.
            "--verify_state_save=0", *args,
        ],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr)
    (job,) = json.loads(proc.stdout)["jobs"]
    return job


def mount(env, name, size, *options):
    mnt = os.path.join(env.root, name)
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", str(size), "--name", name, *options)
    return mnt


@pytest.mark.parametrize("backend", BACKENDS)
def test_fio_verifies_pages_written_back_and_recompressed(zramfs_env, backend):
    env = zramfs_env
    size = 128 * MiB
    pages = size // PAGE
    backing = os.path.join(env.root, "backing")
    mnt = mount(
        env, "zramt-wbfio", size, "--fuse-backend", backend,
        "--backing-dev", backing, "--recomp-algorithm", "algo=zstd priority=1",
    )  # fmt: skip
    loop = attach(f"{mnt}/disk")
    try:
        assert fio(loop, size, "--rw=write", "--do_verify=0")["error"] == 0
        stored = env.mm_stat(mnt)
        assert stored[0] == size  # orig_data_size: every page, none same-filled
        # Mark everything idle, then touch the second half: only the first
        # half is still idle, and `writeback idle` takes exactly that.
        store(mnt, "idle", "all")
        sh("dd", f"if={loop}", "of=/dev/null", "bs=1M", f"skip={size // MiB // 2}", "iflag=direct")
        store(mnt, "writeback", "idle")
        assert bd_stat(mnt) == {
            "bd_count": pages // 2, "bd_reads": 0, "bd_writes": pages // 2, "wb_failures": 0,
        }  # fmt: skip
        # A quarter of the device recompressed: the resident half, idle
        # again, with at most pages / 4 slots tried.
        store(mnt, "idle", "all")
        store(mnt, "recompress", f"type=idle max_pages={pages // 4}")
        flags = block_flags(mnt)
        assert sum("w" in f for f in flags) == pages // 2
        recompressed = sum("r" in f for f in flags)
        assert pages // 8 <= recompressed <= pages // 4, recompressed
        after = env.mm_stat(mnt)
        assert after[0] == size  # written-back pages still count as stored
        assert after[1] < stored[1] // 2  # compr_data_size: half left, then shrunk

        job = fio(loop, size, "--rw=write", "--verify_only=1")
        assert job["error"] == 0
        assert job["read"]["io_bytes"] == size  # every block read and checked
        assert bd_stat(mnt)["bd_reads"] >= pages // 2
        assert env.device("zramt-wbfio")["data"] == size
        io_stat = attr(mnt, "io_stat").split()
        assert io_stat[:2] == ["0", "0"]  # failed_reads, failed_writes
    finally:
        detach(env, loop)
    env.ok("umount", mnt)
    assert os.path.getsize(backing) == 0  # emptied when the device closed


def test_a_backing_file_on_a_full_tmpfs_loses_nothing(zramfs_env):
    env = zramfs_env
    size = 16 * MiB
    with tmpfs(os.path.join(env.root, "small"), 1 * MiB) as small:
        backing = os.path.join(small, "backing")
        mnt = mount(env, "zramt-wbfull", size, "--backing-dev", backing)
        loop = attach(f"{mnt}/disk")
        try:
            # Incompressible: every page is huge, and `writeback huge` takes all.
            fio(loop, size, "--rw=write", "--do_verify=0", "--buffer_compress_percentage=0")
            assert env.mm_stat(mnt)[7] == size // PAGE  # huge_pages
            with pytest.raises(OSError) as info:
                store(mnt, "writeback", "huge")
            assert info.value.errno == errno.ENOSPC
            bd = bd_stat(mnt)
            # What fit went out (the tmpfs holds 256 pages); the rest stayed in RAM.
            assert 0 < bd["bd_count"] == bd["bd_writes"] <= MiB // PAGE
            assert bd["wb_failures"] == 1
            assert env.mm_stat(mnt)[7] == size // PAGE - bd["bd_count"]
            job = fio(loop, size, "--rw=write", "--verify_only=1", "--buffer_compress_percentage=0")
            assert job["error"] == 0 and job["read"]["io_bytes"] == size
            assert attr(mnt, "io_stat").split()[:2] == ["0", "0"]
        finally:
            detach(env, loop)
        env.ok("umount", mnt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_writeback_blocks_its_writer_while_disk_io_goes_on(zramfs_env, backend):
    env = zramfs_env
    # The backing file on an ext4 that can be frozen: the writeback's
    # O_DIRECT writes then wait until it is thawed.
    image = os.path.join(env.root, "image")
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    frozen = os.path.join(env.root, "frozen")
    os.mkdir(frozen)
    image_loop = attach(image)
    sh("mkfs.ext4", "-q", "-F", image_loop)
    sh("mount", image_loop, frozen)
    size = 16 * MiB
    mnt = mount(
        env, "zramt-wblong", size, "--fuse-backend", backend,
        "--backing-dev", os.path.join(frozen, "backing"),
        "--recomp-algorithm", "algo=zstd",
    )  # fmt: skip
    disk = os.path.join(mnt, "disk")
    rnd = random.Random(5)
    data = rnd.randbytes(256 * PAGE)  # huge pages
    fd = os.open(disk, os.O_RDWR)
    writers = []
    try:
        os.pwrite(fd, data, 0)
        sh("fsfreeze", "--freeze", frozen)
        try:
            results = {}

            def writeback(key, request):
                try:
                    store(mnt, "writeback", request)
                    results[key] = 0
                except OSError as e:
                    results[key] = e.errno

            writers.append(threading.Thread(target=writeback, args=("first", "huge")))
            writers[0].start()
            writers[0].join(1.0)
            assert writers[0].is_alive()  # blocked in the frozen filesystem
            # Meanwhile disk is served: the pages being written back read
            # back, other pages take new data.
            assert os.pread(fd, len(data), 0) == data
            fresh = rnd.randbytes(64 * PAGE)
            assert os.pwrite(fd, fresh, 8 * MiB) == len(fresh)
            assert os.pread(fd, len(fresh), 8 * MiB) == fresh
            assert bd_stat(mnt)["bd_writes"] == 0
            # One post-processing at a time: a recompression is refused
            # (zram would wait on its dev_lock) ...
            with pytest.raises(OSError) as info:
                store(mnt, "recompress", "type=huge")
            assert info.value.errno == errno.EBUSY
            # ... and a second writeback waits for the first, as in zram.
            writers.append(threading.Thread(target=writeback, args=("second", "huge")))
            writers[1].start()
            writers[1].join(0.5)
            assert writers[1].is_alive()
        finally:
            sh("fsfreeze", "--unfreeze", frozen)
        for t in writers:
            t.join(60)
            assert not t.is_alive()
        # The first, once thawed, went on to the end of the device: the 256
        # pages and the 64 written meanwhile; the second found none left.
        assert results == {"first": 0, "second": 0}
        assert bd_stat(mnt)["bd_count"] == 256 + 64
        assert os.pread(fd, len(data), 0) == data
        assert os.pread(fd, len(fresh), 8 * MiB) == fresh
    finally:
        os.close(fd)
        env.ok("umount", mnt)
        sh("umount", frozen)
        detach(env, image_loop)


def test_swapon_with_a_backing_file_and_a_recompression_algorithm(zramfs_env):
    env = zramfs_env
    backing = os.path.join(env.root, "swap.wb")
    env.ok(
        "swapon", "zramt-wbswap", "--size", "64M", "--backing-dev", backing,
        "--recomp-algorithm", "algo=zstd priority=1 level=3",
        "--recomp-algorithm", "algo=deflate priority=2",
    )  # fmt: skip
    mnt = env.device("zramt-wbswap")["dir"]  # status reads the daemon's record back
    assert attr(mnt, "backing_dev") == f"{backing}\n"
    assert [line.split()[0] for line in attr(mnt, "recomp_algorithm").splitlines()] == [
        "#1:",
        "#2:",
    ]
    st = os.stat(backing)
    assert (st.st_mode & 0o777, st.st_size) == (0o600, 64 * MiB)
    store(mnt, "idle", "all")
    store(mnt, "writeback", "idle")  # mkswap's header page, at least
    assert bd_stat(mnt)["bd_count"] >= 1
    env.ok("swapoff", "zramt-wbswap")
    assert os.path.getsize(backing) == 0


def test_mount_refuses_a_backing_dev_on_zramfs(zramfs_env):
    env = zramfs_env
    first = mount(env, "zramt-wbfirst", 16 * MiB)
    other = os.path.join(env.root, "other")
    os.mkdir(other)
    proc = env.cli("mount", other, "--size", "16M", "--backing-dev", f"{first}/backing")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2,
        "",
        f"zramfs: error: backing device {first}/backing is on the zramfs mount {first}: "
        "writeback into zramfs itself could deadlock\n",
    )
    loop = attach(f"{first}/disk")
    try:
        proc = env.cli("mount", other, "--size", "16M", "--backing-dev", loop)
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            2,
            "",
            f"zramfs: error: backing device {loop} is a loop device over {first}/disk, on zramfs: "
            "writeback into zramfs itself could deadlock\n",
        )
    finally:
        detach(env, loop)
    env.ok("umount", first)
