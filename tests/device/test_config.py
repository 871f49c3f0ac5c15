"""zramfs.config: sizes as people type them, checked before anything is set up."""

import re

import pytest

from zramfs.config import (
    DEFAULT_SWAP_MAX,
    PAGE_SIZE,
    ConfigError,
    InvalidNameError,
    SizeError,
    check_disksize,
    check_name,
    default_swap_size,
    mem_total,
    parse_size,
)

GiB = 1 << 30


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("0", 0),
        ("4096B", 4096),
        ("4k", 4096),
        ("4K", 4096),
        ("4KiB", 4096),
        ("4kb", 4096),
        ("512M", 512 << 20),
        ("512 MiB", 512 << 20),
        ("4G", 4 * GiB),
        ("4g", 4 * GiB),
        ("1T", 1 << 40),
        ("1.5K", 1536),
        ("1.5G", 3 * GiB // 2),
        (" 8M ", 8 << 20),
        (".5M", 512 << 10),
    ],
)
def test_parse_size_suffixes(text, expected):
    assert parse_size(text) == expected


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


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "size is empty"),
        ("   ", "size is empty"),
        ("-1", "size '-1' is negative"),
        ("-4G", "size '-4G' is negative"),
        (
            "lots",
            "size 'lots' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM",
        ),
        (
            "4X",
            "size '4X' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM",
        ),
        (
            "4GG",
            "size '4GG' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM",
        ),
        (
            "1e9",
            "size '1e9' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM",
        ),
        (
            "4%G",
            "size '4%G' is not a number of bytes, a number with a K/M/G/T suffix, or N% of RAM",
        ),
        ("0.1K", "size '0.1K' is not a whole number of bytes"),
        ("1.5", "size '1.5' is not a whole number of bytes"),
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
    with pytest.raises(SizeError, match=r"^size 1536 is not a multiple of 4096 bytes"):
        check_disksize(parse_size("1.5K"))


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


@pytest.mark.parametrize("name", ["", "-x", ".x", "_x", "a/b", "..", "a b", "zram0\n", "é", "a" * 65])
def test_check_name_refuses(name):
    message = (
        f"name {name!r} must be 1 to 64 letters, digits, '_', '.' or '-', "
        "not starting with '_', '.' or '-'"
    )
    with pytest.raises(InvalidNameError, match="^" + re.escape(message) + "$"):
        check_name(name)
    assert issubclass(InvalidNameError, ConfigError)
