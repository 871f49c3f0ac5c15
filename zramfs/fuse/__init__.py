"""zramfs.fuse: FUSE backends that serve a `zramfs.fs.Filesystem`.

Where this sits: between the kernel's FUSE requests and the inode table.
`Session(fs, mountpoint, backend=...)` is the one switch between backends:

* ``"dev"`` (default, `_session.DevSession`): speaks the FUSE protocol
  directly on /dev/fuse with blocking reader threads; docs/architecture.md
  ("The FUSE transport") has the measurements that chose it.
* ``"pyfuse3"`` (`_pyfuse3`, a second backend, when present).

Only ``"dev"`` can be restarted (`Session.adopt`, `Session.resend`): the
supervisor keeps its /dev/fuse fd while a new daemon starts.

Both call only the Filesystem interface and map its exceptions with the one
table in `errno_for`.  A backend class takes ``(fs, mountpoint, fsname,
threads)`` and has ``mount()``, ``serve()``, ``stop()``, ``abort()`` and
``close()``.
"""

from ._errors import ERRNO_TABLE, errno_for
from ._mount import (
    DEFAULT_THREADS,
    FusermountMissingError,
    MountError,
    MountpointBusyError,
    MountpointMissingError,
    MountpointNotDirectoryError,
    MountpointPermissionError,
    NoFuseDeviceError,
    is_mounted,
)

# Backends the tests and the CLI offer.  A backend is listed once it runs the
# tests in tests/fuse.  pyfuse3 stays listed when it is not installed: its
# mount() then fails with Pyfuse3UnavailableError, loudly, never a skip.
BACKENDS = ("dev", "pyfuse3")


class UnknownBackendError(ValueError):
    """Raised when Session is asked for a backend that does not exist."""


def _backend_class(name):
    if name == "dev":
        from ._session import DevSession

        return DevSession
    if name == "pyfuse3":
        from ._pyfuse3 import Pyfuse3Session

        return Pyfuse3Session
    raise UnknownBackendError(f"unknown FUSE backend {name!r} (choose from {', '.join(BACKENDS)})")


def supports_discard(backend):
    """Whether `backend` answers FALLOCATE, so discard (swapon --discard, fstrim) frees memory.

    A backend class says so with its `supports_discard` attribute.
    """
    return getattr(_backend_class(backend), "supports_discard", False)


class Session:
    """A mounted FUSE filesystem serving `fs` at `mountpoint`, on the chosen backend.

    mount() raises a MountError subclass with a one-line message; serve()
    blocks until the filesystem is unmounted (by stop() or by anyone);
    stop() unmounts lazily, so a loop device still holding `disk` keeps
    being served until it lets go; abort() cuts the connection at once.
    """

    def __init__(self, fs, mountpoint, fsname="zram0", backend="dev", threads=DEFAULT_THREADS):
        self.backend = backend
        self._impl = _backend_class(backend)(fs, mountpoint, fsname=fsname, threads=threads)

    @property
    def mountpoint(self):
        return self._impl.mountpoint

    @property
    def errors(self):
        """Requests that failed with an unexpected exception (answered EIO)."""
        return self._impl.errors

    @property
    def fd(self):
        """The /dev/fuse fd (the dev backend's), for the supervisor to hold."""
        return self._impl.fd

    @property
    def kernel_minor(self):
        """The FUSE minor the kernel offered in INIT (None before INIT, or on pyfuse3)."""
        return getattr(self._impl, "kernel_minor", None)

    @property
    def can_resend(self):
        """Whether a restarted daemon can have pending requests resent (dev backend, kernel 7.40+)."""
        return getattr(self._impl, "can_resend", False)

    def mount(self):
        self._impl.mount()

    def adopt(self, fd, kernel_minor):
        """Serve an fd whose connection is mounted and initialised already (a restart; dev backend)."""
        self._impl.adopt(fd, kernel_minor)

    def resend(self):
        """FUSE_NOTIFY_RESEND (dev backend): replay what a dead daemon read but never answered."""
        self._impl.resend()

    def serve(self):
        self._impl.serve()

    def stop(self):
        self._impl.stop()

    def abort(self):
        return self._impl.abort()

    def close(self):
        self._impl.close()


__all__ = [
    "BACKENDS",
    "DEFAULT_THREADS",
    "ERRNO_TABLE",
    "FusermountMissingError",
    "MountError",
    "MountpointBusyError",
    "MountpointMissingError",
    "MountpointNotDirectoryError",
    "MountpointPermissionError",
    "NoFuseDeviceError",
    "Session",
    "UnknownBackendError",
    "errno_for",
    "is_mounted",
    "supports_discard",
]
