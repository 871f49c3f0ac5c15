"""``zramfs status [--json]``: one line per device, zramctl's columns first."""

import json

from zramfs.system import System

from ._common import backend_supports_discard, human
from ._errors import EXIT_OK

# zramctl's columns, then ours, only ever appended.
STATUS_COLUMNS = (
    "NAME",
    "DISKSIZE",
    "DATA",
    "COMPR",
    "TOTAL",
    "ALGORITHM",
    "LOOP",
    "MOUNTPOINT",
    "BACKEND",
    "DISCARD",
)
_NUMERIC = {"DISKSIZE", "DATA", "COMPR", "TOTAL"}


def row(device):
    """One device's row (sizes in bytes; None where unknown): what --json prints."""
    mm = device.mm_stat or {}
    backend = device.backend
    return {
        "name": device.name,
        "disksize": device.disksize,
        "data": mm.get("orig_data_size"),
        "compr": mm.get("compr_data_size"),
        "total": mm.get("mem_used_total"),
        "algorithm": device.algorithm,
        "loop": ",".join(device.loops) or None,
        "mountpoint": device.mountpoint,
        "backend": backend,
        "discard": backend_supports_discard(backend) if backend else None,
    }


def render(rows):
    """The table `status` prints, as lines (none when there are no devices, like zramctl)."""
    if not rows:
        return []

    def cell(r, col):
        value = r[col.lower()]
        if value is None:
            return "-"
        if col in _NUMERIC:
            return human(value)
        if col == "DISCARD":
            return "yes" if value else "no"
        return str(value)

    table = [list(STATUS_COLUMNS)] + [[cell(r, c) for c in STATUS_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(STATUS_COLUMNS))]
    return [
        " ".join(text.rjust(w) if col in _NUMERIC else text.ljust(w) for text, w, col in zip(line, widths, STATUS_COLUMNS)).rstrip()
        for line in table
    ]


def cmd_status(args, sys_=None):
    """Print one line per mounted device (or JSON)."""
    rows = [row(d) for d in (sys_ or System()).devices()]
    if args.json:
        print(json.dumps({"zramfs": rows}, indent=2))
    else:
        for line in render(rows):
            print(line)
    return EXIT_OK
