"""Writeback to a backing file and recompression, at the device tier.

Each test checks what a user relies on: every page reads back as written,
whether it is in RAM, written back or recompressed; mm_stat, bd_stat and
io_stat count exactly what zram would; a failing or full backing store
loses nothing.  The backing store is a file in tmp_path (a block device is
opened the same way, through O_DIRECT)."""

import errno
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest

from tests._support.pages import huge_page, obj_page
from zramfs._backing import BackingStore
from zramfs._pp_args import InvalidArgumentError, parse_writeback
from zramfs._slots import COMP_PRIORITY_SHIFT, INCOMPRESSIBLE, PP_SLOT, WB
from zramfs.codecs import CODECS
from zramfs.device import (
    PAGE_SIZE,
    BackingIOError,
    BackingStoreError,
    BackingStoreFullError,
    BlockDevice,
    NoBackingDevError,
    NoRecompAlgorithmError,
    PostProcessBusyError,
    WritebackLimitError,
)

NR = 32
B64 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/"


def zstd_only_page(seed):
    # lz4 cannot bring it under huge_class_size, zstd's entropy coder can.
    rng = random.Random(seed)
    return bytes(rng.choice(B64) for _ in range(PAGE_SIZE))


@pytest.fixture
def backing(tmp_path):
    return tmp_path / "backing"


@pytest.fixture
def dev(backing):
    with BlockDevice(NR * PAGE_SIZE, backing_dev=backing) as dev:
        yield dev


def fill(dev, kinds):
    """Write page i of kind kinds[i % len(kinds)]; return the model."""
    model = {}
    for i in range(NR):
        kind = kinds[i % len(kinds)]
        page = {"obj": obj_page, "huge": huge_page, "same": lambda s: bytes([s]) * PAGE_SIZE}[kind](
            i
        )
        dev.write(i * PAGE_SIZE, page)
        model[i] = page
    return model


def check(dev, model):
    for i in range(NR):
        assert dev.read(i * PAGE_SIZE, PAGE_SIZE) == model.get(i, bytes(PAGE_SIZE))
    assert dev.read(0, NR * PAGE_SIZE) == b"".join(
        model.get(i, bytes(PAGE_SIZE)) for i in range(NR)
    )


def wb_slots(dev):
    return [i for i, info in enumerate(dev._table.info) if info & WB]


def test_the_backing_file_is_sparse_private_and_sized_to_the_disk(dev, backing):
    st = os.stat(backing)
    assert st.st_mode & 0o777 == 0o600
    assert st.st_size == NR * PAGE_SIZE
    assert st.st_blocks == 0


def test_a_non_empty_file_or_a_directory_is_refused(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"precious")
    with pytest.raises(BackingStoreError, match="exists and is not empty"):
        BlockDevice(NR * PAGE_SIZE, backing_dev=path)
    assert path.read_bytes() == b"precious"
    with pytest.raises(BackingStoreError, match="neither a block device nor a regular file"):
        BlockDevice(NR * PAGE_SIZE, backing_dev=tmp_path)


def test_writeback_without_a_backing_device():
    with BlockDevice(NR * PAGE_SIZE) as dev:
        with pytest.raises(NoBackingDevError):
            dev.writeback("huge")


def test_huge_writeback_moves_huge_pages_and_counts_exactly(dev, backing):
    model = fill(dev, ["obj", "huge", "same"])
    before = dev.stats()
    huge = [i for i in range(NR) if i % 3 == 1]
    assert dev.writeback("huge") == len(huge)
    assert wb_slots(dev) == huge
    s = dev.stats()
    assert s.orig_data_size == before.orig_data_size  # zram counts WB pages in pages_stored
    assert s.compr_data_size == before.compr_data_size - PAGE_SIZE * len(huge)
    assert s.huge_pages == 0 and s.huge_pages_since == len(huge)
    assert s.same_pages == before.same_pages
    assert dev.bd_stat().split() == [str(len(huge)), "0", str(len(huge)), "0"]
    assert os.stat(backing).st_blocks * 512 == PAGE_SIZE * len(huge)
    check(dev, model)
    # two reads of each written-back page: one alone, one in the run
    assert dev.stats().bd_reads == 2 * len(huge)


def test_idle_writeback_skips_what_was_read_since_the_mark(dev):
    model = fill(dev, ["obj"])
    dev.mark_idle()
    dev.read(5 * PAGE_SIZE, 1)
    dev.write(7 * PAGE_SIZE, obj_page(99))
    model[7] = obj_page(99)
    assert dev.writeback("idle") == NR - 2
    assert 5 not in wb_slots(dev) and 7 not in wb_slots(dev)
    assert dev.stats().compr_data_size == sum(dev._table.info[i] for i in (5, 7))
    check(dev, model)


def test_huge_idle_and_incompressible_modes(dev):
    model = fill(dev, ["obj", "huge"])
    assert dev.writeback("huge_idle") == 0  # nothing idle yet
    dev.mark_idle()
    dev.read(PAGE_SIZE, PAGE_SIZE)
    assert dev.writeback("type=huge_idle") == NR // 2 - 1
    assert dev.writeback("incompressible") == 0  # nothing flagged so
    check(dev, model)


def test_page_index_and_page_indexes(dev):
    model = fill(dev, ["obj", "same"])
    assert dev.writeback("page_index=4 page_indexes=10-13 page_index=3") == 3  # 3, 11, 13 are same
    assert wb_slots(dev) == [4, 10, 12]
    check(dev, model)


@pytest.mark.parametrize(
    "text, code",
    [
        ("bogus", errno.EINVAL),
        ("type=cold", errno.EINVAL),
        (f"page_index={NR}", errno.ERANGE),
        ("page_index=-1", errno.EINVAL),
        ("page_indexes=5", errno.EINVAL),
        ("page_indexes=6-5", errno.ERANGE),
        (f"page_indexes=0-{NR}", errno.ERANGE),
    ],
)
def test_bad_writeback_requests(dev, text, code):
    with pytest.raises(InvalidArgumentError) as info:
        dev.writeback(text)
    assert info.value.errno == code


def test_parse_writeback_follows_the_kernel():
    assert parse_writeback("idle\n", 10) == [(2, 0, 10)]
    assert parse_writeback("page_index=1 type=huge page_index=2", 10) == [(0, 1, 2), (1, 0, 10)]
    assert parse_writeback("unknown=1 page_indexes=2-4", 10) == [(0, 2, 5)]
    assert parse_writeback("", 10) == []


def test_rewrite_and_discard_free_the_block(dev, backing):
    model = fill(dev, ["huge"])
    assert dev.writeback("huge") == NR
    dev.write(0, obj_page(1))
    model[0] = obj_page(1)
    dev.write(PAGE_SIZE + 100, b"x" * 10)  # a partial write reads the block back
    model[1] = model[1][:100] + b"x" * 10 + model[1][110:]
    assert dev.stats().bd_count == NR - 2
    dev.reclaim_backing()
    assert os.stat(backing).st_blocks * 512 == (NR - 2) * PAGE_SIZE
    dev.discard(2 * PAGE_SIZE, 10 * PAGE_SIZE)
    for i in range(2, 12):
        del model[i]
    s = dev.stats()
    assert s.bd_count == NR - 12
    assert s.orig_data_size == (NR - 10) * PAGE_SIZE
    # The discard punched the freed blocks (and those freed before it).
    assert os.stat(backing).st_blocks * 512 == (NR - 12) * PAGE_SIZE
    check(dev, model)


def test_writeback_limit(dev):
    model = fill(dev, ["huge"])
    dev.writeback_limit = 5
    dev.writeback_limit_enable = True
    dev.writeback_batch_size = 2
    with pytest.raises(WritebackLimitError):
        dev.writeback("huge")
    assert len(wb_slots(dev)) == 5 and dev.writeback_limit == 0
    dev.writeback_limit_enable = False
    assert dev.writeback("huge") == NR - 5
    check(dev, model)
    with pytest.raises(InvalidArgumentError):
        dev.writeback_limit = -1
    with pytest.raises(InvalidArgumentError):
        dev.writeback_batch_size = 0


def test_a_full_store_keeps_the_rest_in_ram(dev, tmp_path):
    model = fill(dev, ["huge"])
    dev._backing.close()
    dev._backing = BackingStore(tmp_path / "small", 3 * PAGE_SIZE)
    with pytest.raises(BackingStoreFullError, match="full"):
        dev.writeback("huge")
    assert len(wb_slots(dev)) == 3
    assert all(not info & PP_SLOT for info in dev._table.info)
    assert dev.stats().huge_pages == NR - 3
    assert "full" in dev.writeback_error
    check(dev, model)


def test_a_store_that_fails_loses_nothing(tmp_path):
    # RLIMIT_FSIZE makes every write past 8 blocks fail with EFBIG, as a
    # failing disk would; run apart so the limit touches no other test.
    script = textwrap.dedent(f"""
        import resource, signal
        from zramfs.device import BlockDevice, BackingIOError, PAGE_SIZE
        from zramfs._slots import WB, PP_SLOT
        import random
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        dev = BlockDevice(64 * PAGE_SIZE, backing_dev={str(tmp_path / "b")!r})
        pages = [random.Random(i).randbytes(PAGE_SIZE) for i in range(64)]
        for i, p in enumerate(pages):
            dev.write(i * PAGE_SIZE, p)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * PAGE_SIZE, 8 * PAGE_SIZE))
        dev.writeback_batch_size = 4
        try:
            dev.writeback("huge")
        except BackingIOError as exc:
            print("error", exc.errno)
        s = dev.stats()
        assert s.wb_failures == 1, s
        assert s.bd_count == s.bd_writes == 8, s
        assert s.huge_pages == 56, s
        assert not any(info & PP_SLOT for info in dev._table.info)
        assert dev.read(0, 64 * PAGE_SIZE) == b"".join(pages)
        print("reason", dev.writeback_error)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"error {errno.EFBIG}" in out.stdout
    assert "reason write of 4 blocks" in out.stdout


def test_a_failed_read_is_eio_and_counted(dev, backing):
    fill(dev, ["huge"])
    dev.writeback("page_index=0")
    os.truncate(backing, 0)  # the block is gone: the read comes back short
    with pytest.raises(BackingIOError) as info:
        dev.read(0, PAGE_SIZE)
    assert info.value.errno == errno.EIO
    assert dev.stats().failed_reads == 1


def test_one_postprocessing_at_a_time(dev):
    fill(dev, ["huge"])
    dev.set_recomp_algorithm("zstd")
    dev._pp_lock.acquire()
    try:
        with pytest.raises(PostProcessBusyError):
            dev.writeback("huge")
        with pytest.raises(PostProcessBusyError):
            dev.recompress("type=huge")
    finally:
        dev._pp_lock.release()


def test_io_during_writeback_is_never_lost(dev):
    # A writer rewrites slots while writeback picks them: each page reads
    # back as last written, and every block in use belongs to a WB slot.
    model = fill(dev, ["huge"])
    dev.writeback_batch_size = 1
    stop = threading.Event()
    lock = threading.Lock()

    def writer():
        rng = random.Random(7)
        while not stop.is_set():
            i = rng.randrange(NR)
            page = huge_page(rng.randrange(1 << 30))
            with lock:
                dev.write(i * PAGE_SIZE, page)
                model[i] = page

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20):
            dev.writeback("huge")
            dev.mark_idle()
            with lock:
                dev.discard(0, PAGE_SIZE)
                model.pop(0, None)
    finally:
        stop.set()
        thread.join()
    check(dev, model)
    s = dev.stats()
    assert s.bd_count == len(wb_slots(dev)) == dev._backing.blocks_used


# --- recompression ----------------------------------------------------------


def test_recompress_huge_pages_with_a_secondary_algorithm(dev):
    model = {}
    for i in range(NR):
        model[i] = zstd_only_page(i) if i % 2 else huge_page(i)
        dev.write(i * PAGE_SIZE, model[i])
    with pytest.raises(NoRecompAlgorithmError):
        dev.recompress("type=huge")
    dev.set_recomp_algorithm("zstd", priority=1)
    assert dev.recomp_algorithms == {1: "zstd"}
    before = dev.stats()
    assert dev.recompress("type=huge") == NR // 2
    infos = dev._table.info
    for i in range(NR):
        if i % 2:
            assert infos[i] >> COMP_PRIORITY_SHIFT & 3 == 1 and infos[i] & 0x1FFF < 3629
        else:
            assert infos[i] & INCOMPRESSIBLE  # nothing shrank it: skipped next time
    s = dev.stats()
    assert s.huge_pages == NR // 2 and s.huge_pages_since == before.huge_pages_since
    assert s.compr_data_size == NR // 2 * PAGE_SIZE + sum(
        infos[i] & 0x1FFF for i in range(1, NR, 2)
    )
    assert dev.recompress("type=huge") == 0
    check(dev, model)
    # An incompressible page can still be written back.
    assert dev.writeback("incompressible") == NR // 2
    check(dev, model)


def test_recompress_options(dev):
    # half text, half zeros: deflate stores it in fewer bytes than lz4
    model = {i: zstd_only_page(i)[: PAGE_SIZE // 2] + bytes(PAGE_SIZE // 2) for i in range(NR)}
    for i, page in model.items():
        dev.write(i * PAGE_SIZE, page)
    dev.set_recomp_algorithm("deflate", priority=2)
    with pytest.raises(NoRecompAlgorithmError):
        dev.recompress("algo=zstd")
    with pytest.raises(InvalidArgumentError):
        dev.recompress("threshold=4000")
    with pytest.raises(InvalidArgumentError):
        dev.recompress("type")
    assert dev.recompress("type=idle") == 0  # nothing idle
    dev.mark_idle()
    assert dev.recompress("type=idle max_pages=3 algo=deflate") == 3
    assert dev._table.ac_time[0] >> 31 == 0  # an attempt clears the mark
    assert dev.recompress("priority=2") == NR - 3
    assert dev.recompress("threshold=100") == 0  # all stored by the last algorithm already
    check(dev, model)
    with pytest.raises(PostProcessBusyError):
        dev.set_recomp_algorithm("zstd", priority=2)


def test_recomp_algorithm_text_and_bad_settings():
    with BlockDevice(PAGE_SIZE) as dev:
        assert dev.recomp_algorithm() == ""
        dev.set_recomp_algorithm("zstd")
        dev.set_recomp_algorithm("lz4hc", priority=3, level=12)

        def listing(chosen):
            return " ".join(f"[{c}]" if c == chosen else c for c in CODECS)

        assert dev.recomp_algorithm() == f"#1: {listing('zstd')}\n#3: {listing('lz4hc')}\n"
        with pytest.raises(InvalidArgumentError, match="priority must be 1..3"):
            dev.set_recomp_algorithm("zstd", priority=0)
        with pytest.raises(ValueError, match="unknown compression algorithm"):
            dev.set_recomp_algorithm("lzma")


def test_writeback_cold_takes_the_least_recently_used_first(dev):
    model = {}
    order = [5, 9, 2, 30, 17, 0, 11]  # written in this order, a second apart
    for i in order:
        model[i] = obj_page(i)
        dev.write(i * PAGE_SIZE, model[i])
        dev._epoch -= 1
    dev.read(9 * PAGE_SIZE, PAGE_SIZE)  # now 9 is the most recent
    assert dev.writeback_cold(3) == 3
    assert wb_slots(dev) == sorted([5, 2, 30])
    assert dev.writeback_cold(100) == len(order) - 3
    assert dev.writeback_cold(1) == 0
    check(dev, model)


def test_a_run_of_written_back_pages_is_one_read_and_a_failed_one_is_eio(dev, backing):
    model = fill(dev, ["huge"])
    assert dev.writeback("huge") == NR
    assert dev.read(0, NR * PAGE_SIZE) == b"".join(model[i] for i in range(NR))
    assert dev.stats().bd_reads == NR
    os.truncate(backing, 0)
    with pytest.raises(BackingIOError) as info:
        dev.read(0, 4 * PAGE_SIZE)
    code = info.value.errno
    del info  # its traceback holds views of the slot table, which close() unmaps
    assert code == errno.EIO
    assert dev.stats().failed_reads == 1
