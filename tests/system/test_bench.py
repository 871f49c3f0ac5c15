"""scripts/bench.py still works: one run at a tiny size (it measures nothing here).

The benchmark is never a timed test; this only proves that every target it
knows sets up, runs fio and the swap workload, reports, and cleans up.
"""

import glob
import json
import os
import subprocess
import sys

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
        assert res["swap"]["bad_pages"] == 0, target
        assert res["swap"]["exit_code"] == 0, target
        if target != "kernel":
            assert res["swap"]["rss"]["peak_rss"] > 0, target
    # The ratio table is printed, and the chart drawn (matplotlib is a test extra).
    assert "| 4 KiB random read QD16 (IOPS) |" in r.stdout
    assert (out / "bench.png").stat().st_size > 0
