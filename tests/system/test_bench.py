"""scripts/bench.py still works: one run at a tiny size (it measures nothing here).

The benchmark is never a timed test; this only proves that every target it
knows (the C libfuse memory server included) sets up, runs fio and the swap
workload under both settings, reports, cleans up, and puts the machine's
settings back.
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
    # bench.py names its zramfs devices zbench* and mounts its C server
    # under /run/zramfs-bench; other mounts are not its business.
    fuse = [
        m.mountpoint
        for m in mountinfo.mounts()
        if (m.fstype == "fuse.zramfs" and m.source.startswith("zbench"))
        or m.mountpoint.startswith("/run/zramfs-bench")
    ]
    return swaps, zrams, fuse, _memservers()


def _memservers():
    """Pids of C libfuse memory servers (bench.py's, found by their program name)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "fuse_memserver":
                    found.append(int(pid))
        except OSError:
            continue
    return found


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
    swaps, zrams, fuse, servers = _state()
    assert swaps == before[0]
    assert set(zrams) <= set(before[1])  # the kernel zram it hot_added is removed again
    assert set(fuse) <= set(before[2])
    assert set(servers) <= set(before[3])  # the C server is gone with its mount
    assert not os.path.exists("/run/zramfs-bench")  # its mountpoints' parent is removed too
    # It ran under the machine's settings, then under swapon's, and put the machine's back.
    assert tuning.current() == settings
    report = json.loads((out / "bench.json").read_text())
    assert list(report["meta"]["settings"]) == ["machine", "swapon"]
    assert report["meta"]["settings"]["machine"] == settings
    assert (
        report["meta"]["settings"]["swapon"]["/proc/sys/vm/page-cluster"]
        == tuning.SWAP_SETTINGS["/proc/sys/vm/page-cluster"]
    )
    assert list(report["results"]) == ["machine", "swapon"]
    for setting, results in report["results"].items():
        _check_suite(setting, results)
    # One ratio table per setting is printed, and a chart drawn for each (matplotlib is a test extra).
    assert r.stdout.count("| 4 KiB random read QD16 (IOPS) |") == 2
    assert r.stdout.count("| swap workload CPU, user + sys (s) |") == 2
    assert "\nmachine settings (" in r.stdout and "\nswapon settings (" in r.stdout
    for setting in ("machine", "swapon"):
        assert (out / f"bench-{setting}.png").stat().st_size > 0


def _check_suite(setting, results):
    expected = {"zramfs", "zramfs-pyfuse3", "memserver", "zramfs-wb"}
    if os.path.exists("/sys/class/zram-control"):
        expected.add("kernel")
    assert set(results) == expected, setting
    for target, res in results.items():
        where = (setting, target)
        if target == "zramfs-wb":
            # Swap only (with a backing file, which kernel zram cannot use).
            assert "fio" not in res, where
            assert res["swap"]["bad_pages"] == 0 and res["swap"]["exit_code"] == 0, where
            assert res["swap"]["rss"]["peak_rss"] > 0, where
            assert set(res["swap"]["watermark_stat"]) == {
                "triggered", "written", "waited", "failed", "compacted"
            }, where  # fmt: skip
            continue
        assert set(res["fio"]) >= {
            "seq_write_1m",
            "seq_read_1m",
            "randread_4k_qd1",
            "randwrite_4k_qd1",
            "randread_4k_qd16",
        }, where
        assert all(
            res["fio"][k]["iops"] > 0
            for k in res["fio"]
            if not k.startswith("mm_stat") and not k.startswith("rss")
        ), where
        # The write ran onto an emptied device each time: three passes where
        # discard empties it, one where it does not (pyfuse3).
        passes = res["fio"]["seq_write_1m"]["passes_mb_s"]
        assert len(passes) == (1 if target == "zramfs-pyfuse3" else 3), (where, passes)
        if target.startswith("zramfs"):
            assert res["fio"]["rss_idle"]["rss"] > 0, where
        if target == "memserver":
            assert "swap" not in res, where  # the C server is a fio target only
            continue
        assert res["swap"]["bad_pages"] == 0, where
        assert res["swap"]["exit_code"] == 0, where
        # The C workload reports its own CPU time.
        assert res["swap"]["user_s"] >= 0 and res["swap"]["sys_s"] >= 0, where
        if target != "kernel":
            assert res["swap"]["rss"]["peak_rss"] > 0, where
        # The workload pushed pages out, and the sampler saw both sides.
        slots = res["swap"]["slots"]
        assert slots["peak_slots_bytes"] > 0 and slots["peak_stored_bytes"] > 0, where
        assert slots["samples"], where


@pytest.mark.parametrize(
    "marker",
    [
        "zramfs: 1 MiB sequential write",
        "C libfuse memory server: 4 KiB random read QD1",
        "zramfs: swap workload",
    ],
)
def test_bench_cleans_up_after_ctrl_c(tmp_path, marker):
    # Ctrl-C while a zramfs device is set up and fio, or the swap workload in
    # its cgroup, is running: everything the run made is gone afterwards, and
    # the machine's settings are back.
    before = _state()
    settings = tuning.current()
    with subprocess.Popen(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "bench.py"),
            "--quick",
            "--out",
            str(tmp_path / "out"),
        ],
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
    assert not glob.glob("/sys/fs/cgroup/memory/zramfs-bench-*") and not glob.glob(
        "/sys/fs/cgroup/zramfs-bench-*"
    )


def test_bench_refuses_a_swap_device_smaller_than_the_working_set(tmp_path):
    before = _state()
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "bench.py"),
            "--quick",
            "--swap-disksize-mib",
            "47",
            "--out",
            str(tmp_path / "out"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bench.py: error: --swap-disksize-mib must be at least --swap-mib (48)"
    ]
    assert _state() == before
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "env, args, message",
    [
        # No cc on PATH (the tools bench.py checks first are skipped by --no-fio).
        (
            {"PATH": "{tmp}"},
            ["--no-fio"],
            "cannot build swap_workload.c: no C compiler (cc); scripts/setup.sh installs gcc",
        ),
        # pkg-config finds no fuse3.
        (
            {"PKG_CONFIG_LIBDIR": "{tmp}", "PKG_CONFIG_PATH": ""},
            ["--no-swap", "--targets", "memserver"],
            "cannot build fuse_memserver.c: pkg-config finds no fuse3 (apt-get install pkg-config libfuse3-dev)",
        ),
    ],
)
def test_bench_says_in_one_line_when_it_cannot_build(tmp_path, env, args, message):
    before = _state()
    settings = tuning.current()
    env = dict(os.environ, **{k: v.format(tmp=tmp_path) for k, v in env.items()})
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "bench.py"),
            "--quick",
            *args,
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if not line.startswith("[")] == [
        f"bench.py: error: {message}"
    ]
    assert _state() == before
    assert tuning.current() == settings
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    not os.path.exists(tuning.HALT_POLL_NS), reason="no haltpoll driver (not a KVM guest)"
)
def test_bench_nopoll_suite_turns_halt_polling_off_and_puts_it_back(tmp_path):
    before = _state()
    settings = tuning.current()
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "bench.py"),
            "--quick",
            "--no-swap",
            "--targets",
            "memserver",
            "--settings",
            "nopoll",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["meta"]["settings"]["nopoll"][tuning.HALT_POLL_NS] == "0"
    assert report["results"]["nopoll"]["memserver"]["fio"]["randread_4k_qd1"]["iops"] > 0
    assert tuning.current() == settings
    assert _state() == before
