"""zramfs as a disk: loop device, ext4, a real tree copied and checked byte for byte, fstrim, fsck."""

import filecmp
import glob
import os
import shutil
import subprocess
import time

import pytest

from tests._support.system import BACKENDS, attach, sh

MiB = 1 << 20

# /usr/lib/python3* is about 100 MiB of real files (source, bytecode, shared
# objects), a mix that compresses anywhere from 1:1 to 5:1.
SOURCE_TREES = sorted(p for p in glob.glob("/usr/lib/python3*") if os.path.isdir(p))


def tree_size(root):
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def assert_same_tree(a, b):
    """Every directory, file (byte for byte) and symlink of `a` is in `b`, and nothing else."""
    files = 0
    for dirpath, dirnames, filenames in os.walk(a):
        rel = os.path.relpath(dirpath, a)
        other = os.path.join(b, rel)
        assert sorted(os.listdir(other)) == sorted(dirnames + filenames), rel
        for name in dirnames + filenames:
            p, q = os.path.join(dirpath, name), os.path.join(other, name)
            if os.path.islink(p):
                assert os.readlink(p) == os.readlink(q), (p, q)
            elif os.path.isfile(p):
                assert filecmp.cmp(p, q, shallow=False), (p, q)
                files += 1
    return files


@pytest.mark.parametrize("backend", BACKENDS)
def test_ext4_on_zramfs(zramfs_env, backend):
    assert SOURCE_TREES, "no /usr/lib/python3* to copy"
    env = zramfs_env
    zmount = os.path.join(env.root, "zramfs")
    ext4 = os.path.join(env.root, "ext4")
    os.mkdir(zmount)
    os.mkdir(ext4)
    proc = env.ok(
        "mount", zmount, "--size", "1G", "--name", "zramt-disk", "--fuse-backend", backend
    )
    assert proc.stdout == f"zramt-disk: 1 GiB lz4, mounted at {zmount}\n"
    row = env.device("zramt-disk")
    assert row["backend"] == backend and row["disksize"] == 1 << 30

    loop = attach(f"{zmount}/disk")
    assert env.device("zramt-disk")["loop"] == loop
    sh("mkfs.ext4", "-q", "-F", "-L", "zramt-disk", loop)
    sh("mount", loop, ext4)

    for src in SOURCE_TREES:
        shutil.copytree(src, os.path.join(ext4, os.path.basename(src)), symlinks=True)
    copied = sum(tree_size(src) for src in SOURCE_TREES)
    assert copied > 50 * MiB
    # Remount so the comparison reads from zramfs, not from ext4's page cache.
    sh("umount", ext4)
    sh("mount", loop, ext4)
    files = sum(
        assert_same_tree(src, os.path.join(ext4, os.path.basename(src))) for src in SOURCE_TREES
    )
    assert files > 1000

    full = env.mm_stat(zmount)
    assert full[0] >= copied  # orig_data_size: the files plus ext4's metadata
    for src in SOURCE_TREES:
        shutil.rmtree(os.path.join(ext4, os.path.basename(src)))
    sh("sync")
    trim = subprocess.run(["fstrim", "-v", ext4], capture_output=True, text=True)
    emptied = env.mm_stat(zmount)
    print(
        f"\n[{backend}] copied {copied / MiB:.1f} MiB in {files} files; mem_used_total "
        f"{full[2] / MiB:.1f} MiB full, {emptied[2] / MiB:.1f} MiB after rm + fstrim "
        f"({trim.stdout.strip() or trim.stderr.strip()})"
    )
    if row["discard"]:
        assert trim.returncode == 0, trim.stderr
        deadline = time.monotonic() + 10
        while emptied[2] > full[2] // 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            emptied = env.mm_stat(zmount)
        assert emptied[2] <= full[2] // 4  # mem_used_total fell
        assert emptied[0] <= full[0] // 4
    else:
        # The expected refusal: without FUSE fallocate, discard cannot reach zramfs.
        assert trim.returncode != 0
        assert "not supported" in trim.stderr
        assert emptied[0] >= full[0] * 9 // 10

    sh("umount", ext4)
    fsck = subprocess.run(["fsck.ext4", "-n", "-f", loop], capture_output=True, text=True)
    assert fsck.returncode == 0, (fsck.stdout, fsck.stderr)
    sh("losetup", "-d", loop)
    deadline = time.monotonic() + 10
    while env.loops() and time.monotonic() < deadline:
        time.sleep(0.05)
    env.ok("umount", zmount)
    assert env.leftovers() == {}
