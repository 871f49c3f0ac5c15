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

SCRIPT = textwrap.dedent("""
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


def _run(mode):
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr
    start, peak, end, locked, pages = map(int, out.stdout.split())
    return start, peak, end, locked, pages


def _check(start, peak, end, pages):
    assert pages == 0
    assert peak - start > 50 << 20, (start, peak)
    assert abs(end - start) < 1 << 20, (start, end)


def test_rss_falls_back_after_freeing_everything():
    start, peak, end, locked, pages = _run("plain")
    assert locked == 0
    _check(start, peak, end, pages)


@pytest.mark.root
def test_rss_falls_back_under_mlockall():
    start, peak, end, locked, pages = _run("mlock")
    # The pool's mapping really was locked (VmLck counts locked mappings,
    # faulted or not, so it is the whole reservation here).
    assert locked > 50 << 20
    _check(start, peak, end, pages)
