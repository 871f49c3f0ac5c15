"""System settings that zramfs swap wants, applied by ``swapon`` and put back by ``swapoff``.

Where this sits: beside the data path, called only by the CLI.  A setting is
changed only when it differs from what zramfs wants; the value found is kept
in a small JSON file in the run directory, written once, by the first
``swapon`` that changed something.  The ``swapoff`` that leaves no zramfs
swap behind writes every kept value back and removes the file, so the machine
ends as it was found, whatever happened in between.
"""

import json
import os

# Each setting with the value zramfs swap wants, and the measurement behind it.
SWAP_SETTINGS = {
    # Swap readahead of 2**3 pages.  Kernel zram is usually run with 0, but
    # for zramfs readahead turns several 4 KiB swap-ins into one FUSE
    # request: swap workload (192 MiB working set, cgroup limited to a
    # third, 100k touches) took 11.9/13.9 s at 0, 8.6/9.2 s at 3 and
    # 9.5/9.7 s at 5 (BENCHMARKS.md).
    "/proc/sys/vm/page-cluster": "3",
}

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


def apply(run_dir, settings=SWAP_SETTINGS):
    """Set each setting to zramfs's value; keep what was there the first time.

    Returns the settings changed now, as {path: (old, new)}.
    """
    state = os.path.join(run_dir, STATE_FILE)
    try:
        with open(state) as f:
            saved = json.load(f)
    except FileNotFoundError:
        saved = {}
    changed = {}
    for path, want in settings.items():
        have = _read(path)
        if have == want:
            continue
        saved.setdefault(path, have)
        changed[path] = (have, want)
    if not changed:
        return changed
    # The old values are on disk before anything changes, so a crash in
    # between can still be undone by the next swapoff.
    tmp = state + ".tmp"
    with open(tmp, "w") as f:
        json.dump(saved, f)
    os.replace(tmp, state)
    for path, (_old, want) in changed.items():
        _write(path, want)
    return changed


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
