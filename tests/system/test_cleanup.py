"""Nothing is left behind: swapoff (one, --all, half-gone), failing swapon, and the fixture's own cleanup."""

import os
import subprocess

import pytest

from tests._support.system import attach, detach
from zramfs.codecs import CODECS

MiB = 1 << 20


def test_swapoff_all_leaves_nothing(zramfs_env):
    env = zramfs_env
    for name in ("zramt1", "zramt2"):
        env.ok("swapon", name, "--size", "64M", "--priority", "5")
    assert len(env.swaps()) == 2 and len(env.loops()) == 2 and len(env.daemons()) == 2
    assert sorted(r["name"] for r in env.status()) == ["zramt1", "zramt2"]
    proc = env.ok("swapoff", "--all")
    assert proc.stdout == proc.stderr == ""
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)  # the last swapoff takes the directory too
    # Again, with nothing there: still fine, still nothing.
    env.ok("swapoff", "--all")
    assert env.leftovers() == {}


def test_swapon_name_in_use_changes_nothing(zramfs_env):
    env = zramfs_env
    env.ok("swapon", "zramt3", "--size", "64M")
    before = env.leftovers()
    proc = env.cli("swapon", "zramt3", "--size", "64M")
    assert proc.returncode == 5
    assert proc.stderr == (
        f"zramfs: error: name 'zramt3' is in use (mounted at {env.run_dir}/zramt3)\n"
    )
    assert env.leftovers() == before  # the device that was there is untouched
    env.ok("swapoff", "zramt3")
    assert env.leftovers() == {}


def test_swapon_bad_algorithm_makes_nothing(zramfs_env):
    env = zramfs_env
    proc = env.cli("swapon", "zramt4", "--size", "64M", "--algorithm", "lzma")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"zramfs: error: unknown compression algorithm 'lzma'; known: {' '.join(CODECS)}\n"
    )
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)  # not even the directory


def test_swapon_failing_part_way_is_undone(zramfs_env):
    """mkswap refuses 16 KiB (it needs 10 pages): the mount, daemon and loop device are undone."""
    env = zramfs_env
    proc = env.cli("swapon", "zramt5", "--size", "16K")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("zramfs: error: mkswap /dev/loop"), proc.stderr
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)  # undo means all of it: the directory too


@pytest.mark.parametrize(
    "argv, code",
    [
        # The daemon refuses a size it cannot serve (issue 10: it left an empty run directory).
        (["swapon", "p1", "--size", "99999T"], 1),
        (["swapon", "--size", "99999T"], 1),
        (["mount", "{mnt}", "--size", "99999T"], 1),
    ],
)
def test_a_failed_setup_leaves_not_even_the_run_directory(zramfs_env, argv, code):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    proc = env.cli(*[a.format(mnt=mnt) for a in argv])
    assert proc.returncode in (code, 2), (
        proc.stderr
    )  # 2 once sizes are checked before the daemon starts
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("zramfs: error: "), (
        proc.stderr
    )
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)


def test_swapoff_after_parts_are_gone(zramfs_env):
    """swapoff finishes the job when someone already did swapoff and losetup -d by hand."""
    env = zramfs_env
    env.ok("swapon", "zramt6", "--size", "64M")
    (loop,) = env.loops()
    subprocess.run(["swapoff", loop], check=True)
    subprocess.run(["losetup", "-d", loop], check=True)
    env.ok("swapoff", "zramt6")
    assert env.leftovers() == {}


def test_swapoff_after_the_daemon_died(zramfs_env):
    """A device whose daemon and supervisor were SIGKILLed leaves a dead mount (ENOTCONN); swapoff still removes it."""
    env = zramfs_env
    env.ok("swapon", "zramt7", "--size", "64M")
    (loop,) = env.loops()
    subprocess.run(["swapoff", loop], check=True)
    subprocess.run(["losetup", "-d", loop], check=True)
    env.kill_device(os.path.join(env.run_dir, "zramt7"))
    left = env.leftovers()
    # What swapon changed stays changed while a zramfs swap device, even a
    # dead one, exists (none to keep on a machine that had zramfs's values).
    left.pop("saved_settings", None)
    assert left == {"mounts": [f"{env.run_dir}/zramt7"], "run_dirs": [".zramt7", "zramt7"]}
    row = env.device("zramt7")  # status copes with a dead mount
    assert row["data"] is None and row["backend"] is None
    env.ok("swapoff", "zramt7")
    assert env.leftovers() == {}


def test_swapoff_unknown_name(zramfs_env):
    proc = zramfs_env.cli("swapoff", "zramt-none")
    assert proc.returncode == 6
    assert proc.stderr == (
        f"zramfs: error: no zramfs device named 'zramt-none' (nothing at {zramfs_env.run_dir}/zramt-none)\n"
    )


def test_umount_refuses_while_a_loop_device_holds_disk(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "64M", "--name", "zramt8")
    loop = attach(f"{mnt}/disk")
    proc = env.cli("umount", mnt)
    assert proc.returncode == 5
    assert proc.stderr == (
        f"zramfs: error: {mnt}/disk is still attached to {loop} "
        "(zramfs swapoff zramt8, or swapoff/umount it and losetup -d)\n"
    )
    assert env.device("zramt8")["loop"] == loop  # still fully working
    detach(env, loop)
    env.ok("umount", mnt)
    assert env.leftovers() == {}


def test_fixture_cleanup_removes_a_live_swap(zramfs_env):
    """The teardown path itself, on a device left fully set up (swap on, daemon running)."""
    env = zramfs_env
    env.ok("swapon", "zramt9", "--size", "64M")
    found = env.cleanup()
    assert set(found) - {"saved_settings"} == {
        "swaps",
        "loops",
        "mounts",
        "daemons",
        "supervisors",
        "run_dirs",
    }
    assert env.leftovers() == {}


def test_fixture_cleanup_removes_ext4_on_a_dead_daemon(zramfs_env):
    """The teardown path on the worst mess: ext4 mounted on a loop device whose daemon was killed."""
    env = zramfs_env
    zmount, ext4 = os.path.join(env.root, "z"), os.path.join(env.root, "e")
    os.mkdir(zmount)
    os.mkdir(ext4)
    env.ok("mount", zmount, "--size", "64M", "--name", "zramt10")
    loop = attach(f"{zmount}/disk")
    subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True)
    subprocess.run(["mount", loop, ext4], check=True)
    env.kill_device(zmount)
    found = env.cleanup()
    # ext4 and the dead FUSE mount, the loop device between them, and the
    # device's directory (its record and log).
    assert set(found) == {"loops", "mounts", "run_dirs"}
    assert len(found["mounts"]) == 2
    assert env.leftovers() == {}
