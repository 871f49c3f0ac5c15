"""scripts/swap_workload.py and scripts/memcg.py themselves: the checker catches bad pages, cgroups go away."""

import json
import os
import subprocess
import sys

import pytest

from tests._support.system import SCRIPTS

import memcg
import swap_workload


def test_workload_passes_on_plain_memory():
    result = swap_workload.run(mib=4, touches=5000, rewrite=0.5, seed=3)
    assert result["bad_pages"] == 0 and result["pages"] == 1024
    assert result["rewrites"] > 0


def test_workload_catches_a_stale_page(monkeypatch):
    """A page that comes back with an old generation is counted (what a lost swap write looks like)."""
    content = swap_workload.Pages.content
    calls = []

    def stale_for_page_7(self, index, generation):
        # Page 7 is written with generation 0 (first call), but checked as
        # if it had been rewritten (generation 1).
        if index == 7:
            calls.append(generation)
            if len(calls) > 1:
                generation += 1
        return content(self, index, generation)

    monkeypatch.setattr(swap_workload.Pages, "content", stale_for_page_7)
    result = swap_workload.run(mib=1, touches=0, rewrite=0.0, seed=3)
    assert result["bad_pages"] == 1


def test_pages_compress_about_2_to_1_and_differ():
    import lz4.block

    pages = swap_workload.Pages(1)
    sizes = [len(lz4.block.compress(pages.content(i, g), store_size=False)) for i in range(100) for g in range(3)]
    ratio = sum(sizes) / (4096 * len(sizes))
    assert 0.45 < ratio < 0.6
    assert len({pages.content(i, g) for i in range(100) for g in range(3)}) == 300


def test_workload_cli_exit_code_and_json():
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "swap_workload.py"), "--mib", "2", "--touches", "100"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {"wall_s", "pages", "touches", "bad_pages"}


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
