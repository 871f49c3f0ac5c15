"""zramfs.config: sizes as people type them, checked before anything is set up."""

import argparse
import re

import pytest

from zramfs.config import (
    DEFAULT_ALGORITHM,
    DEFAULT_BACKEND,
    DEFAULT_NAME,
    DEFAULT_SWAP_MAX,
    PAGE_SIZE,
    ConfigError,
    DeviceConfig,
    InvalidNameError,
    SizeError,
    check_disksize,
    check_name,
    default_swap_size,
    mem_total,
    memparse,
    parse_size,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("0", 0),
        ("4k", 4096),
        ("4K", 4096),
        ("512M", 512 << 20),
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("1T", 1 << 40),
        ("2P", 2 << 50),
        ("1E", 1 << 60),
        (" 8M ", 8 << 20),
        ("8M\n", 8 << 20),  # echo's newline, as written to an attribute file
        ("0x1000", 4096),  # C notation, as the kernel's simple_strtoull(.., 0)
        ("0X10k", 16 << 10),
        ("010", 8),  # leading-zero octal
        ("0k", 0),
    ],
)
def test_memparse_and_parse_size_read_the_kernel_grammar(text, expected):
    assert memparse(text) == expected
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["4 G", "4KiB", "4kb", "1.5G", ".5M", "08", "0x", "4GG", "", "-1", "1e9"]
)
def test_memparse_refuses_what_the_kernel_would_misread(text):
    # The kernel stops at the first character it cannot read and ignores the
    # rest ("4 G" would be 4 bytes); we refuse instead.
    with pytest.raises(SizeError, match="is not a number with an optional K/M/G/T/P/E suffix$"):
        memparse(text)


def test_parse_size_percent_of_given_ram():
    ram = 8 * GiB
    assert parse_size("50%", ram=ram) == 4 * GiB
    assert parse_size("100%", ram=ram) == ram
    assert parse_size("150%", ram=ram) == 12 * GiB
    assert parse_size("0%", ram=ram) == 0


def test_parse_size_percent_rounds_down_to_a_page():
    # 10% of 1 GiB + 3 bytes is not page aligned; a percentage must still
    # make a valid disksize.
    size = parse_size("10%", ram=GiB + 3)
    assert size % PAGE_SIZE == 0
    assert 0 <= (GiB + 3) // 10 - size < PAGE_SIZE
    check_disksize(size)


def test_parse_size_percent_reads_meminfo():
    assert parse_size("100%") == mem_total() - mem_total() % PAGE_SIZE


NOT_A_SIZE = "is not a number of bytes, a number with a K/M/G/T/P/E suffix, or N% of RAM"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "size is empty"),
        ("   ", "size is empty"),
        ("-1", "size '-1' is negative"),
        ("-4G", "size '-4G' is negative"),
        ("lots", f"size 'lots' {NOT_A_SIZE}"),
        ("4X", f"size '4X' {NOT_A_SIZE}"),
        ("4GG", f"size '4GG' {NOT_A_SIZE}"),
        ("1e9", f"size '1e9' {NOT_A_SIZE}"),
        ("4%G", f"size '4%G' {NOT_A_SIZE}"),
        ("4GiB", f"size '4GiB' {NOT_A_SIZE}"),
        ("1.5G", f"size '1.5G' {NOT_A_SIZE}"),
    ],
)
def test_parse_size_errors(text, message):
    with pytest.raises(SizeError, match="^" + re.escape(message) + "$"):
        parse_size(text)


def test_size_error_is_a_config_error_and_a_value_error():
    assert issubclass(SizeError, ConfigError)
    assert issubclass(SizeError, ValueError)


def test_check_disksize():
    assert check_disksize(4096) == 4096
    assert check_disksize(4 * GiB) == 4 * GiB
    with pytest.raises(SizeError, match=r"^size must be greater than 0$"):
        check_disksize(0)
    with pytest.raises(SizeError, match=r"^size must be greater than 0$"):
        check_disksize(-4096)
    with pytest.raises(
        SizeError, match=r"^size 4097 is not a multiple of 4096 bytes \(the page size\)$"
    ):
        check_disksize(4097)
    with pytest.raises(SizeError, match=r"^size 4097 is not a multiple of 4096 bytes"):
        check_disksize(parse_size("0x1001"))


@pytest.mark.parametrize(
    "ram, expected",
    [
        (2 * GiB, GiB),  # half the RAM
        (8 * GiB, 4 * GiB),  # exactly the cap
        (64 * GiB, DEFAULT_SWAP_MAX),  # capped at 4 GiB
        (1000 * 4096 + 123, 500 * 4096),  # rounded down to a page
        (3 * 4096, 4096),
    ],
)
def test_default_swap_size(ram, expected):
    assert default_swap_size(ram) == expected
    assert default_swap_size(ram) % PAGE_SIZE == 0


def test_default_swap_size_from_meminfo():
    assert default_swap_size() == min(mem_total() // 2, 4 * GiB) // PAGE_SIZE * PAGE_SIZE


def test_mem_total_reads_the_kernel_format(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684320 kB\nMemFree:        1 kB\n")
    assert mem_total(str(meminfo)) == 24684320 * 1024
    meminfo.write_text("MemFree:        1 kB\n")
    with pytest.raises(OSError, match="no MemTotal"):
        mem_total(str(meminfo))


@pytest.mark.parametrize("name", ["zram0", "zramt0", "swap-1", "a", "Z.9_x", "a" * 64])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-x", ".x", "_x", "a/b", "..", "a b", "zram0\n", "é", "a" * 65]
)
def test_check_name_refuses(name):
    message = (
        f"name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
        "not starting with '_', '.' or '-'"
    )
    with pytest.raises(InvalidNameError, match="^" + re.escape(message) + "$"):
        check_name(name)
    assert issubclass(InvalidNameError, ConfigError)


def test_device_config_round_trips_through_the_daemon_command_line():
    configs = [
        DeviceConfig(mountpoint="/mnt/z", size=64 << 20),
        DeviceConfig(
            mountpoint="/run/zramfs/swap-1",
            size=4 * GiB,
            algorithm="zstd",
            mem_limit=GiB,
            name="swap-1",
            fuse_backend="pyfuse3",
            threads=3,
            run_dir="/run/zramfs/.swap-1",
            backing_dev="/var/tmp/swap-1.wb",
            recomp_algorithms=("algo=zstd priority=1 level=9", "algo=deflate priority=2"),
        ),
    ]
    for config in configs:
        parser = argparse.ArgumentParser()
        DeviceConfig.add_arguments(parser, backends=("dev", "pyfuse3"))
        assert DeviceConfig.from_args(parser.parse_args(config.argv())) == config


def test_device_config_defaults_are_the_one_set_of_defaults():
    config = DeviceConfig(mountpoint="/mnt/z", size=4096)
    assert (config.name, config.fuse_backend, config.algorithm) == (
        DEFAULT_NAME,
        DEFAULT_BACKEND,
        DEFAULT_ALGORITHM,
    )
    assert (DEFAULT_NAME, DEFAULT_BACKEND, DEFAULT_ALGORITHM) == ("zram0", "dev", "lz4")
    with pytest.raises(AttributeError):
        config.size = 0  # frozen: what the CLI decided is what the daemon gets
