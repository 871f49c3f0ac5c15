"""zram's text for idle, writeback, recompress and recomp_algorithm, parsed
as the kernel's store functions parse it (errno included)."""

import errno

import pytest

from zramfs._pp_args import (
    WB_HUGE,
    WB_IDLE,
    InvalidArgumentError,
    parse_idle,
    parse_recomp_algorithm,
    parse_recompress,
)


def test_idle():
    assert parse_idle("all\n") is None
    assert parse_idle("86400") == 86400
    assert parse_idle(b"0x10") == 16  # kstrtouint base 0
    for bad in ("", "some", "-1", "1.5"):
        with pytest.raises(InvalidArgumentError):
            parse_idle(bad)
    with pytest.raises(InvalidArgumentError) as info:
        parse_idle(str(1 << 32))
    assert info.value.errno == errno.EINVAL  # idle_store: any kstrtouint failure


def test_recomp_algorithm():
    assert parse_recomp_algorithm("algo=zstd") == ("zstd", 1, None)
    assert parse_recomp_algorithm("priority=2 algo=deflate\n") == ("deflate", 2, None)
    assert parse_recomp_algorithm("algo=zstd level=-3 priority=3") == ("zstd", 3, -3)
    for bad in (
        "priority=1",
        "algo",
        "algo=zstd priority=4",
        "algo=zstd priority=0",
        "algo=zstd priority=x",
        "algo=zstd level=high",
    ):
        with pytest.raises(InvalidArgumentError):
            parse_recomp_algorithm(bad)


def test_recompress():
    assert parse_recompress("") == {
        "mode": 0,
        "threshold": 0,
        "max_pages": None,
        "algo": None,
        "priority": None,
    }
    args = parse_recompress("type=huge_idle threshold=3000 max_pages=10 algo=zstd priority=2 x=y")
    assert args == {
        "mode": WB_HUGE | WB_IDLE,
        "threshold": 3000,
        "max_pages": 10,
        "algo": "zstd",
        "priority": 2,
    }
    assert parse_recompress("type=cold")["mode"] == 0  # the kernel ignores an unknown type
    for bad in ("type", "threshold=-1", "max_pages=ten", "threshold="):
        with pytest.raises(InvalidArgumentError):
            parse_recompress(bad)
