"""Device sizes at the edges of what the machine can serve, for real.

A size whose slot table cannot be reserved is refused by the CLI (exit 2,
one line) before any daemon starts; a huge size that can be reserved
mounts at once and costs memory only for what is written.
"""

import os
import re
import time

MiB = 1 << 20


def _rss(pid):
    # smaps_rollup is exact; status's VmRSS lags by per-CPU batches.
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no Rss for {pid}")


def test_a_size_the_machine_cannot_serve_is_exit_2(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    proc = env.cli("mount", mnt, "--size", "99999T", "--name", "zramt-big")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert re.fullmatch(
        r"zramfs: error: size 99999T is more than this machine can serve: its slot table needs "
        r"390T of address space \(16 bytes per 4 KiB page\) and the kernel refused it \(.+\); "
        r"the largest size that fits now is \d+T\n",
        proc.stderr,
    ), proc.stderr
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir) or not os.listdir(env.run_dir)
    assert os.listdir(mnt) == []


def test_1_tib_mounts_promptly_and_costs_little(zramfs_env):
    env = zramfs_env
    small, big = os.path.join(env.root, "small"), os.path.join(env.root, "big")
    os.mkdir(small)
    os.mkdir(big)
    env.ok("mount", small, "--size", "64M", "--name", "zramt-small")
    started = time.monotonic()
    env.ok("mount", big, "--size", "1T", "--name", "zramt-1t")
    took = time.monotonic() - started
    with open(f"{big}/disksize") as f:
        assert int(f.read()) == 1 << 40
    # The first and last blocks work; the table between stays untouched.
    with open(f"{big}/disk", "r+b") as f:
        for offset in (0, (1 << 40) - MiB):
            f.seek(offset)
            f.write(b"zram" * (MiB // 4))
            f.flush()
            os.fsync(f.fileno())
            f.seek(offset)
            assert f.read(MiB) == b"zram" * (MiB // 4)
    (small_pid,) = [pid for pid, argv in env.daemons().items() if small in argv]
    (big_pid,) = [pid for pid, argv in env.daemons().items() if big in argv]
    # The same daemon for 64 MiB and for 1 TiB: a whole 1 TiB table of 12
    # bytes a slot would be 3 GiB more, mlocked.
    extra = _rss(big_pid) - _rss(small_pid)
    env.ok("umount", big)
    env.ok("umount", small)
    assert took < 10, took
    assert extra < 16 * MiB, extra
    assert env.leftovers() == {}
