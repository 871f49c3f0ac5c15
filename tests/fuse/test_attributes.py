"""zram's attribute files at the mount root: names, modes, formats, stores."""

import errno
import os
import random
import stat
import subprocess

import pytest

from zramfs.codecs import CODECS

MiB = 1 << 20

ATTR_MODES = {
    "disksize": 0o644,
    "initstate": 0o444,
    "reset": 0o200,
    "comp_algorithm": 0o644,
    "algorithm_params": 0o200,
    "mm_stat": 0o444,
    "io_stat": 0o444,
    "mem_limit": 0o644,
    "mem_used_max": 0o644,
    "compact": 0o200,
    "debug_stat": 0o444,
    "block_state": 0o400,
    "classes": 0o444,
    # idle tracking, writeback, recompression (test_writeback_attrs.py)
    "idle": 0o200,
    "backing_dev": 0o644,
    "writeback": 0o200,
    "writeback_limit": 0o644,
    "writeback_limit_enable": 0o644,
    "writeback_batch_size": 0o644,
    "bd_stat": 0o444,
    "recomp_algorithm": 0o644,
    "recompress": 0o200,
    # Beyond zram: the watermark (test_watermark_attrs.py).
    "writeback_watermark": 0o644,
    "writeback_low_watermark": 0o644,
    "writeback_watermark_stat": 0o444,
}


def test_root_lists_disk_and_the_attribute_files(zram):
    assert sorted(os.listdir(zram.mountpoint)) == sorted(["disk", *ATTR_MODES])


@pytest.mark.parametrize("name", sorted(ATTR_MODES))
def test_attribute_file_mode_and_size(zram, name):
    st = os.stat(zram.mountpoint / name)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == ATTR_MODES[name]
    assert st.st_size == 4096  # as sysfs reports


def test_disksize(zram):
    assert zram.attr("disksize") == f"{zram.disksize}\n"


def test_comp_algorithm_in_zram_format(zram):
    # zcomp_available_show: each name and a space, the selected one in
    # brackets, then a newline ("[lzo-rle] lzo lz4 \n" on the kernel).
    text = zram.attr("comp_algorithm")
    assert text == "".join("[lz4] " if c == "lz4" else c + " " for c in CODECS) + "\n"
    assert "[lz4]" in text.split()


def test_comp_algorithm_shows_the_chosen_one(start):
    d = start(algorithm="zstd")
    assert "[zstd]" in d.attr("comp_algorithm").split()


def test_mm_stat_has_nine_columns_that_follow_writes(zram):
    empty = zram.attr("mm_stat")
    assert empty.endswith("\n")
    assert len(empty.split()) == 9
    with open(zram.disk, "r+b", buffering=0) as f:
        f.write(os.urandom(MiB))
        f.write(bytes(MiB))  # same-filled
    s = zram.mm_stat()
    assert s["orig_data_size"] == 2 * MiB
    assert s["same_pages"] == MiB // 4096
    assert s["huge_pages"] == MiB // 4096  # random data does not compress
    assert s["mem_used_total"] >= s["compr_data_size"] >= MiB


def test_io_stat_has_four_columns(zram):
    # zram 6.18's io_stat_show: "%8llu %8llu 0 %8llu\n", the third column
    # (once invalid_io) a bare 0.
    text = zram.attr("io_stat")
    assert text == "       0        0 0        0\n"
    with open(zram.disk, "rb", buffering=0) as f:
        f.seek(zram.disksize + 4096)
        f.read(4096)
    assert zram.attr("io_stat").split()[2] == "0"


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("65536", 65536),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("3M", 3 << 20),
        ("1G", 1 << 30),
        ("2T", 2 << 40),
        ("0x100000", 1 << 20),
        ("0", 0),
    ],
)
def test_mem_limit_takes_memparse_sizes(zram, written, value):
    zram.store("mem_limit", written + "\n")
    assert zram.attr("mem_limit") == f"{value}\n"
    assert zram.mm_stat()["mem_limit"] == value


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        "12X",
        "-5",
        "",
        "1.5M",
        # Past 64 bits (the kernel keeps mem_limit in an unsigned long):
        "99999999T",
        "16E",
        str(1 << 64),
        "0x10000000000000000",
        str((1 << 64) - 4095),  # rounds up to a page: 2^64
    ],
)
def test_mem_limit_refuses_bad_values(zram, bad):
    zram.store("mem_limit", "1M")
    with pytest.raises(OSError) as e:
        zram.store("mem_limit", bad + "\n")
    assert e.value.errno == errno.EINVAL
    assert zram.attr("mem_limit") == f"{1 << 20}\n"


@pytest.mark.parametrize("value", [15 << 60, (1 << 64) - 4096])
def test_mem_limit_takes_the_largest_64_bit_values(zram, value):
    zram.store("mem_limit", f"{value}\n")
    assert zram.attr("mem_limit") == f"{value}\n"


def test_mem_limit_fails_writes_with_enospc(zram):
    zram.store("mem_limit", "1M")
    fd = os.open(zram.disk, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            for i in range(8):
                os.pwrite(fd, os.urandom(MiB), i * MiB)
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert zram.mm_stat()["mem_used_total"] <= MiB
    assert zram.io_stat()["failed_writes"] >= 1
    zram.assert_alive()


def test_mem_used_max_reset_by_writing_zero(zram):
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        os.pwrite(fd, os.urandom(2 * MiB), 0)
        os.pwrite(fd, bytes(2 * MiB), 0)  # same-filled: frees the pool objects
    finally:
        os.close(fd)
    peak = int(zram.attr("mem_used_max"))
    assert peak >= 2 * MiB
    zram.store("mem_used_max", "0\n")
    after = int(zram.attr("mem_used_max"))
    assert after < peak
    assert after == zram.mm_stat()["mem_used_max"]


@pytest.mark.parametrize("bad", ["1", "5", "x"])
def test_mem_used_max_refuses_anything_but_zero(zram, bad):
    with pytest.raises(OSError) as e:
        zram.store("mem_used_max", bad)
    assert e.value.errno == errno.EINVAL


def test_compact_with_1(zram):
    assert zram.store("compact", "1\n") == 2
    zram.assert_alive()


def test_compact_from_a_shell_redirect(zram):
    # `>` opens with O_TRUNC, which must not fail on an attribute file.
    r = subprocess.run(
        ["sh", "-c", f"echo 1 > {zram.mountpoint}/compact"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["sh", "-c", f"echo 8M > {zram.mountpoint}/mem_limit"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert zram.attr("mem_limit") == f"{8 << 20}\n"


def fragment(zram):
    """Store compressible pages, then overwrite every other one with zeros
    (same-filled: its object is freed), leaving zspages half empty."""
    rnd = random.Random(7)
    page = 4096
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        data = b"".join(rnd.randbytes(page // 2) + bytes(page // 2) for _ in range(512))
        os.pwrite(fd, data, 0)
        for i in range(0, 512, 2):
            os.pwrite(fd, bytes(page), i * page)
    finally:
        os.close(fd)
    return data


@pytest.mark.parametrize("written", ["2", "x\n", "0", b"\xff\x00"], ids=["2", "x", "0", "binary"])
def test_compact_runs_on_any_write(zram, written):
    # Kernel zram's compact_store never looks at what was written.
    data = fragment(zram)
    before = zram.mm_stat()
    assert zram.store("compact", written) == len(written)
    after = zram.mm_stat()
    assert after["pages_compacted"] > before["pages_compacted"]
    assert after["mem_used_total"] < before["mem_used_total"]
    with open(zram.disk, "rb", buffering=0) as f:
        for i in range(1, 512, 2):
            f.seek(i * 4096)
            assert f.read(4096) == data[i * 4096 : (i + 1) * 4096]


def test_compact_cannot_be_read(zram):
    with pytest.raises(OSError) as e:
        zram.attr("compact")
    assert e.value.errno == errno.EACCES


@pytest.mark.parametrize("name", ["initstate", "mm_stat", "io_stat"])
def test_read_only_attributes_refuse_writes_even_for_root(zram, name):
    with pytest.raises(OSError) as e:
        zram.store(name, "1")
    assert e.value.errno == errno.EACCES
    with pytest.raises(OSError) as e:
        os.open(zram.mountpoint / name, os.O_RDWR)
    assert e.value.errno == errno.EACCES


def test_attribute_files_read_fresh_each_time(zram):
    # direct_io: no page cache between two reads of mm_stat.
    first = zram.attr("mm_stat")
    with open(zram.disk, "r+b", buffering=0) as f:
        f.write(os.urandom(4096))
    assert zram.attr("mm_stat") != first
