"""zramfs.codecs: every algorithm round-trips a page, names and params are checked."""

import os
import threading
import zlib

import lz4.block
import pytest
import zstandard

from zramfs.codecs import (
    CODECS,
    DEFAULT_ALGORITHM,
    NOT_IN_THIS_BUILD,
    PAGE_SIZE,
    AlgorithmParams,
    AlgorithmParamsRequest,
    InvalidCodecParamsError,
    UnknownAlgorithmError,
    get_codec,
    parse_algorithm_params,
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
    # The kernel's order (zcomp.c's backends[]): lzo (when python-lzo is
    # installed), lz4, lz4hc, zstd, deflate.
    assert CODECS in (
        ("lzo", "lz4", "lz4hc", "zstd", "deflate"),
        ("lz4", "lz4hc", "zstd", "deflate"),
    )
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
    ("name", "level"),
    [("lz4", 8), ("lz4hc", 3), ("lz4hc", 12), ("zstd", 1), ("zstd", 19), ("deflate", 1)],
)
def test_levels_round_trip(name, level):
    codec = get_codec(name, level=level)
    assert codec.level == level
    page = _pages()["fio60"]
    assert codec.decompress(codec.compress(page)) == page


def test_default_levels():
    defaults = {"lzo": 1, "lz4": None, "lz4hc": 9, "zstd": 3, "deflate": 6}
    assert [get_codec(n).level for n in CODECS] == [defaults[n] for n in CODECS]


@pytest.mark.parametrize("name", ["lzma", "LZ4", "", "lzo1x"])
def test_unknown_algorithm(name):
    with pytest.raises(
        UnknownAlgorithmError,
        match=rf"^unknown compression algorithm '{name}'; known: {' '.join(CODECS)}$",
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


# --- algorithm_params ---------------------------------------------------------


def _library(name, level, page):
    """What the library itself makes of ``page`` at ``level``."""
    if name == "lz4":
        return lz4.block.compress(page, mode="fast", acceleration=level, store_size=False)
    if name == "lz4hc":
        return lz4.block.compress(
            page, mode="high_compression", compression=level, store_size=False
        )
    if name == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(page)
    return zlib.compress(page, level, wbits=-15)


@pytest.mark.parametrize(
    ("name", "levels"),
    [("lz4", (1, 64)), ("lz4hc", (1, 12)), ("zstd", (1, 19)), ("deflate", (0, 9))],
)
def test_level_reaches_the_library(name, levels):
    # Byte for byte what the library makes at that level, and the two ends
    # of the range differ: the level is not dropped on the way.
    page = b"".join(
        b"%05d the quick brown fox %s\n" % (i, os.urandom(6).hex().encode()) for i in range(120)
    )[:PAGE_SIZE]
    outputs = []
    for level in levels:
        codec = get_codec(name, level=level)
        outputs.append(codec.compress(page))
        assert outputs[-1] == _library(name, level, page)
        assert codec.decompress(outputs[-1]) == page
    assert outputs[0] != outputs[1]


@pytest.mark.parametrize("name", ["zstd", "lz4", "lz4hc"])
def test_dictionary_round_trips_and_helps_alike_pages(name):
    sample = b"".join(b"%06d zramfs log line: request served in 12 us\n" % i for i in range(2000))
    dictionary = sample[:32768]
    page = sample[50000 : 50000 + PAGE_SIZE]
    with_dict = get_codec(name, dictionary=dictionary)
    plain = get_codec(name)
    assert with_dict.dictionary == dictionary
    assert with_dict.decompress(with_dict.compress(page)) == page
    assert len(with_dict.compress(page)) < len(plain.compress(page))


def test_deflate_takes_no_dictionary():
    with pytest.raises(
        InvalidCodecParamsError, match=r"^deflate takes no dictionary \(zstd, lz4 and lz4hc do\)$"
    ):
        get_codec("deflate", dictionary=b"abc")


def test_empty_dictionary():
    with pytest.raises(InvalidCodecParamsError, match="^the dictionary is empty$"):
        get_codec("zstd", dictionary=b"")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("level=3", AlgorithmParamsRequest(None, 0, 3, None)),
        ("algo=zstd level=-5\n", AlgorithmParamsRequest("zstd", 0, -5, None)),
        ("  priority=0   dict=/a/b  ", AlgorithmParamsRequest(None, 0, None, "/a/b")),
        ('dict="/with space/d" level=+7', AlgorithmParamsRequest(None, 0, 7, "/with space/d")),
        ("", AlgorithmParamsRequest(None, 0, None, None)),
    ],
)
def test_parse_algorithm_params(text, expected):
    assert parse_algorithm_params(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("level", r"'level' has no value \(algorithm_params takes key=value\)"),
        ("level=", r"'level=' has no value"),
        ("level=3x", "level=3x: not a decimal number"),
        ("level=99999999999", "level=99999999999: out of range"),
        (
            "winbits=3",
            r"unknown algorithm parameter 'winbits' \(known: algo, priority, level, dict\)",
        ),
        ('dict="/a', "algorithm_params has an unclosed double quote"),
    ],
)
def test_parse_algorithm_params_refuses(text, message):
    with pytest.raises(InvalidCodecParamsError, match=f"^{message}"):
        parse_algorithm_params(text)


def test_resolve_checks_against_the_selected_algorithm(tmp_path):
    dict_file = tmp_path / "d"
    dict_file.write_bytes(b"zramfs " * 1000)
    params = parse_algorithm_params(f"algo=zstd level=7 dict={dict_file}").resolve("zstd")
    assert params == AlgorithmParams(7, b"zramfs " * 1000)
    with pytest.raises(
        InvalidCodecParamsError, match=r"^algo=zstd is not this device's algorithm \(lz4\)"
    ):
        parse_algorithm_params("algo=zstd").resolve("lz4")
    with pytest.raises(
        InvalidCodecParamsError, match=r"^priority=1: zramfs has only the primary algorithm"
    ):
        parse_algorithm_params("priority=1").resolve("lz4")
    with pytest.raises(
        InvalidCodecParamsError, match="^lz4hc level must be between 1 and 12, not 13$"
    ):
        parse_algorithm_params("level=13").resolve("lz4hc")
    with pytest.raises(
        InvalidCodecParamsError, match="^dict=/nonexistent: No such file or directory$"
    ):
        parse_algorithm_params("dict=/nonexistent").resolve("zstd")
    with pytest.raises(InvalidCodecParamsError, match="^deflate takes no dictionary"):
        parse_algorithm_params(f"dict={dict_file}").resolve("deflate")


@pytest.mark.parametrize("name", ["zstd", "lz4", "lz4hc"])
def test_a_device_with_a_dictionary_codec(name):
    from zramfs.device import BlockDevice

    sample = b"".join(b"%06d zramfs log line\n" % i for i in range(3000))
    with BlockDevice(1 << 20, codec=get_codec(name, dictionary=sample[:16384])) as dev:
        data = sample[: 64 * PAGE_SIZE]
        dev.write(0, data)
        assert dev.read(0, len(data)) == data
        assert dev.stats().compr_data_size < len(data) // 4


@pytest.mark.parametrize("name", sorted(NOT_IN_THIS_BUILD))
def test_kernel_names_this_build_lacks_say_why_and_what_is_closest(name):
    with pytest.raises(
        UnknownAlgorithmError,
        match=rf"^compression algorithm '{name}' is not in this build: .*closest here is (lzo|lz4)$",
    ):
        get_codec(name)


@pytest.mark.skipif(
    "lzo" not in CODECS, reason="python-lzo (the zramfs[lzo] extra) is not installed"
)
def test_lzo_is_lzo1x_1_as_the_kernel_stores_it():
    import lzo

    codec = get_codec("lzo")
    page = _pages()["fio60"]
    data = codec.compress(memoryview(page))
    # Raw LZO1X-1, no header: what the kernel's lzo backend stores.
    assert data == lzo.compress(page, 1, False)
    assert codec.decompress(data) == page
