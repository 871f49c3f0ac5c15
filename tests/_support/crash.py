"""Kill a forked child at one step of an update, for the restart tests.

Every step of a write path that a restart must survive calls its module's
``_fault`` hook (None in real runs) with the step's name.  `die_at` runs a
function in a forked child whose hooks SIGKILL it the n-th time it reaches
the named step; the memfds the parent and the child share keep what the
child had stored, and the parent takes them over as a new daemon would.
"""

import os
import signal
import sys
import traceback

#: The modules with a fault hook, and the steps each reports.
MODULES = ("allocator._pool", "allocator._compact", "zramfs._slots", "zramfs.device")
POOL_STEPS = (
    "malloc:published",
    "free:unpublished",
    "replace:copied",
    "replace:published",
    "compact:copied",
    "compact:moved",
)
DEVICE_STEPS = POOL_STEPS + (
    "slot:emptied",
    "slot:transit",
    "slot:handle",
    "commit:stored",
    "commit:handles",
    "commit:emptied",
    "commit:published",
    "commit:freed",
    "writeback:written",
)


def die_at(step, nth, fn):
    """Run ``fn()`` in a forked child killed by SIGKILL the ``nth`` time it
    reaches ``step`` (None: any step).  True if it was killed there, False if ``fn`` ended
    first (the step is reached fewer than ``nth`` times).  A child that
    raises fails the caller."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            seen = 0

            def hook(name):
                nonlocal seen
                if step is None or name == step:
                    seen += 1
                    if seen == nth:
                        os.kill(os.getpid(), signal.SIGKILL)

            for module in MODULES:
                if module in sys.modules:  # (the allocator tests load no zramfs)
                    sys.modules[module]._fault = hook
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, -signal.SIGKILL), f"the child failed before {step} #{nth} (exit {code})"
    return code == -signal.SIGKILL


def each_crash(steps, build, op, verify, limit=300):
    """For every step of ``steps`` and every time ``op`` reaches it: ``build()``
    a fresh state (in the parent), run ``op(state)`` in a child killed there
    (the first eight times, then every so many, up to ``limit``),
    then ``verify(state, step, nth)`` in the parent, then ``state.close()``
    (verify takes the state over from dups of its fds).  Returns {step: the
    last time killed there (0: never reached)}.  ``limit`` caps the times
    tried per step."""
    reached = {}
    for step in steps:
        nth = 1
        reached[step] = 0
        while nth <= limit:
            state = build()
            if not die_at(step, nth, lambda state=state: op(state)):
                state.close()
                break
            try:
                verify(state, step, nth)
            finally:
                state.close()
            reached[step] = nth
            nth += 1 if nth < 8 else nth // 4
    return reached
