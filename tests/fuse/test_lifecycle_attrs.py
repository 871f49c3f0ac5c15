"""zram's lifecycle through the attribute files alone: an uninitialised
device, comp_algorithm, algorithm_params and mem_limit before init, disksize
to initialise, reset to go back, and every error zram gives on the way."""

import errno
import hashlib
import os
import random

import pytest

from zramfs.codecs import CODECS

MiB = 1 << 20
PAGE = 4096


def errno_of(call, *args):
    with pytest.raises(OSError) as e:
        call(*args)
    return e.value.errno


def data_of(seed, size):
    """Compressible, not same-filled: half random, half a repeated line."""
    rnd = random.Random(seed)
    return b"".join(
        rnd.randbytes(PAGE // 2) + b"%08d zramfs\n" % i * 128 for i in range(size // PAGE)
    )[:size]


def write_disk(d, offset, data):
    fd = os.open(d.disk, os.O_WRONLY)
    try:
        return os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_disk(d, offset, size):
    fd = os.open(d.disk, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_an_uninitialised_device(uninitialised):
    d = uninitialised
    assert d.attr("initstate") == "0\n"
    assert d.attr("disksize") == "0\n"
    assert "[lz4]" in d.attr("comp_algorithm").split()
    assert [int(x) for x in d.attr("mm_stat").split()] == [0] * 9
    assert [int(x) for x in d.attr("io_stat").split()] == [0] * 4
    assert os.stat(d.disk).st_size == 0
    # A block device of size 0: reads find its end, writes get ENOSPC.
    assert read_disk(d, 0, PAGE) == b""
    assert errno_of(write_disk, d, 0, bytes(PAGE)) == errno.ENOSPC
    # zram's compact_store refuses an uninitialised device.
    assert errno_of(d.store, "compact", "1") == errno.EINVAL
    d.assert_alive()


def test_the_whole_lifecycle(uninitialised, tmp_path):
    d = uninitialised
    d.store("comp_algorithm", "zstd\n")
    d.store("algorithm_params", "algo=zstd level=9\n")
    d.store("mem_limit", "32M\n")
    assert d.attr("comp_algorithm").split().count("[zstd]") == 1
    d.store("disksize", "16M\n")
    assert d.attr("initstate") == "1\n"
    assert d.attr("disksize") == f"{16 * MiB}\n"
    # The kernel's size of disk follows at once (no waiting for the attribute cache).
    assert os.stat(d.disk).st_size == 16 * MiB
    assert d.mm_stat()["mem_limit"] == 32 * MiB
    first = data_of(1, 4 * MiB)
    assert write_disk(d, MiB, first) == len(first)
    assert read_disk(d, MiB, len(first)) == first
    assert d.mm_stat()["orig_data_size"] == len(first)

    # reset: busy while disk is open, then back to an uninitialised device
    # with the defaults.
    fd = os.open(d.disk, os.O_RDONLY)
    try:
        assert errno_of(d.store, "reset", "1") == errno.EBUSY
        assert d.attr("initstate") == "1\n"
    finally:
        os.close(fd)
    d.store("reset", "1\n")
    assert d.attr("initstate") == "0\n"
    assert d.attr("disksize") == "0\n"
    assert os.stat(d.disk).st_size == 0
    assert "[lz4]" in d.attr("comp_algorithm").split()
    assert d.attr("mem_limit") == "0\n"
    assert [int(x) for x in d.attr("mm_stat").split()] == [0] * 9

    # Again, with another algorithm and parameters; the old data is gone.
    d.store("comp_algorithm", "deflate")
    d.store("algorithm_params", "level=1")
    d.store("disksize", "8M")
    assert d.attr("comp_algorithm").split().count("[deflate]") == 1
    assert os.stat(d.disk).st_size == 8 * MiB
    assert read_disk(d, MiB, PAGE) == bytes(PAGE)
    second = data_of(2, 8 * MiB)
    write_disk(d, 0, second)
    assert hashlib.sha256(read_disk(d, 0, 8 * MiB)).digest() == hashlib.sha256(second).digest()
    s = d.mm_stat()
    assert s["orig_data_size"] == 8 * MiB
    assert 0 < s["compr_data_size"] < 8 * MiB
    d.disksize = 8 * MiB
    d.assert_alive()


@pytest.mark.parametrize(
    ("written", "size"),
    [("10000", 12288), ("1M", MiB), ("0x2000", 8192), ("4096\n", 4096), ("1", 4096)],
)
def test_disksize_takes_memparse_rounded_up_to_a_page(uninitialised, written, size):
    uninitialised.store("disksize", written)
    assert uninitialised.attr("disksize") == f"{size}\n"
    assert os.stat(uninitialised.disk).st_size == size


@pytest.mark.parametrize("bad", ["0", "", "abc", "12X", "-4096", "1.5M", "16E"])
def test_disksize_refuses_bad_sizes_with_einval(uninitialised, bad):
    assert errno_of(uninitialised.store, "disksize", bad + "\n") == errno.EINVAL
    assert uninitialised.attr("initstate") == "0\n"


def test_after_init_the_settings_are_busy(zram):
    # As zram: each of these needs a reset first.
    assert errno_of(zram.store, "disksize", "32M") == errno.EBUSY
    assert errno_of(zram.store, "comp_algorithm", "zstd") == errno.EBUSY
    assert errno_of(zram.store, "algorithm_params", "level=1") == errno.EBUSY
    # An unknown name is looked up before the state is checked.
    assert errno_of(zram.store, "comp_algorithm", "nope") == errno.EINVAL
    # mem_limit stays writable.
    zram.store("mem_limit", "16M")
    assert zram.mm_stat()["mem_limit"] == 16 * MiB
    assert "[lz4]" in zram.attr("comp_algorithm").split()
    zram.assert_alive()


@pytest.mark.parametrize("name", sorted(CODECS))
def test_comp_algorithm_takes_every_listed_name(uninitialised, name):
    uninitialised.store("comp_algorithm", name + "\n")
    assert f"[{name}]" in uninitialised.attr("comp_algorithm").split()


@pytest.mark.parametrize(
    ("bad", "err"),
    [
        ("nope", errno.EINVAL),
        ("\n", errno.EINVAL),
        ("lz4 ", errno.EINVAL),
        ("x" * 128, errno.E2BIG),
    ],
)
def test_comp_algorithm_errors(uninitialised, bad, err):
    assert errno_of(uninitialised.store, "comp_algorithm", bad) == err
    assert "[lz4]" in uninitialised.attr("comp_algorithm").split()


@pytest.mark.parametrize(
    "bad",
    [
        "level",  # no value
        "level=",
        "level=x",
        "level=99",  # past lz4hc's 12
        "algo=zstd level=3",  # not this device's algorithm
        "priority=1 level=3",  # zramfs has no recompression algorithms
        "bogus=1",
        "dict=/nonexistent/dictionary",
        'level="3',
    ],
)
def test_algorithm_params_errors(uninitialised, bad):
    uninitialised.store("comp_algorithm", "lz4hc")
    assert errno_of(uninitialised.store, "algorithm_params", bad + "\n") == errno.EINVAL


def test_algorithm_params_is_write_only(uninitialised):
    assert errno_of(uninitialised.attr, "algorithm_params") == errno.EACCES
    assert errno_of(uninitialised.attr, "reset") == errno.EACCES


def test_a_zstd_dictionary(uninitialised, tmp_path):
    d = uninitialised
    sample = b"".join(b"%08d zramfs dictionary sample line\n" % i for i in range(4096))
    dictionary = tmp_path / "zstd.dict"
    dictionary.write_bytes(sample[:16384])
    d.store("comp_algorithm", "zstd")
    d.store("algorithm_params", f"algo=zstd level=3 dict={dictionary}")
    d.store("disksize", "4M")
    data = sample[: 2 * MiB].ljust(2 * MiB, b"\n")
    write_disk(d, 0, data)
    assert read_disk(d, 0, len(data)) == data


@pytest.mark.parametrize(
    ("bad", "err"), [("0", errno.EINVAL), ("x", errno.EINVAL), ("70000", errno.ERANGE)]
)
def test_reset_errors(zram, bad, err):
    assert errno_of(zram.store, "reset", bad) == err
    assert zram.attr("initstate") == "1\n"


def test_reset_of_an_uninitialised_device_puts_the_defaults_back(uninitialised):
    d = uninitialised
    d.store("comp_algorithm", "zstd")
    d.store("mem_limit", "8M")
    d.store("reset", "1")
    assert "[lz4]" in d.attr("comp_algorithm").split()
    assert d.attr("mem_limit") == "0\n"


def test_reset_after_a_daemon_started_with_a_size(zram):
    # --size is only a shortcut for writing disksize: reset undoes it.
    zram.store("reset", "1")
    assert zram.attr("initstate") == "0\n"
    assert os.stat(zram.disk).st_size == 0
    zram.store("disksize", "1M")
    assert os.stat(zram.disk).st_size == MiB


def test_daemon_takes_algorithm_params(start, tmp_path):
    sample = b"".join(b"%06d zramfs sample\n" % i for i in range(4000))
    (tmp_path / "dict").write_bytes(sample[:8192])
    d = start(size=None, algorithm="zstd", algorithm_params=f"level=7 dict={tmp_path / 'dict'}")
    assert d.attr("comp_algorithm").split().count("[zstd]") == 1
    d.store("disksize", "1M")
    write_disk(d, 0, sample[: 16 * PAGE])
    assert read_disk(d, 0, 16 * PAGE) == sample[: 16 * PAGE]
    # Set before init, they are busy now, as if written to the files.
    assert errno_of(d.store, "algorithm_params", "level=1") == errno.EBUSY


@pytest.mark.parametrize("name", ["lzo-rle", "842"])
def test_kernel_names_this_build_lacks_are_einval(uninitialised, name):
    # zram-generator and kernel configs name these; zramfs refuses them
    # (never a silent substitute), as zram refuses a backend it lacks.
    assert errno_of(uninitialised.store, "comp_algorithm", name + "\n") == errno.EINVAL
    assert (
        name not in uninitialised.attr("comp_algorithm").replace("[", " ").replace("]", " ").split()
    )
