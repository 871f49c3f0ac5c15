"""`zramfs mount --foreground` is supervised: its daemon is killed under I/O and
the device comes back with every byte, `zramfs restart` works, and SIGTERM
(or one Ctrl-C) still ends it cleanly.

The foreground process is the supervisor (what a terminal or systemd sees);
the daemon is its child.  A writer thread keeps O_DIRECT writes of random
data going into `disk` while the daemon is killed with SIGKILL, and every
block is read back afterwards.
"""

import hashlib
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time

MiB = 1 << 20
SIZE = 64 * MiB
CHUNK = MiB
KILLS = 5


def _foreground(env, mnt, name, **popen):
    proc = subprocess.Popen(
        [sys.executable, "-m", "zramfs", "mount", mnt, "--size", "128M", "--name", name,
         "--foreground"],
        env={k: v for k, v in env.env.items() if k != "NOTIFY_SOCKET"}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while (env.record(name) or {}).get("daemon_pid") is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the foreground mount did not serve"
        time.sleep(0.02)
    assert list(env.supervisors()) == [proc.pid]
    assert env.record(name)["pid"] == proc.pid
    return proc


def _aligned(size):
    """A page-aligned buffer (O_DIRECT) of `size` bytes."""
    return mmap.mmap(-1, size)


def test_foreground_daemon_killed_under_io_loses_nothing_then_sigterm_ends_it(zramfs_env):
    env = zramfs_env
    mnt = os.path.join(env.root, "fg")
    os.mkdir(mnt)
    proc = _foreground(env, mnt, "zramt-fgk")
    disk = os.path.join(mnt, "disk")
    rng = random.Random(15)
    # Half random (incompressible), half text-like: both kinds of stored object.
    chunks = [
        rng.randbytes(CHUNK // 2) + bytes(rng.choice(b"abcd ") for _ in range(CHUNK // 2))
        for _ in range(8)
    ]
    expected = {}
    errors = []
    stop = threading.Event()

    def writer():
        buf = _aligned(CHUNK)
        fd = os.open(disk, os.O_WRONLY | os.O_DIRECT)
        try:
            n = 0
            while not stop.is_set() or n < SIZE // CHUNK:
                i = n % (SIZE // CHUNK)
                data = chunks[(n * 7 + i) % len(chunks)]
                buf[:] = data
                os.pwrite(fd, buf, i * CHUNK)
                expected[i] = hashlib.sha256(data).hexdigest()
                n += 1
        except OSError as e:
            errors.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(KILLS):
            time.sleep(random.uniform(0.1, 0.5))
            env.kill_daemon("zramt-fgk")
            assert proc.poll() is None, "the foreground process ended with its daemon"
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not errors, errors
    assert env.record("zramt-fgk")["restarts"] == KILLS
    buf = _aligned(CHUNK)
    fd = os.open(disk, os.O_RDONLY | os.O_DIRECT)
    try:
        for i in range(SIZE // CHUNK):
            assert os.preadv(fd, [buf], i * CHUNK) == CHUNK
            assert hashlib.sha256(buf).hexdigest() == expected[i], f"MiB {i} differs"
    finally:
        os.close(fd)
    # `zramfs restart` reaches a foreground mount's supervisor as any other.
    assert env.ok("restart", "zramt-fgk").stdout.startswith("zramt-fgk: restarted, daemon pid ")
    assert env.record("zramt-fgk")["restarts"] == KILLS + 1
    # And the supervisor's own stop: SIGTERM unmounts, exit 0, nothing left.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    log = proc.stderr.read()
    proc.stderr.close()
    assert f"starting it again (restart {KILLS})" in log, log
    assert env.leftovers() == {}


def test_foreground_sigint_once_unmounts_cleanly(zramfs_env):
    """A Ctrl-C reaches the supervisor alone (the daemon has its own process
    group), which passes it on once: a clean unmount, not an abort."""
    env = zramfs_env
    mnt = os.path.join(env.root, "fg")
    os.mkdir(mnt)
    # Its own session and process group, as a shell's foreground job has.
    proc = _foreground(env, mnt, "zramt-fgi", start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    log = proc.stderr.read()
    proc.stderr.close()
    assert "aborting" not in log, log
    assert env.leftovers() == {}
