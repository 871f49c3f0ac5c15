"""Bad input, for real: one line on stderr, the documented exit code, nothing set up.

The exit codes are the table in zramfs.cli's docstring: 2 bad input, 3 needs
root, 4 FUSE unavailable, 5 in use, 6 not found.
"""

import os
import subprocess
import sys

import pytest

from zramfs.codecs import CODECS


def one_line(proc, code, message):
    assert (proc.returncode, proc.stderr) == (code, f"zramfs: error: {message}\n"), proc.stdout
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "0"], "size must be greater than 0"),
        (["--size", "12345"], "size 12345 is not a multiple of 4096 bytes (the page size)"),
        (["--size", "0x1001"], "size 4097 is not a multiple of 4096 bytes (the page size)"),
        (
            ["--size", "1.5K"],
            "size '1.5K' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM",
        ),
        (["--size=-4G"], "size '-4G' is negative"),
        (
            ["--size", "big"],
            "size 'big' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM",
        ),
        (
            ["--algorithm", "lzma"],
            f"unknown compression algorithm 'lzma'; known: {' '.join(CODECS)}",
        ),
        (
            ["--mem-limit", "lots"],
            "size 'lots' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM",
        ),
        (["--priority", "40000"], "priority 40000 is not between -1 and 32767"),
        (["--priority", "high"], "swapon: argument --priority: invalid int value: 'high'"),
        (
            ["--fuse-backend", "nbd"],
            "swapon: argument --fuse-backend: invalid choice: 'nbd' (choose from 'dev', 'pyfuse3')",
        ),
        (
            ["../etc"],
            "name '../etc' must be 1 to 64 letters, digits, '_', '.' or '-', not starting with '_', '.' or '-'",
        ),
    ],
)
def test_swapon_bad_input(zramfs_env, args, message):
    argv = ["swapon", *args] if args[0].startswith(".") else ["swapon", "zramt0", *args]
    one_line(zramfs_env.cli(*argv), 2, message)
    assert zramfs_env.leftovers() == {}
    assert not os.path.exists(zramfs_env.run_dir)


def test_mount_bad_input(zramfs_env):
    env = zramfs_env
    missing = os.path.join(env.root, "missing")
    one_line(env.cli("mount", missing, "--size", "64M"), 2, f"{missing} does not exist")
    a_file = os.path.join(env.root, "file")
    open(a_file, "w").close()
    one_line(env.cli("mount", a_file, "--size", "64M"), 2, f"{a_file} is not a directory")
    one_line(env.cli("mount", env.root, "--size", "0"), 2, "size must be greater than 0")
    assert env.leftovers() == {}


@pytest.mark.parametrize("mountpoint", ["", "  ", "\t"])
def test_an_empty_mountpoint_is_bad_input_not_the_working_directory(zramfs_env, mountpoint):
    """`zramfs mount ''` mounted over the directory it was run in (issue 10)."""
    env = zramfs_env
    cwd = os.path.join(env.root, "cwd")
    os.mkdir(cwd)
    one_line(env.cli("mount", mountpoint, "--size", "64M", cwd=cwd), 2, "MOUNTPOINT is empty")
    one_line(env.cli("umount", mountpoint, cwd=cwd), 2, "MOUNTPOINT is empty")
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)


def test_busy_mountpoint(zramfs_env):
    """A mountpoint that already has something mounted on it: exit 5, nothing mounted on top."""
    env = zramfs_env
    busy = os.path.join(env.root, "busy")
    os.mkdir(busy)
    subprocess.run(["mount", "-t", "tmpfs", "zramt-tmpfs", busy], check=True)
    try:
        one_line(env.cli("mount", busy, "--size", "64M"), 5, f"{busy} is already a mount point")
        assert [m[1] for m in env.mounts()] == ["tmpfs"]
    finally:
        subprocess.run(["umount", busy], check=True)
    assert env.leftovers() == {}


def test_name_in_use(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "64M", "--name", "zramt-used")
    one_line(
        env.cli("swapon", "zramt-used", "--size", "64M"),
        5,
        f"name 'zramt-used' is in use (mounted at {mnt})",
    )
    other = os.path.join(env.root, "other")
    os.mkdir(other)
    one_line(
        env.cli("mount", other, "--size", "64M", "--name", "zramt-used"),
        5,
        f"name 'zramt-used' is in use (mounted at {mnt})",
    )
    env.ok("umount", mnt)
    assert env.leftovers() == {}


# An ordinary user with no capabilities at all (util-linux's setpriv).
AS_NOBODY = (
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
)


def test_not_root(zramfs_env):
    """As an ordinary user (nobody): swapon/swapoff need root (exit 3); mount and umount do not.

    mount and umount go through fusermount3 without root (test_user_mount.py
    mounts for real), so here they fail only for what nobody may not do:
    mount on a directory it cannot write (exit 3), umount what is no zramfs
    mount (exit 6).
    """
    env = zramfs_env
    for args, code, message in [
        (
            ["swapon", "zramt0", "--size", "64M"],
            3,
            "swapon needs root (it mounts, attaches a loop device and enables swap)",
        ),
        (
            ["swapoff", "zramt0"],
            3,
            "swapoff needs root (it disables swap, detaches a loop device and unmounts)",
        ),
        (
            ["mount", env.root, "--size", "64M"],
            3,
            f"{env.root} is not writable by uid 65534 (mount as root, or on a directory you own)",
        ),
        (["umount", env.root], 6, f"{env.root} is not a zramfs mount"),
    ]:
        one_line(env.cli(*args, prefix=AS_NOBODY), code, message)
    # status only reads, so anyone may run it.
    proc = env.cli("status", prefix=AS_NOBODY)
    assert proc.returncode == 0, proc.stderr
    assert env.leftovers() == {}


def test_no_dev_fuse(zramfs_env):
    """In a mount namespace whose /dev has no fuse node: exit 4, nothing set up."""
    env = zramfs_env
    script = 'mount -t tmpfs zramt-nodev /dev && exec "$@"'
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            sys.executable,
            "-m",
            "zramfs",
            "swapon",
            "zramt0",
            "--size",
            "64M",
        ],
        env=env.env,
        capture_output=True,
        text=True,
    )
    one_line(proc, 4, "/dev/fuse does not exist (is the fuse module loaded?)")
    assert env.leftovers() == {}
