"""System settings that zramfs swap wants, applied by ``swapon`` and put back by ``swapoff``.

Where this sits: beside the data path, called only by the CLI.  A setting is
changed only when it differs from what zramfs wants; the value found is kept
in a small JSON file in the run directory, written once, by the first
``swapon`` that changed something.  The ``swapoff`` that leaves no zramfs
swap behind writes every kept value back and removes the file, so the machine
ends as it was found, whatever happened in between.
"""

import errno
import json
import os

HALT_POLL_NS = "/sys/module/haltpoll/parameters/guest_halt_poll_ns"

# Each setting with the value zramfs swap wants, and the measurement behind it.
# A setting whose file this machine lacks is left out (see OPTIONAL).
SWAP_SETTINGS = {
    # Swap readahead of 2**3 pages.  Kernel zram is usually run with 0, but
    # for zramfs readahead turns several 4 KiB swap-ins into one FUSE
    # request: swap workload (192 MiB working set, cgroup limited to a
    # third, 100k touches) took 11.9/13.9 s at 0, 8.6/9.2 s at 3 and
    # 9.5/9.7 s at 5 (BENCHMARKS.md).
    "/proc/sys/vm/page-cluster": "3",
    # KVM guests only (the haltpoll cpuidle driver): how long an idle vCPU
    # polls before it halts.  Every zramfs request wakes a sleeping thread
    # two or three times (loop's worker, the daemon, the waiting task); on
    # a halted vCPU each wakeup costs ~15-25 us of VM exit and entry, more
    # than the daemon's own work.  200 us is the kernel's default, which
    # some hosts turn off on the command line.  Measured with it at 0 and
    # at 200000 in one run: 4 KiB random read QD1 17k -> 55k IOPS (unwritten
    # blocks), swap workload 32 s -> 15.6 s (BENCHMARKS.md).  Polling costs
    # idle CPU only while wakeups keep coming; the driver shrinks it when
    # they stop.
    HALT_POLL_NS: "200000",
}

# Settings that only some kernels have; where the file is missing there is
# nothing to tune, and that is not an error.
OPTIONAL = frozenset({HALT_POLL_NS})
# Settings where more is as good: a machine already above zramfs's value
# keeps its own.
AT_LEAST = frozenset({HALT_POLL_NS})

STATE_FILE = "sysctl-saved.json"


class TuningError(OSError):
    """Raised when a setting cannot be read or written (the message names it)."""


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise TuningError(e.errno, f"cannot read {path}: {e.strerror}") from None


def _write(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise TuningError(e.errno, f"cannot set {path} to {value}: {e.strerror}") from None


def apply(run_dir, settings=SWAP_SETTINGS, optional=OPTIONAL, at_least=AT_LEAST, refused=None):
    """Set each setting to zramfs's value; keep what was there the first time.

    Returns the settings changed now, as {path: (old, new)}.  A setting the
    kernel will not let us write (read-only /sys in a container, no
    permission) is a speed tuning lost, not a reason to fail swapon: it is
    left as it is and its TuningError is appended to ``refused`` when given.
    """
    state = os.path.join(run_dir, STATE_FILE)
    try:
        with open(state) as f:
            saved = json.load(f)
    except FileNotFoundError:
        saved = {}
    changed = {}
    for path, want in settings.items():
        if path in optional and not os.path.exists(path):
            continue
        have = _read(path)
        if have == want or (path in at_least and have.isdigit() and int(have) >= int(want)):
            continue
        saved.setdefault(path, have)
        changed[path] = (have, want)
    if not changed:
        return changed
    # The old values are on disk before anything changes, so a crash in
    # between can still be undone by the next swapoff.
    # Our own name: two swapons at once must not replace each other's file.
    tmp = f"{state}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(saved, f)
    os.replace(tmp, state)
    for path, (_old, want) in list(changed.items()):
        try:
            _write(path, want)
        except TuningError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            del changed[path]
            if saved.get(path) == _read(path):
                del saved[path]
            if refused is not None:
                refused.append(e)
    if saved:
        with open(tmp, "w") as f:
            json.dump(saved, f)
        os.replace(tmp, state)
    else:
        os.unlink(state)
    return changed


def current(settings=SWAP_SETTINGS):
    """{path: value now} for each setting this machine has (for reports)."""
    return {path: _read(path) for path in settings if os.path.exists(path)}


def restore(run_dir):
    """Write back every kept value and remove the record; returns {path: value} restored."""
    state = os.path.join(run_dir, STATE_FILE)
    try:
        with open(state) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return {}
    for path, value in saved.items():
        _write(path, value)
    os.unlink(state)
    return saved
