"""--writeback-watermark and --writeback-low-watermark of mount and swapon:
checked before anything is set up (one line, exit 2), and carried to the
daemon's command line and back unchanged."""

import argparse
import os

import pytest

from zramfs import cli
from zramfs.cli import _common
from zramfs.config import DeviceConfig

MiB = 1 << 20


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["swapon", "--writeback-watermark", "64M"],
            "--writeback-watermark needs --backing-dev (where pages are written back)",
        ),
        (
            ["mount", "/mnt", "--writeback-low-watermark", "64M", "--backing-dev", "/b"],
            "--writeback-low-watermark needs --writeback-watermark",
        ),
        (
            [
                "swapon",
                "--backing-dev=/b",
                "--writeback-watermark=64M",
                "--writeback-low-watermark=64M",
            ],
            f"--writeback-low-watermark ({64 * MiB} bytes) must be below "
            f"--writeback-watermark ({64 * MiB} bytes)",
        ),
        (
            ["swapon", "--backing-dev=/b", "--writeback-watermark=6X"],
            "size '6X' is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM",
        ),
        (
            ["swapon", "--backing-dev=/b", "--writeback-watermark=-1"],
            "size '-1' is negative",
        ),
    ],
)
def test_bad_watermarks_are_one_line_and_exit_2(capsys, argv, message):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", f"zramfs: error: {message}\n")


def test_watermarks_take_sizes_and_percent_of_ram(monkeypatch, tmp_path):
    monkeypatch.setattr(_common, "parse_size", lambda text: _parse(text))
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    args = cli.build_parser().parse_args(
        [
            "swapon",
            "--backing-dev",
            "rel/backing",
            "--writeback-watermark",
            "10%",
            "--writeback-low-watermark",
            "1G",
        ]
    )
    assert _common.watermarks(args) == (10 << 30, 1 << 30)  # 10 % of 100 GiB
    config = _common.device_config(
        args, size=1 << 30, mountpoint="/m", name="zram0", sys_=_FakeSystem()
    )
    assert config.backing_dev == os.path.abspath("rel/backing")
    assert (config.writeback_watermark, config.writeback_low_watermark) == (
        _common.watermarks(args)
    )


def _parse(text):
    from zramfs.config import parse_size

    return parse_size(text, ram=100 * (1 << 30))  # a 100 GiB machine


class _FakeSystem:
    def device_dir(self, name):
        return f"/run/zramfs/.{name}"


def test_the_daemon_command_line_carries_them():
    config = DeviceConfig(
        mountpoint="/m",
        size=1 << 30,
        backing_dev="/var/tmp/backing",
        writeback_watermark=256 * MiB,
        writeback_low_watermark=200 * MiB,
    )
    parser = argparse.ArgumentParser()
    DeviceConfig.add_arguments(parser)
    assert DeviceConfig.from_args(parser.parse_args(config.argv())) == config
    # Off: nothing on the command line.
    assert "--writeback-watermark" not in DeviceConfig(mountpoint="/m", size=4096).argv()
