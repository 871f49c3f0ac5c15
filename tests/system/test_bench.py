"""scripts/bench.py still works: one run at a tiny size (it measures nothing here).

The benchmark is never a timed test; this only proves that every target it
knows sets up, runs fio and the swap workload, reports, and cleans up.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zramfs import mountinfo, tuning

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state():
    with open("/proc/swaps") as f:
        swaps = f.read().splitlines()[1:]
    zrams = sorted(glob.glob("/sys/block/zram*"))
    # bench.py names its zramfs devices zbench*; other mounts are not its business.
    fuse = [m.mountpoint for m in mountinfo.mounts() if m.fstype == "fuse.zramfs" and m.source.startswith("zbench")]
    return swaps, zrams, fuse


def test_bench_quick_runs_every_target_and_cleans_up(tmp_path):
    before = _state()
    settings = tuning.current()
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    swaps, zrams, fuse = _state()
    assert swaps == before[0]
    assert set(zrams) <= set(before[1])  # the kernel zram it hot_added is removed again
    assert set(fuse) <= set(before[2])
    assert not os.path.exists("/run/zramfs-bench")  # its mountpoints' parent is removed too
    # It ran under swapon's settings and put the machine's back.
    assert tuning.current() == settings
    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["settings"]["/proc/sys/vm/page-cluster"] == tuning.SWAP_SETTINGS["/proc/sys/vm/page-cluster"]
    results = report["results"]
    expected = {"zramfs", "zramfs-pyfuse3"}
    if os.path.exists("/sys/class/zram-control"):
        expected.add("kernel")
    assert set(results) == expected
    for target, res in results.items():
        assert set(res["fio"]) >= {"seq_write_1m", "seq_read_1m", "randread_4k_qd1",
                                   "randwrite_4k_qd1", "randread_4k_qd16"}, target
        assert all(res["fio"][k]["iops"] > 0 for k in res["fio"] if not k.startswith("mm_stat")
                   and k != "rss"), target
        # The write ran onto an emptied device each time: three passes where
        # discard empties it, one where it does not (pyfuse3).
        passes = res["fio"]["seq_write_1m"]["passes_mb_s"]
        assert len(passes) == (1 if target == "zramfs-pyfuse3" else 3), (target, passes)
        assert res["swap"]["bad_pages"] == 0, target
        assert res["swap"]["exit_code"] == 0, target
        if target != "kernel":
            assert res["swap"]["rss"]["peak_rss"] > 0, target
        # The workload pushed pages out, and the sampler saw both sides.
        slots = res["swap"]["slots"]
        assert slots["peak_slots_bytes"] > 0 and slots["peak_stored_bytes"] > 0, target
        assert slots["samples"], target
    # The ratio table is printed, and the chart drawn (matplotlib is a test extra).
    assert "| 4 KiB random read QD16 (IOPS) |" in r.stdout
    assert "| swap: peak slots in use / stored (MiB) |" in r.stdout
    assert (out / "bench.png").stat().st_size > 0


@pytest.mark.parametrize("marker", ["zramfs: 1 MiB sequential write", "zramfs: swap workload"])
def test_bench_cleans_up_after_ctrl_c(tmp_path, marker):
    # Ctrl-C while a zramfs device is set up and fio, or the swap workload in
    # its cgroup, is running: everything the run made is gone afterwards, and
    # the machine's settings are back.
    before = _state()
    settings = tuning.current()
    with subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick", "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell may start us with SIGINT ignored, and the child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        try:
            for line in proc.stderr:
                if marker in line:
                    time.sleep(0.3)  # inside the step, not at its start
                    proc.send_signal(signal.SIGINT)
                    break
            else:
                pytest.fail(f"bench.py never reached {marker!r}")
            rest = proc.stderr.read()
            assert proc.wait(timeout=120) == 130, rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "interrupted: cleaned up" in rest
    assert _state() == before
    assert tuning.current() == settings
    assert not os.path.exists("/run/zramfs-bench")
    with open("/proc/swaps") as f:
        assert len(f.read().splitlines()) == 1
    assert not glob.glob("/sys/fs/cgroup/memory/zramfs-bench-*") and not glob.glob("/sys/fs/cgroup/zramfs-bench-*")


def test_bench_refuses_a_swap_device_smaller_than_the_working_set(tmp_path):
    before = _state()
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "bench.py"), "--quick",
         "--swap-disksize-mib", "47", "--out", str(tmp_path / "out")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bench.py: error: --swap-disksize-mib must be at least --swap-mib (48)"]
    assert _state() == before
    assert not (tmp_path / "out").exists()
