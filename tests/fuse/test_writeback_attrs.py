"""zram's idle tracking, writeback and recompression files, through a real mount.

idle, backing_dev, writeback, writeback_limit, writeback_limit_enable,
writeback_batch_size, bd_stat, recomp_algorithm and recompress: their
formats, when each may be written, and the errno of every refusal (zram's
store functions, Linux 6.18).  What writeback and recompression do to the
data is checked by reading `disk` back.  Writebacks that run for long, and
I/O to `disk` meanwhile, are in tests/system/test_writeback_system.py.
"""

import errno
import os
import random
import stat
import subprocess

import pytest

from tests._support.fuse import DISKSIZE

PAGE = 4096
NR_PAGES = DISKSIZE // PAGE


def bd_stat(d):
    return dict(
        zip(
            ("bd_count", "bd_reads", "bd_writes", "wb_failures"),
            map(int, d.attr("bd_stat").split()),
            strict=True,
        )
    )


def refused(d, name, text):
    """The errno a write of `text` to attribute `name` gets."""
    with pytest.raises(OSError) as info:
        d.store(name, text)
    return info.value.errno


def pages(n, seed=0):
    """n pages: every other one text-like (compresses to ~1/3), the rest random (huge)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            out.append(rnd.randbytes(PAGE))
        else:
            words = [rnd.choice((b"swap", b"zram", b"page", b"slot", b"idle")) for _ in range(1024)]
            out.append(b"".join(words)[:PAGE])
    return out


def write_disk(d, data, offset=0):
    with open(d.disk, "r+b", buffering=0) as f:
        assert os.pwrite(f.fileno(), data, offset) == len(data)


def read_disk(d, length, offset=0):
    with open(d.disk, "rb", buffering=0) as f:
        return os.pread(f.fileno(), length, offset)


@pytest.fixture
def backed(start, tmp_path):
    """A device with a backing file (not there yet: the init creates it)."""
    path = tmp_path / "backing"
    d = start(backing_dev=str(path))
    d.backing = path
    return d


def test_the_new_files_before_init(uninitialised):
    d = uninitialised
    assert d.attr("backing_dev") == "none\n"
    assert d.attr("bd_stat") == "       0        0        0        0\n"
    assert d.attr("recomp_algorithm") == ""
    assert d.attr("writeback_limit") == "0\n"
    assert d.attr("writeback_limit_enable") == "0\n"
    assert d.attr("writeback_batch_size") == "32\n"
    # zram's post-processing stores refuse an uninitialised device.
    assert refused(d, "idle", "all") == errno.EINVAL
    assert refused(d, "writeback", "idle") == errno.EINVAL
    assert refused(d, "recompress", "type=idle") == errno.EINVAL


@pytest.mark.parametrize("name", ["idle", "writeback", "recompress"])
def test_write_only_files_cannot_be_read(zram, name):
    with pytest.raises(PermissionError):
        zram.attr(name)


def test_writeback_without_a_backing_dev_is_enodev(zram):
    write_disk(zram, b"".join(pages(4)))
    assert refused(zram, "writeback", "huge") == errno.ENODEV
    assert refused(zram, "writeback", "page_index=0") == errno.ENODEV


def test_backing_dev_before_init_only(uninitialised, tmp_path):
    d = uninitialised
    (tmp_path / "full").write_bytes(b"data")
    assert refused(d, "backing_dev", "relative/path") == errno.EINVAL
    assert refused(d, "backing_dev", str(tmp_path)) == errno.EISDIR
    assert refused(d, "backing_dev", f"{tmp_path}/no/file") == errno.ENOENT
    assert refused(d, "backing_dev", str(tmp_path / "full")) == errno.EEXIST
    # On zramfs itself (here: this very mount) writeback could deadlock.
    assert refused(d, "backing_dev", str(d.mountpoint / "backing")) == errno.EINVAL
    assert refused(d, "backing_dev", str(d.disk)) == errno.EINVAL
    assert d.attr("backing_dev") == "none\n"

    path = tmp_path / "backing"
    d.store("backing_dev", f"{path}\n")  # echo's newline is dropped, as zram does
    assert d.attr("backing_dev") == f"{path}\n"
    assert not path.exists()  # made by the init, sized to the disk
    d.store("disksize", "16M")
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 16 << 20
    assert st.st_blocks == 0  # sparse
    assert refused(d, "backing_dev", str(tmp_path / "other")) == errno.EBUSY

    # reset drops the backing device, as zram_reset_device does; the file is
    # emptied, so it can be given again.
    d.store("reset", "1")
    assert d.attr("backing_dev") == "none\n"
    assert path.stat().st_size == 0
    d.store("backing_dev", str(path))
    assert d.attr("backing_dev") == f"{path}\n"


def test_writeback_moves_pages_out_and_reads_them_back(backed):
    d = backed
    data = pages(256)
    write_disk(d, b"".join(data))
    before = d.mm_stat()
    d.store("idle", "all")
    d.store("writeback", "idle")
    # Every page was idle: all 256 went out, each one 4 KiB block.
    assert bd_stat(d) == {"bd_count": 256, "bd_reads": 0, "bd_writes": 256, "wb_failures": 0}
    after = d.mm_stat()
    assert after["orig_data_size"] == before["orig_data_size"] == 256 * PAGE
    assert after["compr_data_size"] == 0
    assert after["huge_pages"] == 0
    assert d.backing.stat().st_blocks * 512 >= 256 * PAGE
    flags = [line.split()[-1] for line in d.attr("block_state").splitlines()]
    assert len(flags) == 256 and all("w" in f for f in flags)

    assert read_disk(d, 256 * PAGE) == b"".join(data)
    # At least one backing read per page (a request that starts or ends
    # inside a page, where FUSE cuts an unaligned user buffer, reads it again).
    assert bd_stat(d)["bd_reads"] >= 256
    # A rewrite frees the slot's block; the backing file gets its hole back.
    write_disk(d, b"".join(pages(64, seed=1)))
    assert bd_stat(d)["bd_count"] == 192
    assert read_disk(d, 256 * PAGE) == b"".join(pages(64, seed=1) + data[64:])
    assert d.io_stat()["failed_reads"] == 0


def test_writeback_modes_and_page_indexes(backed):
    d = backed
    data = pages(16)
    write_disk(d, b"".join(data))
    d.store("writeback", "page_index=3")
    assert bd_stat(d)["bd_count"] == 1
    d.store("writeback", "page_indexes=4-7")
    assert bd_stat(d)["bd_count"] == 5
    # huge: the random pages (odd indexes) not written back yet: 1, 9, 11, 13, 15.
    d.store("writeback", "type=huge")
    assert bd_stat(d)["bd_count"] == 10
    assert d.mm_stat()["huge_pages"] == 0
    # Nothing was marked idle: an idle writeback finds nothing.
    d.store("writeback", "idle")
    assert bd_stat(d)["bd_count"] == 10
    assert read_disk(d, 16 * PAGE) == b"".join(data)


@pytest.mark.parametrize(
    "text, err",
    [
        ("bogus", errno.EINVAL),
        ("type=cold", errno.EINVAL),
        ("page_index=x", errno.EINVAL),
        (f"page_index={NR_PAGES}", errno.ERANGE),
        ("page_indexes=9-3", errno.ERANGE),
        ("page_indexes=3", errno.EINVAL),
    ],
)
def test_writeback_refuses_bad_requests(backed, text, err):
    assert refused(backed, "writeback", text) == err


def test_writeback_limit(backed):
    d = backed
    write_disk(d, b"".join(pages(32)))
    d.store("writeback_limit_enable", "1")
    assert d.attr("writeback_limit_enable") == "1\n"
    # No budget: writeback_store's EIO, nothing written.
    assert refused(d, "writeback", "huge") == errno.EIO
    assert bd_stat(d)["bd_writes"] == 0
    d.store("writeback_limit", "5")
    # Five pages go out, then the budget is used up: EIO again.
    assert refused(d, "writeback", "huge") == errno.EIO
    assert bd_stat(d)["bd_writes"] == 5
    assert d.attr("writeback_limit") == "0\n"
    d.store("writeback_limit_enable", "0")
    d.store("writeback", "huge")
    assert bd_stat(d)["bd_count"] == 16


def test_writeback_settings(zram):
    d = zram
    d.store("writeback_batch_size", "+8\n")
    assert d.attr("writeback_batch_size") == "8\n"
    d.store("writeback_limit", str((1 << 64) - 1))
    assert d.attr("writeback_limit") == f"{(1 << 64) - 1}\n"
    d.store("writeback_limit_enable", "7")  # any non-zero number is "on"
    assert d.attr("writeback_limit_enable") == "1\n"
    for name, bad in [
        ("writeback_batch_size", "0"),
        ("writeback_batch_size", str(1 << 32)),
        ("writeback_limit", "-1"),
        ("writeback_limit", str(1 << 64)),
        ("writeback_limit", "1K"),
        ("writeback_limit_enable", "yes"),
    ]:
        assert refused(d, name, bad) == errno.EINVAL, (name, bad)
    # They live in struct zram: a reset keeps them.
    d.store("reset", "1")
    assert d.attr("writeback_batch_size") == "8\n"
    assert d.attr("writeback_limit_enable") == "1\n"


def test_idle(zram):
    d = zram
    write_disk(d, b"".join(pages(8)))
    d.store("idle", "all\n")
    d.store("idle", "3600")  # not touched for an hour: nothing is that old
    d.store("idle", "0x10")  # kstrtouint base 0
    for bad in ("some", "-1", "1.5", str(1 << 32)):
        assert refused(d, "idle", bad) == errno.EINVAL, bad


def test_recomp_algorithm_and_recompress(start):
    d = start(size=None)
    assert refused(d, "recomp_algorithm", "priority=1") == errno.EINVAL  # algo= required
    assert refused(d, "recomp_algorithm", "algo=zstd priority=4") == errno.EINVAL
    assert refused(d, "recomp_algorithm", "algo=nope") == errno.EINVAL
    assert refused(d, "recomp_algorithm", "algo=" + "x" * 200) == errno.E2BIG
    d.store("recomp_algorithm", "algo=deflate priority=2")
    d.store("recomp_algorithm", "algo=zstd level=19\n")  # priority 1
    listed = "lzo lz4 lz4hc zstd deflate "
    assert d.attr("recomp_algorithm") == (
        "#1: " + listed.replace("zstd", "[zstd]") + "\n"
        "#2: " + listed.replace("deflate", "[deflate]") + "\n"
    )
    d.store("disksize", "16M")
    assert refused(d, "recomp_algorithm", "algo=lz4hc priority=3") == errno.EBUSY

    data = pages(64)
    write_disk(d, b"".join(data))
    before = d.mm_stat()["compr_data_size"]
    assert refused(d, "recompress", "algo=lz4hc") == errno.EINVAL  # not a recomp_algorithm
    assert refused(d, "recompress", "threshold=9999") == errno.EINVAL  # >= huge_class_size
    d.store("idle", "all")
    d.store("recompress", "type=idle priority=1")
    after = d.mm_stat()["compr_data_size"]
    assert after < before
    flags = [line.split()[-1] for line in d.attr("block_state").splitlines()]
    assert sum("r" in f for f in flags) == 32  # the text pages; random ones do not shrink
    assert read_disk(d, 64 * PAGE) == b"".join(data)
    # reset drops the secondary algorithms, as zram_destroy_comps does.
    d.store("reset", "1")
    assert d.attr("recomp_algorithm") == ""


def test_settings_from_the_daemon_command_line(start, tmp_path):
    path = tmp_path / "backing"
    d = start(backing_dev=str(path), recomp_algorithms=("algo=zstd priority=1",))
    assert d.attr("backing_dev") == f"{path}\n"
    assert d.attr("recomp_algorithm").startswith("#1: ")
    assert path.stat().st_size == d.disksize


def test_bd_stat_and_mm_stat_agree(backed, backend):
    d = backed
    write_disk(d, b"".join(pages(100)))
    d.store("writeback", "page_indexes=0-49")
    mm, bd = d.mm_stat(), bd_stat(d)
    # Written-back pages stay counted as stored, outside the pool.
    assert mm["orig_data_size"] == 100 * PAGE
    assert bd["bd_count"] == 50
    assert mm["huge_pages"] == 25  # the random half of pages 50-99
    if backend == "pyfuse3":
        return  # it cannot discard (README: FUSE backends)
    # A discard frees written-back slots and their blocks alike.
    subprocess.run(
        ["fallocate", "--punch-hole", "--keep-size", "-o", "0", "-l", str(10 * PAGE), d.disk],
        check=True,
    )
    assert bd_stat(d)["bd_count"] == 40
    assert d.mm_stat()["orig_data_size"] == 90 * PAGE
