"""The inode table: what a zramfs mount looks like, independent of FUSE.

Where this sits: a FUSE backend (``zramfs.fuse``: our own /dev/fuse session,
or pyfuse3) decodes a kernel request and calls one method here; this module
answers in terms of inodes, names, `Attr` and bytes, and forwards block I/O on
`disk` to the `zramfs.device.BlockDevice` below it.  It knows nothing of the
wire protocol, so both backends share it and errors leave it as typed
exceptions that the backend maps to errno with ``zramfs.fuse.errno_for``.

The tree is fixed, like a zram device's sysfs directory::

    /                 (ino 1)  the mount root
    /disk             (ino 2)  the block device's data, size = disksize
    /disksize ...              zram's attribute files, same names and formats

Attribute files report size 4096 (as sysfs does) and are opened direct_io by
the backends so every read renders fresh text.  The hot path (READ/WRITE on
`disk`) may bypass this class and call ``fs.device`` directly; `read` and
`write` here implement the same clamping rules for everyone else.

The tree is fixed and so are the modes and owners of `disk` and the root:
creating, removing or renaming names fails as it does in sysfs, and so
does chmod or chown of `disk` (swap contents) or of the root.  `disk` has
the fixed size of a block device: a truncation to 0 is ignored (that is
how open(O_TRUNC) arrives, and a block device ignores O_TRUNC), any other
size is refused.

Concurrency: the table is a handful of inodes.  `_lock` guards changes to
them (setattr); lookups read the dict without it (single dict reads are
atomic).  No method here waits on anything that might need swap I/O.
"""

import os
import stat
import threading
import time
from dataclasses import dataclass, replace

from allocator import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from zramfs.codecs import CODECS
from zramfs.config import memparse  # the kernel's size grammar, shared with the CLI
from zramfs.device import PAGE_SIZE, OutOfRangeError

ROOT_INO = 1
DISK_INO = 2

# The size sysfs reports for every attribute file, whatever its content.
ATTR_FILE_SIZE = 4096

# fallocate(2) mode (linux/falloc.h) that only FUSE requests carry; KEEP_SIZE
# and PUNCH_HOLE come from the allocator, which punches holes itself.
FALLOC_FL_ZERO_RANGE = 0x10

# st_blocks counts 512-byte units, whatever the block size.
_ST_BLOCK = 512


class FsError(Exception):
    """Base of the errors the inode table raises; each maps to one errno."""


class NotFoundError(FsError):
    """Raised when a name or inode does not exist (ENOENT)."""


class NotPermittedError(FsError):
    """Raised when an operation is never allowed here: resizing `disk`, changing its
    mode or owner, removing or renaming a name (EPERM)."""


class ReadOnlyError(FsError):
    """Raised when something asks to write what cannot be written: an attribute file
    against its mode, or a new file in the fixed tree (EACCES)."""


class InvalidValueError(FsError):
    """Raised when a value written to an attribute file does not parse or is refused (EINVAL)."""


class NotSupportedError(FsError):
    """Raised when an operation mode is not implemented, e.g. an fallocate mode (EOPNOTSUPP)."""


class IsADirectoryError(FsError):  # noqa: A001 - the errno's name, scoped to this module
    """Raised when a file operation is asked of the root directory (EISDIR)."""


class NotADirectoryError(FsError):  # noqa: A001
    """Raised when a directory operation is asked of a file (ENOTDIR)."""


@dataclass(frozen=True)
class Attr:
    """One inode's attributes, as stat(2) shows them."""

    ino: int
    mode: int  # full st_mode, type bits included
    nlink: int
    size: int
    blocks: int  # 512-byte units
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class StatFs:
    """statfs(2) for the mount.  loop(4) uses bsize as its discard granularity."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namelen: int


# mem_limit is kept in whole pages and shown in bytes, which must fit the
# unsigned long the kernel keeps it in.  The kernel's memparse() wraps
# silently past 64 bits (99999999T would become a small limit); we refuse.
_MEM_LIMIT_MAX = (1 << 64) - PAGE_SIZE


def _decode(data):
    try:
        return bytes(data).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidValueError("attribute values are ASCII") from None


def _text(store):
    """A store that takes the written bytes as ASCII text."""
    return lambda device, data: store(device, _decode(data))


class _AttrFile:
    """One zram-style attribute file: how it renders and how it takes a write."""

    __slots__ = ("name", "perm", "show", "store")

    def __init__(self, name, perm, show=None, store=None):
        self.name = name
        self.perm = perm
        self.show = show  # (device) -> str, or None if write-only
        self.store = store  # (device, bytes) -> None, or None if read-only


def _store_mem_limit(device, text):
    try:
        limit = memparse(text)
        if limit > _MEM_LIMIT_MAX:
            raise InvalidValueError(f"mem_limit {text.strip()!r} does not fit 64 bits")
        device.mem_limit = limit
    except ValueError as e:  # not a size (SizeError), or the device's own range check
        raise InvalidValueError(str(e)) from None


def _store_mem_used_max(device, text):
    # zram: anything but 0 is -EINVAL.
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise InvalidValueError(f"mem_used_max takes 0, not {text.strip()!r}") from None
    if value != 0:
        raise InvalidValueError(f"mem_used_max takes 0, not {value}")
    device.reset_mem_used_max()


def _store_compact(device, _data):
    # Kernel zram's compact_store never looks at what was written.
    device.compact()


def _show_comp_algorithm(device):
    return " ".join(f"[{c}]" if c == device.algorithm else c for c in CODECS) + "\n"


_ATTR_FILES = (
    _AttrFile("disksize", 0o444, show=lambda d: f"{d.disksize}\n"),
    _AttrFile("comp_algorithm", 0o444, show=_show_comp_algorithm),
    _AttrFile("mem_limit", 0o644, show=lambda d: f"{d.mem_limit}\n", store=_text(_store_mem_limit)),
    _AttrFile(
        "mem_used_max",
        0o644,
        show=lambda d: f"{d.stats().mem_used_max}\n",
        store=_text(_store_mem_used_max),
    ),
    _AttrFile("mm_stat", 0o444, show=lambda d: d.mm_stat()),
    _AttrFile("io_stat", 0o444, show=lambda d: d.io_stat()),
    _AttrFile("compact", 0o200, store=_store_compact),
)
# Attribute files take the inode numbers after `disk`, in the order above.
_FIRST_ATTR_INO = DISK_INO + 1


class Filesystem:
    """The inode table over one BlockDevice (see the module docstring)."""

    def __init__(self, device):
        self.device = device
        self._disksize = device.disksize
        self._lock = threading.Lock()
        now = time.time_ns()
        uid, gid = os.getuid(), os.getgid()

        def make(ino, mode, nlink, size):
            return Attr(ino, mode, nlink, size, 0, uid, gid, now, now, now)

        self._attrs = {
            ROOT_INO: make(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0),
            DISK_INO: make(DISK_INO, stat.S_IFREG | 0o600, 1, self._disksize),
        }
        self._names = {b"disk": DISK_INO}
        self._attr_files = {}
        for i, af in enumerate(_ATTR_FILES):
            ino = _FIRST_ATTR_INO + i
            self._attrs[ino] = make(ino, stat.S_IFREG | af.perm, 1, ATTR_FILE_SIZE)
            self._names[af.name.encode()] = ino
            self._attr_files[ino] = af

    # -- lookups and attributes ---------------------------------------------

    def _attr(self, ino):
        try:
            return self._attrs[ino]
        except KeyError:
            raise NotFoundError(f"no inode {ino}") from None

    def lookup(self, parent_ino, name):
        if self._attr(parent_ino).ino != ROOT_INO:
            raise NotADirectoryError(f"inode {parent_ino} is not a directory")
        if name == b".":
            return self.getattr(ROOT_INO)
        if name == b"..":
            return self.getattr(ROOT_INO)
        try:
            return self.getattr(self._names[name])
        except KeyError:
            raise NotFoundError(f"no such file: {name!r}") from None

    def getattr(self, ino):
        a = self._attr(ino)
        if ino == DISK_INO:
            # What the data really costs in RAM, so `du disk` means something.
            a = replace(a, blocks=self.device.stats().mem_used_total // _ST_BLOCK)
        return a

    def setattr(self, ino, size=None, mode=None, uid=None, gid=None, atime_ns=None, mtime_ns=None):
        with self._lock:
            a = self._attr(ino)
            if size is not None and size != a.size:
                if ino == ROOT_INO:
                    raise IsADirectoryError("cannot truncate the root directory")
                # open(O_TRUNC) arrives as size=0 (`dd of=disk`, `echo 1 >
                # compact`), indistinguishable from truncate(path, 0); a block
                # device and sysfs ignore O_TRUNC, so a 0 is ignored whatever
                # sent it.  (FUSE_ATOMIC_O_TRUNC would tell them apart, but
                # then the kernel sets its cached size of disk to 0 on every
                # O_TRUNC open, and async direct reads from loop come back
                # short until the size is fetched again.)
                if size != 0:
                    if ino == DISK_INO:
                        raise NotPermittedError(f"disk size is fixed at {self._disksize}")
                    raise NotPermittedError("attribute files cannot be resized")
            if (mode is not None or uid is not None or gid is not None) and ino in (ROOT_INO, DISK_INO):
                # Only root may read disk, which holds other processes'
                # memory; with allow_other a chmod would open it to everyone.
                raise NotPermittedError("the mode and owner of disk and of the root are fixed")
            changes = {}
            if mode is not None:
                changes["mode"] = stat.S_IFMT(a.mode) | stat.S_IMODE(mode)
            if uid is not None:
                changes["uid"] = uid
            if gid is not None:
                changes["gid"] = gid
            if atime_ns is not None:
                changes["atime_ns"] = atime_ns
            if mtime_ns is not None:
                changes["mtime_ns"] = mtime_ns
            if changes:
                changes["ctime_ns"] = time.time_ns()
                self._attrs[ino] = replace(a, **changes)
        return self.getattr(ino)

    # -- open and I/O --------------------------------------------------------

    def open(self, ino, flags):
        a = self._attr(ino)
        if ino == ROOT_INO:
            raise IsADirectoryError("the root is a directory")
        af = self._attr_files.get(ino)
        if af is not None:
            # Like kernfs: an attribute without a show (store) op cannot be
            # opened for reading (writing), not even by root.
            acc = flags & os.O_ACCMODE
            if acc in (os.O_WRONLY, os.O_RDWR) and af.store is None:
                raise ReadOnlyError(f"{af.name} is read-only")
            if acc in (os.O_RDONLY, os.O_RDWR) and af.show is None:
                raise ReadOnlyError(f"{af.name} is write-only")
        del a

    def opendir(self, ino):
        if self._attr(ino).ino != ROOT_INO:
            raise NotADirectoryError(f"inode {ino} is not a directory")

    def read(self, ino, offset, size):
        if ino == DISK_INO:
            if offset >= self._disksize:
                return b""
            return self.device.read(offset, min(size, self._disksize - offset))
        af = self._attr_files.get(ino)
        if af is None:
            self._attr(ino)
            raise IsADirectoryError("the root is a directory")
        if af.show is None:
            raise ReadOnlyError(f"{af.name} is write-only")
        text = af.show(self.device).encode("ascii")
        return text[offset : offset + size]

    def write(self, ino, offset, data):
        if ino == DISK_INO:
            if offset >= self._disksize:
                if len(data) == 0:
                    return 0
                raise OutOfRangeError(f"write at {offset} is past the end of disk ({self._disksize})")
            # A write that straddles the end is cut short, as on a block device.
            n = min(len(data), self._disksize - offset)
            self.device.write(offset, data if n == len(data) else memoryview(data)[:n])
            return n
        af = self._attr_files.get(ino)
        if af is None:
            self._attr(ino)
            raise IsADirectoryError("the root is a directory")
        if af.store is None:
            raise ReadOnlyError(f"{af.name} is read-only")
        af.store(self.device, data)
        return len(data)

    def fallocate(self, ino, mode, offset, length):
        if ino != DISK_INO:
            self._attr(ino)
            raise NotSupportedError("fallocate works on disk only")
        if offset < 0 or length <= 0:
            raise InvalidValueError("fallocate needs offset >= 0 and length > 0")
        end = offset + length
        if mode in (0, FALLOC_FL_KEEP_SIZE):
            # Preallocation: every block of disk already "exists".
            if end > self._disksize and not mode & FALLOC_FL_KEEP_SIZE:
                raise NotPermittedError(f"disk size is fixed at {self._disksize}")
            return
        if mode in (
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
            FALLOC_FL_ZERO_RANGE,
            FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
        ):
            if end > self._disksize and not mode & FALLOC_FL_KEEP_SIZE:
                raise NotPermittedError(f"disk size is fixed at {self._disksize}")
            end = min(end, self._disksize)
            if offset < end:
                # Discard frees whole blocks and zeroes partial edges: exactly
                # what both a punched hole and a zeroed range must read back as.
                self.device.discard(offset, end - offset)
            return
        raise NotSupportedError(f"fallocate mode {mode:#x} is not supported")

    # -- the tree is fixed ---------------------------------------------------
    # Answered as sysfs answers for /sys/block/zram0 (measured as root,
    # kernel 6.18): VFS gives EACCES when the directory has no create op
    # (open(O_CREAT), mknod of a regular file) and EPERM for the others.

    def create(self, parent_ino):
        """open(O_CREAT) of a new name, or mknod of a regular file: EACCES."""
        self.opendir(parent_ino)
        raise ReadOnlyError("no file can be created here")

    def mknod(self, parent_ino, mode):
        if stat.S_ISREG(mode):
            self.create(parent_ino)
        self.change_tree(parent_ino)

    def change_tree(self, parent_ino):
        """mkdir, unlink, rmdir, rename, link, symlink, and mknod of a special file: EPERM."""
        self.opendir(parent_ino)
        raise NotPermittedError("names cannot be added, removed or renamed here")

    # -- directory -----------------------------------------------------------

    def readdir(self, ino):
        self.opendir(ino)
        root = self._attrs[ROOT_INO]
        entries = [(b".", root), (b"..", root)]
        entries.extend((name, self._attrs[i]) for name, i in self._names.items())
        return entries

    def statfs(self):
        blocks = self._disksize // PAGE_SIZE
        # "Free" is what is not stored: blocks never written or discarded.
        used = min(blocks, self.device.stats().orig_data_size // PAGE_SIZE)
        return StatFs(
            bsize=PAGE_SIZE,
            frsize=PAGE_SIZE,
            blocks=blocks,
            bfree=blocks - used,
            bavail=blocks - used,
            files=len(self._attrs),
            ffree=0,
            namelen=255,
        )
