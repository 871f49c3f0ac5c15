"""`zramfs status` against real `zramctl`, and `zramfs reset`, for real.

A kernel zram device of the same size and algorithm as a zramfs device:
both tables must have the same header, the same columns in the same places
(numbers right-aligned under their heading, text left-aligned) and the same
cells where the values are the same (DISKSIZE, ALGORITHM), in the default,
--raw and --bytes formats.  Runs under the machine lock, as root, where
/sys/class/zram-control exists; the kernel device is hot_added for the test
and hot_removed after it (zram0 and the others are never touched).
"""

import os
import shutil
import subprocess

import pytest

MiB = 1 << 20
CONTROL = "/sys/class/zram-control"
RIGHT = {"DISKSIZE", "DATA", "COMPR", "TOTAL", "STREAMS"}

needs_kernel_zram = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.path.exists(f"{CONTROL}/hot_add")
    or shutil.which("zramctl") is None,
    reason="needs root, kernel zram (hot_add) and zramctl",
)


@pytest.fixture
def kernel_zram():
    """A fresh /dev/zramN, hot_added: yields its sysfs directory; reset and hot_removed after."""
    with open(f"{CONTROL}/hot_add") as f:
        n = int(f.read())
    sysfs = f"/sys/block/zram{n}"
    try:
        yield n, sysfs
    finally:
        with open(f"{sysfs}/reset", "w") as f:
            f.write("1")
        with open(f"{CONTROL}/hot_remove", "w") as f:
            f.write(str(n))


def _layout(lines):
    """{column: (start, end)} of each heading, and each data line's cells checked against it."""
    header = lines[0]
    spans, pos = {}, 0
    for word in header.split():
        start = header.index(word, pos)
        spans[word] = (start, start + len(word))
        pos = start + len(word)
    return spans


def _aligned(lines):
    """Each row's non-empty cells right-aligned under right columns' headings, left-aligned under the others."""
    spans = _layout(lines)
    for line in lines[1:]:
        line = line.ljust(len(lines[0]))
        for col, (start, end) in spans.items():
            if col in RIGHT and line[end - 1] != " ":
                assert end == len(line) or line[end] == " ", (col, line)
            elif col not in RIGHT and line[start] != " ":
                assert start == 0 or line[start - 1] == " ", (col, line)
    return list(spans)


@needs_kernel_zram
def test_status_lays_out_like_zramctl(zramfs_env, kernel_zram):
    env = zramfs_env
    n, sysfs = kernel_zram
    with open(f"{sysfs}/comp_algorithm") as f:
        kernel_algorithms = {w.strip("[]") for w in f.read().split()}
    algorithm = next(a for a in ("lz4", "zstd", "lzo", "deflate") if a in kernel_algorithms)
    with open(f"{sysfs}/comp_algorithm", "w") as f:
        f.write(algorithm)
    with open(f"{sysfs}/disksize", "w") as f:
        f.write(str(64 * MiB))
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "64M", "--name", "zramt-ctl", "--algorithm", algorithm)
    try:
        for opts in ([], ["--bytes"], ["-o", "NAME,DISKSIZE,ALGORITHM,MOUNTPOINT"]):
            kernel = subprocess.run(
                ["zramctl", *opts, f"/dev/zram{n}"], capture_output=True, text=True, check=True
            )
            ours = env.ok("status", *opts, "zramt-ctl")
            k_lines, o_lines = kernel.stdout.splitlines(), ours.stdout.splitlines()
            assert len(k_lines) == len(o_lines) == 2, (kernel.stdout, ours.stdout)
            assert k_lines[0].split() == o_lines[0].split()
            assert _aligned(k_lines) == _aligned(o_lines)
            # Linux 6.15+ has no max_comp_streams, so zramctl leaves STREAMS
            # empty, and so does zramfs; MOUNTPOINT is empty alike.
            assert (len(k_lines[0]) - len(k_lines[1])) == (len(o_lines[0]) - len(o_lines[1]))
            for lines in (k_lines, o_lines):
                spans = _layout(lines)
                if "STREAMS" in spans:
                    start, end = spans["STREAMS"]
                    assert lines[1][start:end].strip() == "", lines
        kernel = subprocess.run(
            ["zramctl", "-o", "NAME,DISKSIZE,ALGORITHM", f"/dev/zram{n}"],
            capture_output=True,
            text=True,
            check=True,
        )
        ours = env.ok("status", "-o", "NAME,DISKSIZE,ALGORITHM", "zramt-ctl")
        assert (
            kernel.stdout.splitlines()[1].split()[1:]
            == ours.stdout.splitlines()[1].split()[1:]
            == ["64M", algorithm]
        )
        # --raw and -n: the same fields, one space apart.
        opts = ["--raw", "-n", "-b", "-o", "DISKSIZE,ALGORITHM,MOUNTPOINT"]
        kernel = subprocess.run(
            ["zramctl", *opts, f"/dev/zram{n}"], capture_output=True, text=True, check=True
        )
        assert (
            env.ok("status", *opts, "zramt-ctl").stdout
            == kernel.stdout
            == f"{64 * MiB} {algorithm} \n"
        )
        # STREAMS, raw: the same empty cell, whatever the CPUs.
        opts = ["--raw", "-n", "-o", "STREAMS,ALGORITHM,STREAMS"]
        kernel = subprocess.run(
            ["zramctl", *opts, f"/dev/zram{n}"], capture_output=True, text=True, check=True
        )
        assert env.ok("status", *opts, "zramt-ctl").stdout == kernel.stdout == f" {algorithm} \n"
        # The default columns' header, raw.
        kernel = subprocess.run(
            ["zramctl", "--raw", f"/dev/zram{n}"], capture_output=True, text=True, check=True
        )
        ours = env.ok("status", "--raw", "zramt-ctl").stdout
        assert ours.splitlines()[0] == kernel.stdout.splitlines()[0]
        # Both devices are empty: every cell but NAME is the same (ALGORITHM,
        # DISKSIZE, DATA, COMPR and TOTAL 0B, STREAMS and MOUNTPOINT empty).
        assert ours.splitlines()[1].split(" ")[1:] == kernel.stdout.splitlines()[1].split(" ")[1:]
    finally:
        env.ok("umount", mnt)


def test_reset_refuses_swap_without_force_then_takes_it_all_down(zramfs_env):
    env = zramfs_env
    env.ok("swapon", "zramt-rs", "--size", "16M")
    proc = env.cli("reset", "zramt-rs")
    assert proc.returncode == 5 and proc.stderr.count("\n") == 1, proc.stderr
    assert "in use (swap)" in proc.stderr
    assert env.device("zramt-rs")["mountpoint"] == "[SWAP]"
    env.ok("reset", "--force", "zramt-rs")
    assert env.status() == [] and env.leftovers() == {}
    proc = env.cli("reset", "zramt-rs")
    assert (proc.returncode, proc.stderr) == (
        6,
        "zramfs: error: no zramfs device named 'zramt-rs'\n",
    )


def test_reset_of_an_uninitialised_mount_removes_it(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--name", "zramt-ru")
    env.ok("reset", "zramt-ru")
    assert env.status() == [] and env.leftovers() == {}
    assert os.path.isdir(mnt)  # the user's directory stays


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (losetup, mount)")
def test_reset_of_a_device_whose_loop_is_mounted(zramfs_env):
    env = zramfs_env
    mnt, fs = os.path.join(env.root, "mnt"), os.path.join(env.root, "fs")
    os.mkdir(mnt)
    os.mkdir(fs)
    env.ok("mount", mnt, "--size", "16M", "--name", "zramt-rf")
    loop = subprocess.run(
        ["losetup", "-f", "--show", f"{mnt}/disk"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["mkfs.ext2", "-q", loop], check=True, capture_output=True)
        subprocess.run(["mount", loop, fs], check=True)
        assert env.device("zramt-rf")["mountpoint"] == fs  # where the device is used
        proc = env.cli("reset", "zramt-rf")
        assert (
            proc.returncode == 5
            and f"in use (mounted at {fs})" in proc.stderr
            and proc.stderr.count("\n") == 1
        )
        env.ok("reset", "zramt-rf", "--force")
        assert env.status() == [] and env.leftovers() == {}
        assert not os.path.ismount(fs) and os.path.isdir(mnt)
    finally:  # only if the test failed midway
        if os.path.ismount(fs):
            subprocess.run(["umount", fs], capture_output=True)
        if loop in env.loops():  # still ours (env.loops: backed by files under the test's root)
            subprocess.run(["losetup", "-d", loop], capture_output=True)
