"""The daemon dies or is upgraded and no page is lost: SIGKILL under swap and under fio,
`zramfs restart` under swap, and what happens when the supervisor itself is killed.

Each test drives real devices (swapon, a loop device, fio, a memory cgroup);
kills go to the daemon the record names, and the next kill waits until the
supervisor's new daemon serves, plus a random pause, so kills land in every
phase of its work (fill, random touches, the final check; fio's writes and
its verify pass).
"""

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest
from memcg import memory_cgroup

from tests._support.system import attach, detach, swap_workload_argv

MiB = 1 << 20

# The working set is 3x the cgroup's limit, so at least two thirds of it
# lives in zramfs at any time and random touches keep swapping pages in.
MEMCG_LIMIT = 64 * MiB
WORKING_SET_MIB = 192
# Enough touches that one run outlasts several kills; runs repeat until
# every kill has landed.
TOUCHES = 150_000
KILLS = 20
# After a new daemon serves, the next kill comes within this many seconds.
MAX_PAUSE_S = 0.6
PRIORITY = 32767
SIGBUS = -signal.SIGBUS


def _swapon(env, name):
    env.ok("swapon", name, "--size", "512M", "--priority", str(PRIORITY))
    row = env.device(name)
    return row["loop"], row["dir"]


def _swap_while(env, disrupt, count):
    """Run the swap workload in the cgroup, again and again, until `disrupt()`
    has been called `count` times while one ran; return every run's result."""
    results = []
    done = 0
    with memory_cgroup(MEMCG_LIMIT) as cg:
        while done < count:
            proc = cg.popen(swap_workload_argv(WORKING_SET_MIB, TOUCHES, "--rewrite", "0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
            # Let the fill push pages out before the first disruption.
            time.sleep(random.uniform(0.5, 1.5))
            while proc.poll() is None and done < count:
                disrupt()
                done += 1
                time.sleep(random.uniform(0, MAX_PAUSE_S))
            out, err = proc.communicate(timeout=600)
            results.append((proc.returncode, out, err))
    return results


def _check_runs(results):
    for code, out, err in results:
        assert code != SIGBUS, f"the workload got SIGBUS: {err}"
        assert code == 0, (code, out, err)
        report = json.loads(out)
        assert report["bad_pages"] == 0 and report["pages"] == WORKING_SET_MIB * 256


def test_swap_survives_20_daemon_kills(zramfs_env):
    env = zramfs_env
    loop, mountpoint = _swapon(env, "zramt-kill")
    times = []
    results = _swap_while(env, lambda: times.append(env.kill_daemon("zramt-kill")), KILLS)
    _check_runs(results)
    record = env.record("zramt-kill")
    assert record["restarts"] == KILLS
    # zramfs really held the workload's pages through all of it.
    assert env.mm_stat(mountpoint)[0] > 0
    print(f"\n{KILLS} kills, {len(results)} workload runs; kill to serving: "
          f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")  # fmt: skip
    env.ok("swapoff", "zramt-kill")
    assert env.leftovers() == {}


def test_restart_under_swap_loses_nothing(zramfs_env):
    env = zramfs_env
    _swapon(env, "zramt-up")
    answers = []

    def restart():
        proc = env.ok("restart", "zramt-up")
        answers.append(proc.stdout)

    _check_runs(_swap_while(env, restart, 5))
    record = env.record("zramt-up")
    assert record["restarts"] == 5
    assert answers[-1] == f"zramt-up: restarted, daemon pid {record['daemon_pid']} (restart 5)\n"
    env.ok("swapoff", "zramt-up")
    assert env.leftovers() == {}


def test_fio_verify_survives_daemon_kills(zramfs_env, tmp_path):
    env = zramfs_env
    mnt = os.path.join(env.root, "mnt")
    os.mkdir(mnt)
    env.ok("mount", mnt, "--size", "256M", "--name", "zramt-fio")
    loop = attach(f"{mnt}/disk")
    stop = threading.Event()
    kills = []

    def killer():
        while not stop.is_set() and len(kills) < KILLS:
            stop.wait(random.uniform(0.2, 0.2 + MAX_PAUSE_S))
            if not stop.is_set():
                kills.append(env.kill_daemon("zramt-fio"))

    fio = [
        "fio", "--name=verify", f"--filename={loop}", "--direct=1", "--ioengine=libaio",
        "--iodepth=32", "--rw=randwrite", "--bs=4k", "--size=192M", "--verify=crc32c",
        "--do_verify=1", "--verify_fatal=1", "--buffer_compress_percentage=50",
        "--refill_buffers", "--output-format=json", "--verify_state_save=0",
    ]  # fmt: skip
    thread = threading.Thread(target=killer)
    thread.start()
    runs = []
    try:
        while len(kills) < KILLS:
            proc = subprocess.run([*fio, f"--randseed={len(runs) + 1}"], capture_output=True,
                                  text=True, timeout=300, cwd=tmp_path)  # fmt: skip
            runs.append(proc)
            assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
            (job,) = json.loads(proc.stdout)["jobs"]
            assert job["error"] == 0
            assert job["write"]["io_bytes"] == 192 * MiB and job["read"]["io_bytes"] == 192 * MiB
    finally:
        stop.set()
        thread.join()
    assert len(kills) >= KILLS and env.record("zramt-fio")["restarts"] == len(kills)
    detach(env, loop)
    env.ok("umount", mnt)
    assert env.leftovers() == {}


def test_supervisor_killed_the_daemon_serves_on_and_its_death_is_eio_not_a_hang(zramfs_env):
    env = zramfs_env
    loop, mountpoint = _swapon(env, "zramt-sup")
    record = env.record("zramt-sup")
    os.kill(record["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while env.supervisors() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not env.supervisors()
    # Still served by the daemon alone.
    with open(os.path.join(mountpoint, "disksize")) as f:
        assert f.read() == str(512 * MiB) + "\n"
    assert env.device("zramt-sup")["backend"] == "dev"
    # Nobody restarts it now: its death is an error at once, as without a supervisor.
    proc = env.cli("restart", "zramt-sup")
    assert proc.returncode == 1 and "is gone" in proc.stderr
    os.kill(record["daemon_pid"], signal.SIGKILL)
    start = time.monotonic()
    dd = subprocess.run(
        ["dd", f"if={loop}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert dd.returncode != 0 and "Input/output error" in dd.stderr
    assert time.monotonic() - start < 10
    with pytest.raises(OSError) as info:
        open(os.path.join(mountpoint, "disksize")).close()
    assert info.value.errno == 107  # ENOTCONN: the connection is gone
    env.ok("swapoff", "zramt-sup")
    assert env.leftovers() == {}


def test_swapoff_with_the_supervisor_killed_stops_the_daemon(zramfs_env):
    env = zramfs_env
    _swapon(env, "zramt-sup2")
    record = env.record("zramt-sup2")
    os.kill(record["pid"], signal.SIGKILL)
    env.ok("swapoff", "zramt-sup2")
    assert env.leftovers() == {}


def test_reset_force_with_a_killed_daemon_mid_restart_leaves_nothing(zramfs_env):
    env = zramfs_env
    _swapon(env, "zramt-rst")
    env.kill_daemon("zramt-rst")
    env.ok("reset", "zramt-rst", "--force")
    assert env.leftovers() == {}
