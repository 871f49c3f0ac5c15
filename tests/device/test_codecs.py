"""zramfs.codecs: every algorithm round-trips a page, names and params are checked."""

import os
import threading

import pytest

from zramfs.codecs import (
    CODECS,
    DEFAULT_ALGORITHM,
    PAGE_SIZE,
    InvalidCodecParamsError,
    UnknownAlgorithmError,
    get_codec,
)


def _pages():
    rng_part = os.urandom(1638)
    return {
        "zeros": bytes(PAGE_SIZE),
        # fio buffer_compress_percentage=60: 40 % random, then zeros.
        "fio60": rng_part + bytes(PAGE_SIZE - len(rng_part)),
        "random": os.urandom(PAGE_SIZE),
        "text": (b"the quick brown fox jumps over the lazy dog\n" * 100)[:PAGE_SIZE],
    }


def test_names_in_comp_algorithm_order():
    assert CODECS == ("lz4", "lz4hc", "zstd", "deflate")
    assert DEFAULT_ALGORITHM == "lz4"


@pytest.mark.parametrize("name", CODECS)
def test_round_trip(name):
    codec = get_codec(name)
    assert codec.name == name
    for kind, page in _pages().items():
        # A memoryview slice is what the device passes: no copy.
        data = codec.compress(memoryview(page))
        assert isinstance(data, bytes), kind
        assert codec.decompress(data) == page, kind
    assert len(codec.compress(bytes(PAGE_SIZE))) < 100


@pytest.mark.parametrize(
    ("name", "level"), [("lz4", 8), ("lz4hc", 3), ("lz4hc", 12), ("zstd", 1), ("zstd", 19), ("deflate", 1)]
)
def test_levels_round_trip(name, level):
    codec = get_codec(name, level=level)
    assert codec.level == level
    page = _pages()["fio60"]
    assert codec.decompress(codec.compress(page)) == page


def test_default_levels():
    assert [get_codec(n).level for n in CODECS] == [None, 9, 3, 6]


@pytest.mark.parametrize("name", ["lzo", "LZ4", "", "lzo-rle"])
def test_unknown_algorithm(name):
    with pytest.raises(
        UnknownAlgorithmError,
        match=rf"^unknown compression algorithm '{name}'; known: lz4 lz4hc zstd deflate$",
    ):
        get_codec(name)


def test_unknown_algorithm_is_value_error():
    with pytest.raises(ValueError, match="unknown compression algorithm None"):
        get_codec(None)


@pytest.mark.parametrize(
    ("name", "level", "message"),
    [
        ("zstd", 0, "zstd level must be between 1 and 22, not 0"),
        ("zstd", 23, "zstd level must be between 1 and 22, not 23"),
        ("lz4hc", 13, "lz4hc level must be between 1 and 12, not 13"),
        ("deflate", -1, "deflate level must be between 0 and 9, not -1"),
        ("lz4", "1", "lz4 level must be an int, not '1'"),
        ("lz4", True, "lz4 level must be an int, not True"),
    ],
)
def test_bad_level(name, level, message):
    with pytest.raises(InvalidCodecParamsError, match=f"^{message}$"):
        get_codec(name, level=level)
    assert issubclass(InvalidCodecParamsError, ValueError)


@pytest.mark.parametrize("name", CODECS)
def test_corrupt_data_never_passes_as_a_page(name):
    codec = get_codec(name)
    data = codec.compress(_pages()["text"])
    try:
        page = codec.decompress(data[: len(data) // 2])
    except Exception:
        return
    assert len(page) != PAGE_SIZE or page != _pages()["text"]


@pytest.mark.parametrize("name", CODECS)
def test_threads_share_a_codec(name):
    # zstd keeps a context per thread; every codec must be safe to share.
    codec = get_codec(name)
    errors = []

    def work(seed):
        page = bytes([seed]) * 100 + os.urandom(2000) + bytes(PAGE_SIZE - 2100)
        try:
            for _ in range(200):
                assert codec.decompress(codec.compress(page)) == page
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
