"""`zramfs mount`/`umount`/`status` for real: options reach the device, --foreground, status's table."""

import os
import signal
import subprocess
import sys
import time

MiB = 1 << 20


def _wait_for(predicate, timeout=15):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_mount_options_reach_the_device_and_status_shows_them(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "64M", "--name", "zramt-m", "--algorithm", "zstd", "--mem-limit", "8M")
    with open(f"{mnt}/comp_algorithm") as f:
        assert "[zstd]" in f.read().split()
    with open(f"{mnt}/mem_limit") as f:
        assert int(f.read()) == 8 * MiB
    with open(f"{mnt}/disksize") as f:
        assert int(f.read()) == 64 * MiB
    # 1 MiB of text-like data, so DATA, COMPR and TOTAL have something to show.
    with open(f"{mnt}/disk", "r+b") as f:
        f.write(b"".join(b"line %08d of some compressible text\n" % i for i in range(27000))[: 1 << 20])
    mm_stat = env.mm_stat(mnt)

    out = env.ok("status").stdout.splitlines()
    header = out[0].split()
    assert header == [
        "NAME", "DISKSIZE", "DATA", "COMPR", "TOTAL", "ALGORITHM", "LOOP", "MOUNTPOINT", "BACKEND", "DISCARD",
    ]
    (row,) = [line.split() for line in out[1:] if line.split()[0] == "zramt-m"]
    assert row[0:2] == ["zramt-m", "64M"]
    assert row[2] == "1M"  # orig_data_size
    assert row[5:] == ["zstd", "-", mnt, "dev", "yes"]

    row = env.device("zramt-m")
    assert (row["data"], row["compr"], row["total"]) == tuple(mm_stat[:3])
    assert row["compr"] < row["data"] // 2

    env.ok("umount", mnt)
    assert env.leftovers() == {}
    assert os.path.isdir(mnt)  # umount leaves the user's own directory alone


def _foreground(env, mnt, name):
    proc = subprocess.Popen(
        [sys.executable, "-m", "zramfs", "mount", mnt, "--size", "64M", "--name", name, "--foreground"],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: any(r["name"] == name and r["data"] is not None for r in env.status()))
    # --foreground execs the daemon: the same process serves the mount.
    assert list(env.daemons()) == [proc.pid]
    return proc


def test_foreground_until_umount(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "fg")
    os.mkdir(mnt)
    proc = _foreground(env, mnt, "zramt-fg")
    env.ok("umount", mnt)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    proc.stderr.close()
    assert env.leftovers() == {}


def test_foreground_until_sigterm(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "fg")
    os.mkdir(mnt)
    proc = _foreground(env, mnt, "zramt-fg2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    proc.stderr.close()
    assert env.leftovers() == {}


def test_umount_not_zramfs(zramfs_env):
    env = zramfs_env
    proc = env.cli("umount", env.root)
    assert (proc.returncode, proc.stderr) == (6, f"zramfs: error: {env.root} is not a zramfs mount\n")
