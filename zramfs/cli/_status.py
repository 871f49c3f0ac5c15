"""``zramfs status``: zramctl's status table for zramfs devices.

Where this sits: beside the data path, over `zramfs.system` (which reads
the mounts, the attribute files at each mountpoint, loop devices and
/proc/swaps).  The output is util-linux ``zramctl``'s, column for column,
so a script that parses ``zramctl`` (its default columns, ``-o``, ``--raw``,
``-b``, ``-n``) parses this: the same column names, the same default set
and order, numbers right-aligned, sizes as ``size_to_human_string`` with
one-letter suffixes ("4G", "248.7M", "69B"), cells one space apart, the last
column not padded (its separator kept), an unknown value an empty cell.
NAME is the zramfs device name (there is no /dev node); STREAMS is empty,
as zramctl prints it on Linux 6.15 and later, which have no
``max_comp_streams``; MOUNTPOINT is where the device is used -- ``[SWAP]``
when its loop device is active swap, else where its loop device's
filesystem is mounted -- and DIR is the FUSE mount that holds its
attribute files and ``disk``.

``--json`` is zramfs's own (zramctl has none): ``{"zramfs": [row, ...]}``,
one object per device, keyed by the lowercased column names, sizes and
counts as integers in bytes, DISCARD a boolean, unknown values null.
"""

import json

from zramfs.config import ConfigError
from zramfs.system import System

from ._common import backend_supports_discard, human
from ._errors import EXIT_OK, DeviceNotFoundError

# Every column, zramctl's in zramctl's order, then zramfs's own.  The kind
# says how a cell prints: "size" (human, or bytes with -b), "count" (always
# a number), "text"; numbers are right-aligned as in zramctl.
COLUMNS = {
    "NAME": "text",
    "DISKSIZE": "size",
    "DATA": "size",
    "COMPR": "size",
    "ALGORITHM": "text",
    "STREAMS": "count",
    "ZERO-PAGES": "count",
    "TOTAL": "size",
    "MEM-LIMIT": "size",
    "MEM-USED": "size",
    "MIGRATED": "size",  # pages_compacted, which zramctl prints as a size
    "COMP-RATIO": "ratio",
    "MOUNTPOINT": "text",
    # zramfs's own: the loop device(s), the FUSE mount, its transport, discard.
    "LOOP": "text",
    "DIR": "text",
    "BACKEND": "text",
    "DISCARD": "bool",
}
# zramctl's default columns, in its order.
DEFAULT_COLUMNS = (
    "NAME",
    "ALGORITHM",
    "DISKSIZE",
    "DATA",
    "COMPR",
    "TOTAL",
    "STREAMS",
    "MOUNTPOINT",
)
STATUS_COLUMNS = tuple(COLUMNS)
_RIGHT = {"size", "count", "ratio"}
# zramctl's width hints: a size column is at least 5 wide (" 296K" under
# "DATA"), as libsmartcols pads to an absolute hint.
_MIN_WIDTH = 5

# mm_stat's fields behind zramctl's columns (zramctl reads the same ones).
_MM_STAT = {
    "DATA": "orig_data_size",
    "COMPR": "compr_data_size",
    "TOTAL": "mem_used_total",
    "MEM-LIMIT": "mem_limit",
    "MEM-USED": "mem_used_max",
    "ZERO-PAGES": "same_pages",
    "MIGRATED": "pages_compacted",
}


def used_at(sys_, loops):
    """MOUNTPOINT: ``[SWAP]`` if a loop device is active swap, else where one is mounted, else None."""
    swaps = sys_.active_swaps()
    if any(loop in swaps for loop in loops):
        return "[SWAP]"
    for m in sys_.mounts():
        if m.source in loops:
            return m.mountpoint
    return None


def row(device, sys_):
    """One device's row, {lowercased column: value}: sizes and counts in bytes, None where unknown.

    What --json prints."""
    mm = device.mm_stat or {}
    backend = device.backend
    values = {
        "NAME": device.name,
        "DISKSIZE": device.disksize,
        "ALGORITHM": device.algorithm,
        # zramctl reads max_comp_streams, which Linux 6.15 removed (zram
        # keeps a stream per CPU) and zramfs does not have either: on 6.18
        # zramctl leaves the cell empty, and so does this.
        "STREAMS": None,
        "MOUNTPOINT": used_at(sys_, device.loops),
        "LOOP": ",".join(device.loops) or None,
        "DIR": device.mountpoint,
        "BACKEND": backend,
        "DISCARD": backend_supports_discard(backend) if backend else None,
    }
    for col, field in _MM_STAT.items():
        values[col] = mm.get(field)
    data, total = values["DATA"], values["TOTAL"]
    # zramctl's COMP-RATIO: DATA/TOTAL, empty while nothing is stored.
    values["COMP-RATIO"] = round(data / total, 2) if data and total else None
    return {col.lower(): values[col] for col in COLUMNS}


def parse_columns(text):
    """-o LIST: comma-separated column names (any case); "+LIST" adds to the default ones."""
    base = ()
    if text.startswith("+"):
        base, text = DEFAULT_COLUMNS, text[1:]
    names = [c.strip().upper() for c in text.split(",") if c.strip()]
    for name in names:
        if name not in COLUMNS:
            raise ConfigError(f"unknown column: {name}")
    if not base and not names:
        raise ConfigError("no columns given to --output")
    return base + tuple(names)


def _cell(value, kind, *, in_bytes):
    if value is None:
        return ""
    if kind == "size":
        return str(value) if in_bytes else human(value)
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "bool":
        return "yes" if value else "no"
    return str(value)


def _raw(text):
    """libsmartcols' raw escaping: space, backslash and unprintables as \\xHH."""
    return "".join(
        c if c.isprintable() and c not in " \\" else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in text
    )


def render(rows, columns=DEFAULT_COLUMNS, *, in_bytes=False, raw=False, headings=True):
    """The table `status` prints, as lines (none when there are no devices, like zramctl)."""
    if not rows:
        return []
    table = [list(columns)] + [
        [_cell(r[c.lower()], COLUMNS[c], in_bytes=in_bytes) for c in columns] for r in rows
    ]
    if raw:
        lines = [" ".join(_raw(text) for text in line) for line in table]
    else:
        # Headings count for the widths even with -n (as in zramctl); every
        # column is padded but the last, which still gets its separator.
        widths = [
            max([len(line[i]) for line in table] + [_MIN_WIDTH if COLUMNS[c] == "size" else 0])
            for i, c in enumerate(columns)
        ]
        last = len(columns) - 1
        lines = [
            " ".join(
                text.rjust(w) if COLUMNS[col] in _RIGHT else text if i == last else text.ljust(w)
                for i, (text, w, col) in enumerate(zip(line, widths, columns))
            )
            for line in table
        ]
    return lines if headings else lines[1:]


def cmd_status(args, sys_=None):
    """Print zramctl's table (or JSON) for every device, or for device NAME."""
    sys_ = sys_ or System()
    if args.output_all:
        columns = STATUS_COLUMNS
    elif args.output:
        columns = parse_columns(args.output)
    else:
        columns = DEFAULT_COLUMNS
    devices = sys_.devices()
    if args.name is not None:
        devices = [d for d in devices if d.name == args.name]
        if not devices:
            raise DeviceNotFoundError(f"no zramfs device named {args.name!r}")
    rows = [row(d, sys_) for d in devices]
    if args.json:
        keys = [c.lower() for c in (columns if args.output or args.output_all else STATUS_COLUMNS)]
        print(json.dumps({"zramfs": [{k: r[k] for k in keys} for r in rows]}, indent=2))
    else:
        for line in render(
            rows, columns, in_bytes=args.bytes, raw=args.raw, headings=not args.noheadings
        ):
            print(line)
    return EXIT_OK
