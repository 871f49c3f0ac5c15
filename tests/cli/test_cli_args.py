"""zramfs.cli without side effects: parsing, messages, the exit-code table, formatting.

Every case here fails (or only reads) before anything is mounted, so it runs
anywhere, root or not.  The same errors are checked end to end, as real
processes, in tests/system/test_cli_errors.py.
"""

import importlib.util
import os
import re

import pytest

from zramfs import cli, mountinfo, system
from zramfs.cli import _common
from zramfs.codecs import CODECS, NOT_IN_THIS_BUILD, UnknownAlgorithmError
from zramfs.config import InvalidNameError, SizeError
from zramfs.fuse import (
    FusermountMissingError,
    MountError,
    MountpointBusyError,
    MountpointMissingError,
    MountpointNotDirectoryError,
    MountpointPermissionError,
    NoFuseDeviceError,
)
from zramfs.launch import DaemonStartError


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["swapon", "--size", "0"], "size must be greater than 0"),
        (["swapon", "--size", "4097"], "size 4097 is not a multiple of 4096 bytes (the page size)"),
        (
            ["swapon", "--size", "4X"],
            "size '4X' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM",
        ),
        (["swapon", "--size="], "size is empty"),
        (
            ["swapon", "--algorithm", "lzma"],
            f"unknown compression algorithm 'lzma'; known: {' '.join(CODECS)}",
        ),
        (
            ["swapon", "--algorithm", "lzo-rle"],
            f"compression algorithm 'lzo-rle' is not in this build: {NOT_IN_THIS_BUILD['lzo-rle']}",
        ),
        (
            ["swapon", "--algorithm", "842"],
            f"compression algorithm '842' is not in this build: {NOT_IN_THIS_BUILD['842']}",
        ),
        (["swapon", "--priority", "-2"], "priority -2 is not between -1 and 32767"),
        (["swapon", "--priority", "32768"], "priority 32768 is not between -1 and 32767"),
        (["swapon", "--priority", "x"], "swapon: argument --priority: invalid int value: 'x'"),
        # --loop names a loop device by its path, nothing else (taken: exit 5, tests/system).
        *[
            (
                ["swapon", "--loop", loop],
                f"--loop: {loop!r} is not a loop device path like /dev/loop7",
            )
            for loop in ("/dev/sda", "loop7", "/dev/loop07", "/dev/loop-1", "/dev/loop", "")
        ],
        (
            ["swapon", "--mkswap-only", "--priority", "5"],
            "--priority is swapon's: with --mkswap-only, whoever runs swapon sets it",
        ),
        (
            ["swapon", "a/b"],
            "name 'a/b' must be 1 to 64 letters, digits, '_', '.' or '-', not starting with '_', '.' or '-'",
        ),
        (["swapon", "--mem-limit=-1"], "size '-1' is negative"),
        (
            ["swapon", "--fuse-backend", "x"],
            "swapon: argument --fuse-backend: invalid choice: 'x' (choose from 'dev', 'pyfuse3')",
        ),
        (
            ["mount", "/mnt", "--algorithm-params", "level=0"],
            "lz4 level must be between 1 and 65537, not 0",
        ),
        (
            ["mount", "/mnt", "--algorithm", "lz4hc", "--algorithm-params", "level=13"],
            "lz4hc level must be between 1 and 12, not 13",
        ),
        (
            ["swapon", "--algorithm-params", "level"],
            "'level' has no value (algorithm_params takes key=value)",
        ),
        (
            ["swapon", "--algorithm", "deflate", "--algorithm-params", "dict=/etc/hostname"],
            "deflate takes no dictionary (zstd, lz4 and lz4hc do)",
        ),
        (
            ["swapon", "--algorithm-params", "dict=/nonexistent"],
            "dict=/nonexistent: No such file or directory",
        ),
        (
            ["swapon", "--algorithm-params", "algo=zstd"],
            "algo=zstd is not this device's algorithm (lz4)",
        ),
        (["mount", "/mnt", "--size", "0"], "size must be greater than 0"),
        # Not the working directory: an empty MOUNTPOINT is a mistake (issue 10).
        (["mount", "", "--size", "64M"], "MOUNTPOINT is empty"),
        (["mount", " \t", "--size", "64M"], "MOUNTPOINT is empty"),
        (["umount", ""], "MOUNTPOINT is empty"),
        (
            ["mount", "/mnt", "--size", "1G", "--name", ".x"],
            "name '.x' must be 1 to 64 letters, digits, '_', '.' or '-', not starting with '_', '.' or '-'",
        ),
        (
            ["mount", "/mnt", "--size", "1G", "--algorithm", "zlib"],
            f"unknown compression algorithm 'zlib'; known: {' '.join(CODECS)}",
        ),
        (["umount"], "umount: the following arguments are required: MOUNTPOINT"),
        (["swapoff"], "give a NAME or --all"),
        (["swapoff", "zram0", "--all"], "give a NAME or --all, not both"),
        (["swapoff", "-x"], "unrecognized arguments: -x"),
        (["status", "--yaml"], "unrecognized arguments: --yaml"),
        (
            ["frob"],
            "argument COMMAND: invalid choice: 'frob' (choose from 'mount', 'umount', 'swapon', 'swapoff', 'status', 'reset', 'restart')",
        ),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", f"zramfs: error: {message}\n")


def test_not_root_is_exit_3(capsys, monkeypatch):
    # Input is checked first (so the messages above hold for anyone), then root.
    # mount and umount need no root (fusermount3): tests/system/test_user_mount.py.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for argv, message in [
        (
            ["swapon", "zram0", "--size", "1G"],
            "swapon needs root (it mounts, attaches a loop device and enables swap)",
        ),
        (
            ["swapoff", "--all"],
            "swapoff needs root (it disables swap, detaches a loop device and unmounts)",
        ),
    ]:
        code, out, err = run(capsys, *argv)
        assert (code, out, err) == (3, "", f"zramfs: error: {message}\n")


def test_pyfuse3_not_installed_is_exit_4(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pyfuse3" else find_spec(name, *a),
    )
    with pytest.raises(cli.BackendUnavailableError) as info:
        _common.need_fuse("pyfuse3")
    assert str(info.value) == "the pyfuse3 backend needs pyfuse3 (pip install 'zramfs[pyfuse3]')"
    assert cli.exit_code_for(info.value) == 4


def test_help_is_exit_0(capsys):
    code, out, err = run(capsys, "--help")
    assert code == 0 and "swapon" in out and "Exit codes" in out
    code, out, err = run(capsys, "swapon", "--help")
    assert code == 0 and "--priority" in out


@pytest.mark.parametrize(
    "exc, code",
    [
        (SizeError("x"), 2),
        (InvalidNameError("x"), 2),
        (UnknownAlgorithmError("x"), 2),
        (MountpointMissingError("x"), 2),
        (MountpointNotDirectoryError("x"), 2),
        (MountpointPermissionError("x"), 3),
        (cli.NeedsRootError("x"), 3),
        (NoFuseDeviceError("x"), 4),
        (FusermountMissingError("x"), 4),
        (cli.BackendUnavailableError("x"), 4),
        (MountpointBusyError("x"), 5),
        (cli.NameInUseError("x"), 5),
        (cli.DiskBusyError("x"), 5),
        (cli.DeviceNotFoundError("x"), 6),
        (cli.CommandError("x"), 1),
        (cli.DaemonError("x"), 1),
        (DaemonStartError("x"), 1),
        (MountError("x"), 1),
        (ValueError("x"), None),  # a bug, not an input error: a traceback, not a tidy line
        (OSError("x"), None),
    ],
)
def test_exit_code_table(exc, code):
    assert cli.exit_code_for(exc) == code


def test_docstring_lists_every_exit_code():
    documented = {int(m[1]) for m in re.finditer(r"^(\d+) {2,}", cli.__doc__, re.MULTILINE)}
    used = {c for c in cli.EXIT_CODES.values()} | {
        cli.EXIT_OK,
        cli.EXIT_USAGE,
        cli.EXIT_INTERRUPTED,
    }
    assert documented == used == {0, 1, 2, 3, 4, 5, 6, 7, 130}


@pytest.mark.parametrize(
    "size, short, long",
    [
        (0, "0B", "0 B"),
        (63, "63B", "63 B"),
        (4096, "4K", "4 KiB"),
        (20 * 1024, "20K", "20 KiB"),
        (512 << 20, "512M", "512 MiB"),
        (3 << 29, "1.5G", "1.5 GiB"),
        (4 << 30, "4G", "4 GiB"),
        (1 << 40, "1T", "1 TiB"),
        # size_to_human_string's arithmetic: cut to 3 digits, round to 1, carry without a unit change.
        (260800000, "248.7M", "248.7 MiB"),
        (43210, "42.2K", "42.2 KiB"),
        ((1 << 20) - 1, "1024K", "1024 KiB"),
    ],
)
def test_human_sizes_like_zramctl(size, short, long):
    assert _common.human(size) == short
    assert _common.human(size, long=True) == long


def test_backend_discard_capability():
    assert _common.backend_supports_discard("dev") is True
    assert _common.backend_supports_discard("pyfuse3") is False


def test_run_dir(monkeypatch):
    monkeypatch.delenv("ZRAMFS_RUN_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert system.default_run_dir() == "/run/zramfs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert system.default_run_dir() == "/tmp/zramfs-1000"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert system.default_run_dir() == "/run/user/1000/zramfs"
    monkeypatch.setenv("ZRAMFS_RUN_DIR", "/tmp/x/")
    assert system.default_run_dir() == "/tmp/x"


def test_mountinfo_parsing():
    # Every line of the real mountinfo parses, and escapes are undone.
    assert any(m.mountpoint == "/" for m in mountinfo.mounts())
    assert mountinfo.unescape(r"/mnt/a\040b") == "/mnt/a b"
    assert mountinfo.unescape(r"/mnt/back\134slash") == "/mnt/back\\slash"


def test_status_columns_are_zramctls_then_ours():
    # zramctl's columns in zramctl's order (util-linux zramctl.c), then zramfs's own.
    assert cli.STATUS_COLUMNS == (
        "NAME", "DISKSIZE", "DATA", "COMPR", "ALGORITHM", "STREAMS", "ZERO-PAGES", "TOTAL", "MEM-LIMIT",
        "MEM-USED", "MIGRATED", "COMP-RATIO", "MOUNTPOINT", "LOOP", "DIR", "BACKEND", "DISCARD",
    )  # fmt: skip


def _unit(path):
    """The [Section] key=value pairs of a systemd unit (repeated keys collected)."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), {})
                continue
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return sections


def test_swap_unit_start_and_stop_mirror_each_other():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "zramfs-swap@.service")
    with open(path) as f:
        assert f.readline().startswith("# SPDX-License-Identifier: ")
    unit = _unit(path)
    assert unit["Unit"]["Documentation"]
    service = unit["Service"]
    assert service["Type"] == ["oneshot"] and service["RemainAfterExit"] == ["yes"]
    (start,), (stop,) = service["ExecStart"], service["ExecStop"]
    assert start == "zramfs swapon %i $OPTIONS"
    assert stop == "zramfs swapoff %i"
    # Rendered for an instance, both are commands the CLI accepts.
    parser = cli.build_parser()
    for command in (start, stop):
        argv = command.replace("%i", "zram0").replace("$OPTIONS", "--size 2G --priority 50").split()
        args = parser.parse_args(argv[1:])
        assert args.name == "zram0"
    assert "swap.target" in unit["Install"]["WantedBy"]
