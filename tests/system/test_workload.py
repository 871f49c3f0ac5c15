"""scripts/swap_workload.c (built by scripts/swap_workload.py) and scripts/memcg.py themselves:
the checker catches bad pages, bad input and a missing compiler get one line, cgroups go away."""

import json
import os
import subprocess
import sys

import memcg
import pytest
import swap_workload

from tests._support.system import SCRIPTS


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    return swap_workload.compile_c("swap_workload", str(tmp_path_factory.mktemp("build")))


def _run(workload, *args):
    proc = subprocess.run([workload, *map(str, args)], capture_output=True, text=True)
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr


def test_workload_passes_on_plain_memory(workload):
    code, result, _err = _run(
        workload, "--mib", 4, "--touches", 5000, "--rewrite", 0.5, "--seed", 3
    )
    assert code == 0
    assert result["bad_pages"] == 0 and result["pages"] == 4 * (1 << 20) // os.sysconf(
        "SC_PAGE_SIZE"
    )
    assert 0 < result["rewrites"] < 5000
    # Its own CPU time is reported next to the wall time.
    assert result["user_s"] >= 0 and result["sys_s"] >= 0 and result["wall_s"] > 0


def test_workload_catches_a_stale_page(workload):
    """A page that holds the next version while the table says the old one
    (what a lost swap write looks like) is counted, once, and fails the run."""
    code, result, _err = _run(workload, "--mib", 1, "--touches", 0, "--stale-page", 7)
    assert code == 1
    assert result["bad_pages"] == 1


def test_pages_compress_about_2_to_1_and_differ(workload):
    import lz4.block

    page_size = os.sysconf("SC_PAGE_SIZE")
    data = subprocess.run([workload, "--dump", "100"], capture_output=True, check=True).stdout
    pages = [data[i : i + page_size] for i in range(0, len(data), page_size)]
    assert len(pages) == 300  # 100 pages, versions 0-2
    sizes = [len(lz4.block.compress(p, store_size=False)) for p in pages]
    ratio = sum(sizes) / (page_size * len(sizes))
    assert 0.45 < ratio < 0.6
    assert len(set(pages)) == 300


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mib", "0"], "--mib must be at least 1"),
        (["--rewrite", "2"], "--rewrite must be between 0 and 1"),
        (["--touches", "x"], "option values must be integers"),
        (["--bogus", "1"], "unknown option"),
    ],
)
def test_workload_bad_arguments_get_one_line(workload, args, message):
    code, result, err = _run(workload, *args)
    assert code == 2 and result is None
    assert len(err.strip().splitlines()) == 1 and message in err


def test_workload_cli_builds_runs_and_passes_the_exit_code():
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(SCRIPTS, "swap_workload.py"),
            "--mib",
            "2",
            "--touches",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {
        "wall_s",
        "user_s",
        "sys_s",
        "pages",
        "touches",
        "bad_pages",
    }


def test_workload_cli_without_a_compiler_says_so_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "swap_workload.py"), "--mib", "2"],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "swap_workload.py: error: cannot build swap_workload.c: no C compiler (cc); scripts/setup.sh installs gcc"
    ]


def test_memory_cgroup_limits_and_is_removed():
    with memcg.memory_cgroup(32 << 20) as cg:
        path = cg.path
        assert os.path.isdir(path)
        # 8 MiB fits under 32 MiB; the child really ran inside the cgroup.
        proc = cg.run(
            [sys.executable, "-c", "print(open('/proc/self/cgroup').read())"],
            capture_output=True,
            text=True,
        )
        assert os.path.basename(path) in proc.stdout
        sleeper = cg.popen(["sleep", "60"])
        assert cg.procs() == [sleeper.pid]
    # Removed on exit, even with a process still inside (killed first).
    assert not os.path.exists(path)
    assert sleeper.wait(timeout=10) == -9


def test_memory_cgroup_removed_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with memcg.memory_cgroup(32 << 20) as cg:
            path = cg.path
            raise RuntimeError("boom")
    assert not os.path.exists(path)
