"""Swap through zramfs with a backing file and the watermark (beyond zram):
under memory pressure in a cgroup, every page comes back right, and the
pool (mm_stat's mem_used_total) stays under the watermark plus a margin
the whole time, while what does not fit goes to the backing file.

The workload is test_swap.py's: a process in a memory cgroup limited to
MEMCG_LIMIT touches WORKING_SET_MIB of pages that compress about 2:1, so
~160 MiB of them live in swap, ~80 MiB of pool without a watermark.  Here
the watermark is WATERMARK: the thread writes the coldest pages back from
WATERMARK on, and a write that would take the pool past the cap, an eighth
above it (zramfs._watermark), waits for that writeback instead.
mem_used_max is the exact peak (the device updates it on every store), so
"throughout" is checked exactly, besides a sampler that watches
mem_used_total.
"""

import os

from tests._support.system import swap_under_pressure

MiB = 1 << 20
WORKING_SET_MIB = 256
MEMCG_LIMIT = 96 * MiB
TOUCHES = 100_000
PRIORITY = 32767
WATERMARK = 32 * MiB
# The margin: writes wait an eighth above the watermark (WM_CAP_DEN).
CAP = WATERMARK + WATERMARK // 8


def test_swap_with_a_backing_file_stays_under_the_watermark(zramfs_env, tmp_path):
    env = zramfs_env
    backing = tmp_path / "backing"
    env.ok(
        "swapon", "zramt0", "--size", "512M", "--priority", str(PRIORITY),
        "--backing-dev", str(backing),
        "--writeback-watermark", str(WATERMARK),
    )  # fmt: skip
    mountpoint = env.device("zramt0")["dir"]
    with open(os.path.join(mountpoint, "writeback_watermark")) as f:
        assert f.read() == f"{WATERMARK}\n"

    peaks = {"mem_used_total": 0}

    def sample():
        peaks["mem_used_total"] = max(peaks["mem_used_total"], env.mm_stat(mountpoint)[2])

    report = swap_under_pressure(
        MEMCG_LIMIT, WORKING_SET_MIB, TOUCHES, sample, interval=0.05, timeout=900
    )
    mm = env.mm_stat(mountpoint)
    with open(os.path.join(mountpoint, "writeback_watermark_stat")) as f:
        triggered, written, waited, failed, compacted = map(int, f.read().split())
    with open(os.path.join(mountpoint, "io_stat")) as f:
        failed_writes = int(f.read().split()[1])
    print(
        f"\nworkload {report}; peak mem_used_total sampled {peaks['mem_used_total'] / MiB:.1f} MiB, "
        f"mem_used_max {mm[4] / MiB:.1f} MiB; watermark stat {triggered} {written} {waited} "
        f"{failed} {compacted}"
    )
    assert report["bad_pages"] == 0
    assert report["pages"] == WORKING_SET_MIB * 256
    assert failed_writes == 0 and failed == 0
    # Pages did leave RAM: most of what was swapped out went to the file.
    assert triggered >= 1 and written * 4096 >= 64 * MiB
    assert os.stat(backing).st_blocks * 512 > 0
    # Under the watermark plus its margin, throughout.
    assert peaks["mem_used_total"] <= CAP
    assert mm[4] <= CAP

    env.ok("swapoff", "zramt0")
    assert env.leftovers() == {}
