"""`zramfs mount`/`umount`/`status` for real: options reach the device, --foreground, status's table."""

import os
import signal
import subprocess
import sys
import time

import allocator

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
    env.ok(
        "mount",
        mnt,
        "--size",
        "64M",
        "--name",
        "zramt-m",
        "--algorithm",
        "zstd",
        "--mem-limit",
        "8M",
    )
    with open(f"{mnt}/comp_algorithm") as f:
        assert "[zstd]" in f.read().split()
    with open(f"{mnt}/mem_limit") as f:
        assert int(f.read()) == 8 * MiB
    with open(f"{mnt}/disksize") as f:
        assert int(f.read()) == 64 * MiB
    # 1 MiB of text-like data, so DATA, COMPR and TOTAL have something to show.
    with open(f"{mnt}/disk", "r+b") as f:
        f.write(
            b"".join(b"line %08d of some compressible text\n" % i for i in range(27000))[: 1 << 20]
        )
    mm_stat = env.mm_stat(mnt)

    out = env.ok("status").stdout.splitlines()
    header = out[0].split()
    assert header == [
        "NAME",
        "ALGORITHM",
        "DISKSIZE",
        "DATA",
        "COMPR",
        "TOTAL",
        "STREAMS",
        "MOUNTPOINT",
    ]
    (row,) = [line.split() for line in out[1:] if line.split()[0] == "zramt-m"]
    assert row[:4] == ["zramt-m", "zstd", "64M", "1M"]  # orig_data_size: 1M
    # STREAMS empty (as zramctl on 6.15+), MOUNTPOINT empty: no loop device uses it.
    assert len(row) == 6
    (line,) = env.ok(
        "status", "zramt-m", "--raw", "-n", "-b", "-o", "NAME,DISKSIZE,DIR,BACKEND,DISCARD"
    ).stdout.splitlines()
    assert line.split(" ") == ["zramt-m", str(64 * MiB), mnt.replace(" ", "\\x20"), "dev", "yes"]
    proc = env.cli("status", "zramt-nope")
    assert (proc.returncode, proc.stderr) == (
        6,
        "zramfs: error: no zramfs device named 'zramt-nope'\n",
    )

    row = env.device("zramt-m")
    assert (row["data"], row["compr"], row["total"]) == tuple(mm_stat[:3])
    assert row["compr"] < row["data"] // 2

    env.ok("umount", mnt)
    assert env.leftovers() == {}
    assert os.path.isdir(mnt)  # umount leaves the user's own directory alone


def _foreground(env, mnt, name):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zramfs",
            "mount",
            mnt,
            "--size",
            "64M",
            "--name",
            name,
            "--foreground",
        ],
        env=env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: any(r["name"] == name and r["data"] is not None for r in env.status()))
    # --foreground execs the supervisor: this process holds the device, its child serves it.
    assert list(env.supervisors()) == [proc.pid] and len(env.daemons()) == 1
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
    assert (proc.returncode, proc.stderr) == (
        6,
        f"zramfs: error: {env.root} is not a zramfs mount\n",
    )


def test_two_auto_named_mounts_at_once_get_two_names(zramfs_env):
    env = zramfs_env
    for attempt in range(3):
        mnts = [os.path.join(env.root, f"m{attempt}-{i}") for i in range(2)]
        for mnt in mnts:
            os.mkdir(mnt)
        procs = [env.start("mount", mnt, "--size", "16M") for mnt in mnts]
        results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        assert [r[0] for r in results] == [0, 0], results
        names = sorted(out.split(":")[0] for _, out, _ in results)
        assert names == ["zram0", "zram1"]
        for mnt in mnts:
            env.ok("umount", mnt)
        assert env.leftovers() == {}


def test_a_mount_is_quiet_and_its_daemon_logs_to_its_file(zramfs_env):
    """Success: one line on stdout, nothing on stderr (issue 10: three daemon lines came through)."""
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    proc = env.ok("mount", mnt, "--size", "16M", "--name", "zramt-q")
    assert (proc.stdout, proc.stderr) == (f"zramt-q: 16 MiB lz4, mounted at {mnt}\n", "")
    with open(os.path.join(env.run_dir, ".zramt-q", "daemon.log")) as f:
        log = f.read()
    assert f"zramfs-daemon: serving {mnt} (16777216 bytes, lz4)\n" in log
    # The log says which pool runs: the one this interpreter imports too.
    compiled = "compiled with mypyc" if allocator.COMPILED else "from source"
    assert f"zramfs-daemon: allocator: {compiled}\n" in log
    assert env.device("zramt-q")["backend"] == "dev"  # from the daemon's record
    proc = env.ok("umount", mnt)
    assert (proc.stdout, proc.stderr) == ("", "")
    assert env.leftovers() == {}
    assert not os.path.exists(env.run_dir)


# Modules the daemon imports (and the CLI, for the first group).  Each copy
# planted here records that it was imported; none may ever be.
PLANTED_FOR_THE_DAEMON = ("trio", "attrs", "sniffio", "outcome", "sortedcontainers", "idna")
PLANTED_FOR_BOTH = ("zramfs", "allocator", "lz4", "zstandard", "ctypes", "json")


def _plant(directory, names, marker):
    for name in names:
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(
                f"open({marker!r}, 'a').write({name!r} + ' imported from the working directory\\n')\n"
            )


def test_nothing_is_imported_from_the_working_directory_or_pythonpath(zramfs_env):
    """Issue 10: the daemon ran `python -m` in the caller's directory, so a planted trio.py ran as root.

    The installed `zramfs` command is run from a directory full of planted
    modules, then with PYTHONPATH pointing there.  With PYTHONPATH the
    command's own interpreter reads it before zramfs runs (that is Python's
    contract with whoever sets it; sudo clears it), so there only modules
    the CLI never imports are planted: the daemon must not see them.
    """
    env = zramfs_env
    plant = os.path.join(env.root, "plant")
    os.mkdir(plant)
    marker = os.path.join(env.root, "marker")
    zramfs_command = os.path.join(os.path.dirname(sys.executable), "zramfs")
    assert os.access(zramfs_command, os.X_OK), (
        "the zramfs console script is not installed in this venv"
    )
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)

    def run(*args, pythonpath):
        proc = subprocess.run(
            [zramfs_command, *args],
            env={**env.env, "PYTHONPATH": pythonpath},
            cwd=plant,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert not os.path.exists(marker), open(marker).read()

    def one_round(pythonpath):
        run("mount", mnt, "--size", "16M", "--name", "zramt-cwd", pythonpath=pythonpath)
        run("swapon", "zramt-cwd2", "--size", "16M", "--priority", "5", pythonpath=pythonpath)
        run("swapoff", "zramt-cwd2", pythonpath=pythonpath)
        run("umount", mnt, pythonpath=pythonpath)

    _plant(plant, PLANTED_FOR_THE_DAEMON + PLANTED_FOR_BOTH, marker)
    one_round(pythonpath="")
    for name in PLANTED_FOR_BOTH:
        os.unlink(os.path.join(plant, f"{name}.py"))
    one_round(pythonpath=plant)
    assert env.leftovers() == {}
