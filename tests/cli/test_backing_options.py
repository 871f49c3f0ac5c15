"""--backing-dev and --recomp-algorithm of mount and swapon: every bad input is
one line and exit 2, before any daemon starts; and config.check_backing_dev,
the one check behind the option and the backing_dev file."""

import errno
import os
import re

import pytest

from zramfs import cli
from zramfs.codecs import CODECS
from zramfs.config import BackingDevError, ConfigError, check_backing_dev


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def paths(tmp_path):
    (tmp_path / "full").write_bytes(b"data")
    (tmp_path / "empty").touch()
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("command", [["mount", "/mnt", "--size", "64M"], ["swapon"]])
@pytest.mark.parametrize(
    "backing, message",
    [
        ("", "--backing-dev is empty"),
        ("{p}/no/file", "backing file {p}/no/file: directory {p}/no: No such file or directory"),
        ("{p}/full/x", "backing device {p}/full/x: Not a directory"),
        ("{p}/dir", "backing device {p}/dir is a directory"),
        (
            "{p}/full",
            "backing file {p}/full exists and is not empty (4 bytes); give a new path or an empty file",
        ),
        ("/dev/null", "backing device /dev/null is neither a block device nor a regular file"),
    ],
)
def test_bad_backing_dev_is_one_line_and_exit_2(capsys, paths, command, backing, message):
    argv = [*command, "--backing-dev", backing.format(p=paths)]
    assert run(capsys, *argv) == (2, "", f"zramfs: error: {message.format(p=paths)}\n")


@pytest.mark.parametrize("command", [["mount", "/mnt", "--size", "64M"], ["swapon"]])
@pytest.mark.parametrize(
    "specs, message",
    [
        (
            ["priority=1"],
            "--recomp-algorithm 'priority=1': recomp_algorithm: algo=NAME is required",
        ),
        (
            ["algo=zstd priority=4"],
            "--recomp-algorithm 'algo=zstd priority=4': recomp_algorithm: priority must be 1..3, not 4",
        ),
        (
            ["algo=zstd level=x"],
            "--recomp-algorithm 'algo=zstd level=x': level=x: not a decimal number",
        ),
        (["algo=lzma"], f"unknown compression algorithm 'lzma'; known: {' '.join(CODECS)}"),
        (["algo=zstd level=99"], "zstd level must be between 1 and 22, not 99"),
        (
            ["algo=zstd", "algo=deflate priority=1"],
            "--recomp-algorithm: priority 1 is given twice ('algo=zstd', 'algo=deflate priority=1')",
        ),
    ],
)
def test_bad_recomp_algorithm_is_one_line_and_exit_2(capsys, command, specs, message):
    argv = list(command)
    for spec in specs:
        argv += ["--recomp-algorithm", spec]
    assert run(capsys, *argv) == (2, "", f"zramfs: error: {message}\n")


def test_check_backing_dev_takes_new_and_empty_files_and_block_devices(paths):
    assert check_backing_dev(f"{paths}/new") == f"{paths}/new"
    assert check_backing_dev(f"{paths}/empty") == f"{paths}/empty"
    # Not a loop device: one may be over a zramfs disk now, which is refused.
    block = next(
        (f"/dev/{d}" for d in sorted(os.listdir("/sys/block")) if not d.startswith("loop")), None
    )
    if block is not None and os.path.exists(block):
        assert check_backing_dev(block) == block


def test_check_backing_dev_refuses_relative_paths(paths):
    with pytest.raises(BackingDevError, match="^backing device 'x' is not an absolute path$"):
        check_backing_dev("x")


def test_check_backing_dev_refuses_zramfs_mounts_without_touching_them(tmp_path):
    # A zramfs mount in a mountinfo of our own: a path under it is refused
    # before anything stats it (its daemon might be the one asking).
    mnt = tmp_path / "never-made"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"40 1 0:50 / {mnt} rw,nosuid - fuse.zramfs zram7 rw,user_id=0,group_id=0\n"
    )
    for path in (mnt, mnt / "backing", mnt / "deep" / "er"):
        with pytest.raises(BackingDevError) as info:
            check_backing_dev(str(path), mountinfo_path=mountinfo)
        assert info.value.errno == errno.EINVAL
        assert re.search(
            r"is on the zramfs mount .*: writeback into zramfs itself could deadlock$",
            str(info.value),
        )
    # A name that only starts like the mount is elsewhere.
    sibling = tmp_path / "never-made-too"
    sibling.mkdir()
    assert check_backing_dev(f"{sibling}/b", mountinfo_path=mountinfo) == f"{sibling}/b"


@pytest.mark.parametrize(
    "path, err",
    [("{p}/dir", errno.EISDIR), ("{p}/full", errno.EEXIST), ("/dev/null", errno.ENOTBLK),
     ("{p}/no/file", errno.ENOENT), ("x", errno.EINVAL)],
)  # fmt: skip
def test_check_backing_dev_errnos_are_what_the_backing_dev_file_answers(paths, path, err):
    with pytest.raises(BackingDevError) as info:
        check_backing_dev(path.format(p=paths))
    assert info.value.errno == err
    assert isinstance(info.value, ConfigError)  # the CLI's exit 2
