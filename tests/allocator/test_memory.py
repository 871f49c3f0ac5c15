"""RSS follows the pages in use, with and without mlockall.

Each case runs in a fresh interpreter so that nothing else in the test
process moves its RSS.  The mlockall case locks the way the daemon does:
MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT, under which MADV_DONTNEED would
refuse to free anything.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Both scripts start the same way: lock like the daemon when asked, and
# measure memory exactly.  /proc/self/status's RSS fields are per-CPU
# counters that may lag by hundreds of KiB on recent kernels;
# smaps_rollup walks the page tables.  Anonymous is the heap (the pool's
# tables among it), Pss_Shmem the arena's memfd pages.
PROLOGUE = textwrap.dedent("""
    import ctypes, os, sys
    from array import array

    MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
    if sys.argv[1] == "mlock":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
            sys.exit(f"mlockall: {os.strerror(ctypes.get_errno())}")

    from allocator import Pool

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss():
        with open("/proc/self/smaps_rollup") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line[:20])
        return sum(int(fields[k].split()[0]) * 1024 for k in ("Anonymous", "Pss_Shmem"))
""")

SCRIPT = PROLOGUE + textwrap.dedent("""
    N = 30000                       # ~65 MiB of objects
    sizes = (100, 1670, 3000, 4096)  # tiny, crossing, large, huge
    data = {s: os.urandom(s) for s in sizes}
    hs = array("Q", bytes(8 * N))
    pool = Pool()

    def fill():
        for i in range(N):
            s = sizes[i & 3]
            h = pool.malloc(s)
            pool.write(h, data[s])
            hs[i] = h

    def drain():
        for h in hs:
            pool.free(h)

    # One round first, so the pool's tables have their full size already.
    fill()
    drain()
    start = status("VmRSS")
    fill()
    peak, locked = status("VmRSS"), status("VmLck")
    drain()
    end = status("VmRSS")
    print(start, peak, end, locked, pool.pages_used)
""")


def _run(script, mode):
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert out.returncode == 0, out.stderr
    return map(int, out.stdout.split())


def _check(start, peak, end, pages):
    assert pages == 0
    assert peak - start > 50 << 20, (start, peak)
    assert abs(end - start) < 1 << 20, (start, end)


def test_rss_falls_back_after_freeing_everything():
    start, peak, end, locked, pages = _run(SCRIPT, "plain")
    assert locked == 0
    _check(start, peak, end, pages)


@pytest.mark.root
def test_rss_falls_back_under_mlockall():
    start, peak, end, locked, pages = _run(SCRIPT, "mlock")
    # The pool's mapping really was locked (VmLck counts locked mappings,
    # faulted or not, so it is the whole reservation here).
    assert locked > 50 << 20
    _check(start, peak, end, pages)


# From a new pool, not after a warm-up round: the pool's tables (handle
# table, zspage tables, free-id stacks) must shrink back too.  200,000
# objects make the handle table alone 1.6 MiB.
FROM_NEW = PROLOGUE + textwrap.dedent("""
    N = 200000
    sizes = (100, 1670, 3000, 4096)
    data = [os.urandom(s) for s in sizes]
    batch = [data[i & 3] for i in range(256)]
    # The test's own handle store, allocated before the start is measured.
    hs = array("Q", bytes(8 * N))
    pool = Pool()
    start = rss()
    for i in range(0, N, 256):
        hs[i:i + 256] = array("Q", pool.store_many(batch))
        while pool.populate_ahead():
            pass
    peak = rss()
    for i in range(0, N, 256):
        pool.free_many(hs[i:i + 256])
    end = rss()
    print(start, peak, end, pool.pages_used)
""")


def _run_from_new(mode):
    start, peak, end, pages = _run(FROM_NEW, mode)
    assert pages == 0
    assert peak - start > 200 << 20, (start, peak)
    assert end - start < 1 << 20, (start, end)


def test_a_pool_emptied_gives_its_tables_back():
    _run_from_new("plain")


@pytest.mark.root
def test_a_pool_emptied_gives_its_tables_back_under_mlockall():
    _run_from_new("mlock")
