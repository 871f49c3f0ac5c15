"""The command line: argparse for every command, and `main`, where errors become exit codes."""

import argparse
import sys

from zramfs.codecs import CODECS
from zramfs.config import DEFAULT_ALGORITHM, DEFAULT_BACKEND
from zramfs.fuse import BACKENDS
from zramfs.system import default_run_dir

from ._errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exit_code_for
from ._mount import cmd_mount
from ._reset import cmd_reset
from ._restart import cmd_restart
from ._status import STATUS_COLUMNS, cmd_status
from ._swapoff import cmd_swapoff
from ._swapon import DEFAULT_PRIORITY, cmd_swapon
from ._umount import cmd_umount


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, like every other error."""

    def error(self, message):
        command = self.prog.removeprefix("zramfs").strip()
        raise _UsageError(f"{command}: {message}" if command else message)


def build_parser():
    parser = _Parser(
        prog="zramfs",
        description="zram in userspace: compressed swap and disks over FUSE.",
        epilog="Exit codes: 0 ok, 1 failure, 2 bad input, 3 needs root, "
        "4 FUSE unavailable, 5 in use, 6 not found, 7 restart refused (state format), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def device_options(p, *, size_default):
        p.add_argument(
            "--size",
            help="disksize: bytes, K/M/G/T/P/E suffix or N%% of RAM; a multiple of 4 KiB "
            + size_default,
        )
        p.add_argument(
            "--algorithm",
            default=DEFAULT_ALGORITHM,
            help=f"compression algorithm: {', '.join(CODECS)} (default {DEFAULT_ALGORITHM})",
        )
        p.add_argument(
            "--algorithm-params",
            default="",
            metavar="PARAMS",
            help="zram's algorithm_params for the algorithm: 'level=N', 'dict=PATH' (zstd, lz4, lz4hc)",
        )
        p.add_argument(
            "--mem-limit", help="memory limit for compressed data (like zram's mem_limit)"
        )
        p.add_argument(
            "--backing-dev",
            metavar="PATH",
            help="zram's backing_dev for writeback: a block device, or a file (made sparse, "
            "sized to the disk, mode 0600; a new or an empty one)",
        )
        p.add_argument(
            "--recomp-algorithm",
            dest="recomp_algorithms",
            action="append",
            default=[],
            metavar="'algo=NAME priority=N [level=N]'",
            help="zram's recomp_algorithm: a secondary algorithm for recompress, "
            "priority 1 to 3; repeatable",
        )
        p.add_argument(
            "--writeback-watermark",
            metavar="SIZE",
            help="beyond zram: when the pool reaches SIZE (bytes, K/M/G/T/P/E suffix or N%% of "
            "RAM), write the least recently used pages back to --backing-dev; writes at "
            "--mem-limit then wait for that writeback instead of failing (default: off)",
        )
        p.add_argument(
            "--writeback-low-watermark",
            metavar="SIZE",
            help="write back until the pool is under SIZE (default 7/8 of --writeback-watermark)",
        )
        p.add_argument(
            "--fuse-backend",
            choices=BACKENDS,
            default=DEFAULT_BACKEND,
            help=f"FUSE transport (default {DEFAULT_BACKEND}: /dev/fuse directly; pyfuse3 cannot discard)",
        )

    p = sub.add_parser("mount", help="mount a zramfs device (its `disk` file) on MOUNTPOINT")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    device_options(
        p, size_default="(default: none, the device starts uninitialised; write its disksize file)"
    )
    p.add_argument("--name", help="device name, the mount's source (default first free zramN)")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground as the device's supervisor (systemd: zramfs@.service)",
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount MOUNTPOINT and wait for its daemon to exit")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("swapon", help="set up compressed swap: mount, losetup, mkswap, swapon")
    p.add_argument("name", metavar="NAME", nargs="?", help="device name (default first free zramN)")
    device_options(p, size_default="(default min(ram/2, 4G))")
    p.add_argument(
        "--priority",
        type=int,
        help=f"swap priority, -1 to 32767 (default {DEFAULT_PRIORITY})",
    )
    p.add_argument(
        "--loop",
        metavar="/dev/loopN",
        help="attach at this loop device, made if missing (default the first free one); "
        "refused if it is attached already",
    )
    p.add_argument(
        "--mkswap-only",
        action="store_true",
        help="stop after mkswap, leaving swapon to a systemd .swap unit (zramfs-generator's)",
    )
    p.set_defaults(func=cmd_swapon)

    p = sub.add_parser("swapoff", help="tear down swap made by swapon; nothing is left behind")
    p.add_argument("name", metavar="NAME", nargs="?")
    p.add_argument("--all", action="store_true", help=f"every device under {default_run_dir()}")
    p.set_defaults(func=lambda args: cmd_swapoff(args, report=print_error))

    p = sub.add_parser("status", help="zramctl's status table of zramfs devices")
    p.add_argument("name", metavar="NAME", nargs="?", help="only this device")
    p.add_argument(
        "-o",
        "--output",
        metavar="LIST",
        help=f"columns, comma-separated ('+LIST' adds): {', '.join(STATUS_COLUMNS)}",
    )
    p.add_argument("--output-all", action="store_true", help="every column")
    p.add_argument(
        "--raw",
        action="store_true",
        help="zramctl's raw format: one space between cells, none padded",
    )
    p.add_argument("-b", "--bytes", action="store_true", help="sizes in bytes")
    p.add_argument("-n", "--noheadings", action="store_true", help="no header line")
    p.add_argument(
        "--json", action="store_true", help="JSON, every column (or those of -o), sizes in bytes"
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reset", help="tear device NAME down and remove it, like zramctl --reset")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--force",
        action="store_true",
        help="swapoff and unmount what uses the device first (without it, reset refuses while it is swap or mounted)",
    )
    p.set_defaults(func=cmd_reset)

    p = sub.add_parser(
        "restart",
        help="replace device NAME's daemon with the code installed now, keeping its data (no swapoff)",
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_restart)
    return parser


def print_error(exc):
    print(f"zramfs: error: {exc}", file=sys.stderr)


def main(argv=None):
    """The console script ``zramfs``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print_error(e)
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:
        code = exit_code_for(e)
        if code is None:
            raise
        print_error(e)
        return code
