"""The one exception -> errno table, and the package's public names."""

import errno

import pytest

import zramfs.fuse
from allocator import PoolFullError
from zramfs import fs
from zramfs.device import MemLimitError, OutOfRangeError
from zramfs.fuse import errno_for


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (fs.NotFoundError("x"), errno.ENOENT),
        (fs.NotPermittedError("x"), errno.EPERM),
        (fs.ReadOnlyError("x"), errno.EACCES),
        (fs.InvalidValueError("x"), errno.EINVAL),
        (fs.NotSupportedError("x"), errno.EOPNOTSUPP),
        (fs.IsADirectoryError("x"), errno.EISDIR),
        (fs.NotADirectoryError("x"), errno.ENOTDIR),
        (MemLimitError("x"), errno.ENOSPC),
        (OutOfRangeError("x"), errno.ENOSPC),
        (PoolFullError("x"), errno.ENOSPC),
        (OSError(errno.EXDEV, "x"), errno.EXDEV),
        (RuntimeError("x"), errno.EIO),
        (ValueError("x"), errno.EIO),
        (KeyError("x"), errno.EIO),
    ],
)
def test_errno_for(exc, expected):
    assert errno_for(exc) == expected


def test_subclasses_map_like_their_base():
    class Special(fs.NotFoundError):
        pass

    assert errno_for(Special()) == errno.ENOENT


def test_public_names():
    for name in zramfs.fuse.__all__:
        assert hasattr(zramfs.fuse, name), name
    assert "dev" in zramfs.fuse.BACKENDS
    for name in (
        "Session",
        "errno_for",
        "BACKENDS",
        "MountError",
        "MountpointBusyError",
        "NoFuseDeviceError",
    ):
        assert name in zramfs.fuse.__all__


def test_unknown_backend(tmp_path):
    with pytest.raises(zramfs.fuse.UnknownBackendError, match="unknown FUSE backend 'nbd'"):
        zramfs.fuse.Session(object(), tmp_path, backend="nbd")


def test_the_dev_backend_supports_discard():
    assert zramfs.fuse.supports_discard("dev") is True


def test_the_pyfuse3_backend_says_it_cannot_discard():
    # pyfuse3 3.5 registers no FALLOCATE handler (issue 5).
    assert zramfs.fuse.supports_discard("pyfuse3") is False
