"""The device header: a BlockDevice's settings and counters, in a memfd of their own.

Where this sits in the data flow::

    zramfs.device (BlockDevice) -> zramfs._state (this module)
                                -> zramfs._slots (slot table memfd)
                                -> allocator.Pool (arena and tables memfds)

A device is four memfds (five with a backing store's fd), which a
supervisor holds so that a new daemon can take the device over
(``BlockDevice.state_fds`` / ``BlockDevice.resume``).  This one holds what
neither the slot table nor the pool can give back: the device's arguments
(disksize, chain size, the algorithm and its parameters, the secondary
algorithms, the backing store's path), its settings (mem_limit, the
writeback limit and batch size) and its counters (``io_stat``, num_reads,
num_writes, mem_used_max, bd_stat's reads and writes).  The counters are
words of the memfd itself, incremented in place by the I/O paths: no copy
in the process can lag behind, so a restart shows exactly the values the
dead process had.  (A request the dead process had started and the kernel
sends again counts twice, as an I/O a kernel resubmits does.)

Layout: page 0 is 64-bit words (``W_*`` below).  The settings that are
text (algorithm names, a dictionary, a path) are one JSON document, kept
twice after page 0: a change writes the copy not in use and then switches
``W_CONFIG`` to it with one 8-byte store, so a process killed in the
middle of a change leaves the old document whole.  The memfd is sparse:
two pages unless a dictionary is set.

Format: ``W_MAGIC`` says it is a zramfs device, ``W_VERSION`` which layout
(``FORMAT_VERSION``) of all four memfds.  A new version is needed whenever
any of them changes meaning; ``BlockDevice.resume`` refuses any other
version with StateFormatError, and then a restart needs a swapoff.
"""

import json
import mmap
import os
import time
from base64 import b64decode, b64encode

from allocator import PAGE_SIZE

__all__ = [
    "FORMAT_VERSION",
    "DeviceHeader",
    "HeaderFormatError",
]

#: The version of the device's state format (header, slot table, pool).
FORMAT_VERSION = 1
_MAGIC = int.from_bytes(b"zramfsdv", "little")

# Words of page 0.
# zram's default writeback_batch_size: slots picked per hold of the lock.
DEFAULT_WB_BATCH_SIZE = 32

W_MAGIC = 0
W_VERSION = 1
W_DISKSIZE = 2
W_CHAIN = 3  # max_pages_per_zspage
W_CREATED_NS = 4  # CLOCK_MONOTONIC at the device's creation: ac_time's zero
W_CONFIG = 5  # which copy of the JSON document is current (0 or 1)
W_CONFIG_LEN = 6  # its length, for copies 0 and 1 (two words)
# Settings.
W_LIMIT_PAGES = 16
W_WB_LIMIT = 17
W_WB_LIMIT_ENABLE = 18
W_WB_BATCH = 19
W_RECOMP_USED = 20  # bit p: some slot was stored by priority p
W_WM_HIGH = 21  # writeback_watermark, pages (0 = off; zramfs._watermark)
W_WM_LOW = 22  # writeback_low_watermark, pages (0 = the default)
# Counters (DeviceStats).
W_MAX_USED_PAGES = 24
W_FAILED_READS = 25
W_FAILED_WRITES = 26
W_INVALID_IO = 27
W_NOTIFY_FREE = 28
W_NUM_READS = 29
W_NUM_WRITES = 30
W_BD_READS = 31
W_BD_WRITES = 32
W_WB_FAILURES = 33
_WORDS = PAGE_SIZE // 8

#: Room for each copy of the JSON document: a zstd dictionary (base64) is
#: the only large part; zstd --train makes 110 KiB ones by default.
_CONFIG_MAX = 4 << 20


class HeaderFormatError(ValueError):
    """Raised when a memfd given as a device header is not one, or is of
    another format version; the message says which."""


class DeviceHeader:
    """The header memfd, mapped: ``words`` (memoryview 'Q' of page 0) and
    the settings document (``config``, a dict).  Not thread safe on its
    own: the device writes counters under its lock."""

    __slots__ = ("fd", "_map", "words", "config")

    def __init__(self, fd):
        self.fd = fd
        self._map = os_map(fd, PAGE_SIZE + 2 * _CONFIG_MAX)
        self.words = memoryview(self._map)[:PAGE_SIZE].cast("Q")
        self.config = {}

    @classmethod
    def create(cls, disksize, chain, config):
        """A new header for a device of ``disksize`` bytes and chain size
        ``chain``, with the settings document ``config``."""
        fd = os.memfd_create("zramfs-device", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, PAGE_SIZE + 2 * _CONFIG_MAX)
            header = cls(fd)
        except BaseException:
            os.close(fd)
            raise
        words = header.words
        words[W_DISKSIZE] = disksize
        words[W_CHAIN] = chain
        words[W_CREATED_NS] = time.monotonic_ns()
        words[W_WB_BATCH] = DEFAULT_WB_BATCH_SIZE
        header.set_config(config)
        words[W_VERSION] = FORMAT_VERSION
        words[W_MAGIC] = _MAGIC  # last: a header cut short is no header
        return header

    @classmethod
    def attach(cls, fd):
        """The header in memfd ``fd`` (taken over: closed by ``close``).
        HeaderFormatError if it is not a device header of this format."""
        check_format(fd)
        header = cls(fd)
        header.config = header._read_config()
        return header

    def _read_config(self):
        which = self.words[W_CONFIG]
        if which not in (0, 1):
            raise HeaderFormatError(f"device header: bad settings copy {which}")
        length = self.words[W_CONFIG_LEN + which]
        start = PAGE_SIZE + which * _CONFIG_MAX
        try:
            return json.loads(bytes(self._map[start : start + length]))
        except ValueError as exc:
            raise HeaderFormatError(f"device header: unreadable settings: {exc}") from None

    def set_config(self, config):
        """Make ``config`` the settings document: written to the copy not in
        use, then switched to with one store."""
        data = json.dumps(config, sort_keys=True).encode()
        if len(data) > _CONFIG_MAX:
            raise ValueError(f"device settings of {len(data)} bytes do not fit the header")
        words = self.words
        which = 1 - words[W_CONFIG] if words[W_MAGIC] else 0
        start = PAGE_SIZE + which * _CONFIG_MAX
        self._map[start : start + len(data)] = data
        words[W_CONFIG_LEN + which] = len(data)
        words[W_CONFIG] = which
        self.config = config

    def close(self):
        if self._map is None:
            return
        self.words.release()
        self._map.close()
        self._map = None
        os.close(self.fd)


def os_map(fd, length):
    """``length`` bytes of memfd ``fd`` mapped shared, read-write."""
    return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def check_format(fd):
    """Raise HeaderFormatError unless memfd ``fd`` is a device header of
    FORMAT_VERSION (reads one page; maps nothing)."""
    head = os.pread(fd, 16, 0)
    if len(head) < 16 or int.from_bytes(head[:8], "little") != _MAGIC:
        raise HeaderFormatError(f"memfd {fd} holds no zramfs device header")
    version = int.from_bytes(head[8:16], "little")
    if version != FORMAT_VERSION:
        raise HeaderFormatError(
            f"the device's state is format {version}, this zramfs reads format "
            f"{FORMAT_VERSION} only: the daemon cannot be replaced without swapoff"
        )
    if os.fstat(fd).st_size != PAGE_SIZE + 2 * _CONFIG_MAX:
        raise HeaderFormatError(f"memfd {fd}: a device header of the wrong size")


def encode_bytes(data):
    """bytes (or None) as a JSON value."""
    return None if data is None else b64encode(data).decode()


def decode_bytes(text):
    return None if text is None else b64decode(text)
