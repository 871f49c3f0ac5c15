"""Run a test's function in several threads at once, and fail with what they raised.

A thread's exception does not reach the test by itself; `run_threads`
collects them and raises the first, so a failed assertion in a worker fails
the test with its own traceback.
"""

import threading


def run_threads(target, n, *, beside=None, timeout=120):
    """Call ``target(i)`` for i in 0..n-1, each in its own thread, and wait.

    ``beside(stop)``, if given, runs in one more thread from before the
    workers start until they have all ended (``stop`` is a threading.Event
    it should poll): a compactor or sampler running alongside.  Raises the
    first exception any thread raised; fails if a thread outlives
    ``timeout`` seconds.
    """
    errors = []
    stop = threading.Event()

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=guarded, args=(target, i)) for i in range(n)]
    helper = threading.Thread(target=guarded, args=(beside, stop)) if beside else None
    if helper:
        helper.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout)
    stop.set()
    if helper:
        helper.join(timeout)
    stuck = [t for t in workers + ([helper] if helper else []) if t.is_alive()]
    assert not stuck, f"{len(stuck)} thread(s) still running after {timeout} s"
    if errors:
        raise errors[0]
