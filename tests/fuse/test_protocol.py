"""The /dev/fuse session's protocol handling, request by request.

The session only needs an fd that returns one whole request per read and
takes one reply per writev; a SOCK_SEQPACKET socketpair does both, so these
tests send hand-built requests -- including malformed ones the kernel would
never send -- and check every reply byte, with a real Filesystem and
BlockDevice behind the session.  The mount tests cover the same handlers
through the kernel.
"""

import errno
import os
import socket
import stat
import struct
import threading
import time

import pytest

from tests.fuse.test_attributes import ATTR_MODES
from zramfs.device import BlockDevice
from zramfs.fs import DISK_INO, ROOT_INO, Filesystem
from zramfs.fuse import _abi
from zramfs.fuse._session import MAX_PAGES, MAX_WRITE, DevSession

DISKSIZE = 1 << 20
SO_SNDBUFFORCE = 32  # socket(7); not in Python's socket module


class Client:
    """The kernel's side of the conversation."""

    def __init__(self, sock):
        self.sock = sock
        self.unique = 0

    def send(self, opcode, nodeid=ROOT_INO, body=b""):
        self.unique += 2
        hdr = _abi.in_header.pack(
            _abi.IN_HEADER_SIZE + len(body), opcode, self.unique, nodeid, 0, 0, 1, 0, 0
        )
        self.sock.send(hdr + body)
        return self.unique

    def recv(self):
        msg = self.sock.recv(4 << 20)
        length, error, unique = _abi.out_header.unpack_from(msg)
        assert length == len(msg)
        return error, unique, msg[_abi.OUT_HEADER_SIZE :]

    def call(self, opcode, nodeid=ROOT_INO, body=b""):
        unique = self.send(opcode, nodeid, body)
        error, got, payload = self.recv()
        assert got == unique
        return error, payload

    def init(self, minor=38, flags=0xFFFFFFFF):
        return self.call(_abi.INIT, 0, _abi.init_in.pack(7, minor, 1 << 17, flags, 0) + bytes(44))


class BrokenStatfs(Filesystem):
    def statfs(self):
        raise RuntimeError("a bug below the session")


@pytest.fixture
def session_factory():
    running = []

    def make(fs_class=Filesystem, threads=1):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            # Room for a 1 MiB WRITE in one message (FORCE: past wmem_max, as root).
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
        session = DevSession(fs_class(BlockDevice(DISKSIZE)), "/nonexistent", threads=threads)
        session.fd = ours.detach()
        t = threading.Thread(target=session.serve)
        t.start()
        running.append((theirs, t))
        return session, Client(theirs)

    yield make
    for sock, t in running:
        sock.close()  # EOF: serve() returns
        t.join(timeout=10)
        assert not t.is_alive()


@pytest.fixture
def client(session_factory):
    return session_factory()[1]


def read_in(offset, size):
    return _abi.read_in.pack(0, offset, size, 0, 0, 0, 0)


def write_in(offset, data):
    return _abi.write_in.pack(0, offset, len(data), 0, 0, 0, 0) + data


def test_init_reply(client):
    error, payload = client.init()
    assert error == 0
    assert len(payload) == 64
    major, minor, _, flags, max_bg, _, max_write, _, max_pages, _, _ = _abi.init_out.unpack(payload)
    assert (major, minor) == (7, 38)
    assert max_write == MAX_WRITE == 512 << 10
    assert max_pages == MAX_PAGES == 128
    for flag in (
        _abi.MAX_PAGES,
        _abi.ASYNC_DIO,
        _abi.BIG_WRITES,
        _abi.ASYNC_READ,
        _abi.PARALLEL_DIROPS,
    ):
        assert flags & flag
    assert not flags & _abi.ATOMIC_O_TRUNC


def test_init_only_keeps_offered_flags(client):
    _, payload = client.init(flags=_abi.BIG_WRITES)
    assert _abi.init_out.unpack(payload)[3] == _abi.BIG_WRITES


def test_init_with_an_old_kernel_gets_the_short_reply(client):
    error, payload = client.init(minor=22)
    assert error == 0
    assert len(payload) == _abi.COMPAT_22_INIT_OUT_SIZE
    assert struct.unpack_from("<II", payload) == (7, 22)


def test_init_with_a_newer_minor_is_answered_with_ours(client):
    _, payload = client.init(minor=45)
    assert struct.unpack_from("<II", payload) == (7, 38)


@pytest.mark.parametrize("opcode", [_abi.IOCTL, _abi.SETXATTR, _abi.LSEEK, 51, 99, 4096])
def test_unknown_and_unsupported_opcodes_get_enosys(client, opcode):
    client.init()
    assert client.call(opcode, ROOT_INO, b"x\0") == (-errno.ENOSYS, b"")


@pytest.mark.parametrize(
    ("opcode", "expected"),
    [
        (_abi.CREATE, errno.EACCES),
        (_abi.MKDIR, errno.EPERM),
        (_abi.UNLINK, errno.EPERM),
        (_abi.RMDIR, errno.EPERM),
        (_abi.RENAME, errno.EPERM),
        (_abi.RENAME2, errno.EPERM),
        (_abi.LINK, errno.EPERM),
        (_abi.SYMLINK, errno.EPERM),
    ],
)
def test_changes_to_the_tree_are_refused(client, opcode, expected):
    client.init()
    assert client.call(opcode, ROOT_INO, bytes(16) + b"x\0") == (-expected, b"")
    # Asked of a file, the parent is not a directory.
    assert client.call(opcode, DISK_INO, bytes(16) + b"x\0") == (-errno.ENOTDIR, b"")


def test_mknod_of_a_regular_file_is_eacces_and_of_others_eperm(client):
    client.init()
    for mode, expected in (
        (stat.S_IFREG | 0o600, errno.EACCES),
        (stat.S_IFIFO | 0o600, errno.EPERM),
    ):
        body = _abi.mknod_in.pack(mode, 0, 0o022, 0) + b"node\0"
        assert client.call(_abi.MKNOD, ROOT_INO, body) == (-expected, b"")


def test_forget_interrupt_and_batch_forget_get_no_reply(client):
    client.init()
    client.send(_abi.FORGET, DISK_INO, struct.pack("<Q", 1))
    client.send(
        _abi.BATCH_FORGET, 0, _abi.batch_forget_in.pack(1, 0) + struct.pack("<QQ", DISK_INO, 1)
    )
    client.send(_abi.INTERRUPT, 0, struct.pack("<Q", 12345))
    unique = client.send(_abi.GETATTR, DISK_INO, _abi.getattr_in.pack(0, 0, 0))
    error, got, _ = client.recv()
    assert (error, got) == (0, unique)


def test_lookup(client):
    client.init()
    error, payload = client.call(_abi.LOOKUP, ROOT_INO, b"disk\0")
    assert error == 0
    fields = _abi.entry_out.unpack(payload)
    assert fields[0] == DISK_INO  # nodeid
    assert fields[6] == DISK_INO  # attr.ino
    assert fields[7] == DISKSIZE  # attr.size
    assert fields[15] == 0o100600  # attr.mode
    assert client.call(_abi.LOOKUP, ROOT_INO, b"nope\0") == (-errno.ENOENT, b"")
    # No NUL terminator: still a name.
    assert client.call(_abi.LOOKUP, ROOT_INO, b"disk")[0] == 0
    assert client.call(_abi.LOOKUP, DISK_INO, b"x\0") == (-errno.ENOTDIR, b"")


def test_getattr_of_an_unknown_inode(client):
    client.init()
    assert client.call(_abi.GETATTR, 999, _abi.getattr_in.pack(0, 0, 0)) == (-errno.ENOENT, b"")


def test_open_flags(client):
    client.init()
    error, payload = client.call(_abi.OPEN, DISK_INO, _abi.open_in.pack(os.O_RDWR, 0))
    assert error == 0
    assert (
        _abi.open_out.unpack(payload)[1] == _abi.FOPEN_DIRECT_IO | _abi.FOPEN_PARALLEL_DIRECT_WRITES
    )
    error, payload = client.call(_abi.OPEN, DISK_INO + 1, _abi.open_in.pack(os.O_RDONLY, 0))
    assert _abi.open_out.unpack(payload)[1] == _abi.FOPEN_DIRECT_IO
    assert client.call(_abi.OPEN, ROOT_INO, _abi.open_in.pack(0, 0))[0] == -errno.EISDIR


def test_write_then_read(client):
    client.init()
    error, payload = client.call(_abi.WRITE, DISK_INO, write_in(4000, b"hello"))
    assert (error, _abi.write_out.unpack(payload)) == (0, (5, 0))
    assert client.call(_abi.READ, DISK_INO, read_in(3998, 9)) == (0, b"\0\0hello\0\0")


def test_a_max_write_request_fits_the_buffer(client):
    client.init()
    data = bytes(range(256)) * (MAX_WRITE // 256)
    error, payload = client.call(_abi.WRITE, DISK_INO, write_in(0, data))
    assert (error, _abi.write_out.unpack(payload)[0]) == (0, len(data))
    assert client.call(_abi.READ, DISK_INO, read_in(0, len(data))) == (0, data)


def test_an_idle_session_faults_in_zspages_for_the_next_writes(session_factory):
    session, client = session_factory()
    client.init()
    pool = session.fs.device._pool
    data = bytes(range(256)) * 16 * 8
    error, _ = client.call(_abi.WRITE, DISK_INO, write_in(0, data))
    assert error == 0
    # No request waits after the reply, so the session populates ahead.
    deadline = time.monotonic() + 10
    while pool.stats().pages_ready == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stats().pages_ready > 0
    assert client.call(_abi.READ, DISK_INO, read_in(0, len(data))) == (0, data)


def test_read_at_and_past_the_end(client):
    client.init()
    assert client.call(_abi.READ, DISK_INO, read_in(DISKSIZE, 4096)) == (0, b"")
    assert client.call(_abi.READ, DISK_INO, read_in(1 << 62, 4096)) == (0, b"")
    assert client.call(_abi.READ, DISK_INO, read_in(DISKSIZE - 10, 4096)) == (0, bytes(10))


def test_write_past_the_end(client):
    client.init()
    assert client.call(_abi.WRITE, DISK_INO, write_in(DISKSIZE, b"x"))[0] == -errno.ENOSPC
    error, payload = client.call(_abi.WRITE, DISK_INO, write_in(DISKSIZE - 2, b"xyz"))
    assert (error, _abi.write_out.unpack(payload)[0]) == (0, 2)


def setattr_in(valid, size=0, mode=0):
    return _abi.setattr_in.pack(valid, 0, 7, size, 0, 0, 0, 0, 0, 0, 0, mode, 0, 0, 0, 0)


def test_setattr_size(client):
    client.init()
    for valid in (_abi.FATTR_SIZE, _abi.FATTR_SIZE | _abi.FATTR_FH):
        assert client.call(_abi.SETATTR, DISK_INO, setattr_in(valid, size=4096))[0] == -errno.EPERM
        # Size 0 (open(O_TRUNC), truncate, ftruncate): ignored, and the real size reported back.
        error, payload = client.call(_abi.SETATTR, DISK_INO, setattr_in(valid))
        assert error == 0
        assert _abi.attr_out.unpack(payload)[4] == DISKSIZE


@pytest.mark.parametrize("ino", [ROOT_INO, DISK_INO])
def test_setattr_mode_of_disk_and_root_is_eperm(client, ino):
    client.init()
    assert (
        client.call(_abi.SETATTR, ino, setattr_in(_abi.FATTR_MODE, mode=0o666))[0] == -errno.EPERM
    )


def test_setattr_mode_keeps_the_file_type(client):
    client.init()
    mem_limit = client.call(_abi.LOOKUP, ROOT_INO, b"mem_limit\0")[1]
    ino = _abi.entry_out.unpack(mem_limit)[0]
    error, payload = client.call(_abi.SETATTR, ino, setattr_in(_abi.FATTR_MODE, mode=0o640))
    assert error == 0
    assert _abi.attr_out.unpack(payload)[12] == 0o100640


def test_readdir_in_pieces(client):
    client.init()
    names = []
    offset = 0
    while True:
        # Room for about two entries per call.
        error, payload = client.call(_abi.READDIR, ROOT_INO, read_in(offset, 64))
        assert error == 0
        if not payload:
            break
        pos = 0
        while pos < len(payload):
            ino, off, namelen, typ = _abi.dirent.unpack_from(payload, pos)
            names.append(payload[pos + 24 : pos + 24 + namelen].decode())
            offset = off
            pos += _abi.dirent_size(namelen)
    assert names[:3] == [".", "..", "disk"]
    assert set(names[3:]) == set(ATTR_MODES)  # every attribute file, once
    assert len(names) == 3 + len(ATTR_MODES)
    assert client.call(_abi.READDIR, DISK_INO, read_in(0, 4096))[0] == -errno.ENOTDIR


def test_statfs(client):
    client.init()
    error, payload = client.call(_abi.STATFS, ROOT_INO)
    assert error == 0
    blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, _ = _abi.kstatfs.unpack(payload)
    assert (blocks, bfree, bsize, frsize, namelen) == (
        DISKSIZE // 4096,
        DISKSIZE // 4096,
        4096,
        4096,
        255,
    )


def test_fallocate_modes(client):
    client.init()
    client.call(_abi.WRITE, DISK_INO, write_in(0, b"\1" * 8192))
    punch = 0x02 | 0x01
    assert client.call(_abi.FALLOCATE, DISK_INO, _abi.fallocate_in.pack(0, 0, 4096, punch, 0)) == (
        0,
        b"",
    )
    assert client.call(_abi.READ, DISK_INO, read_in(0, 8192)) == (0, bytes(4096) + b"\1" * 4096)
    assert (
        client.call(_abi.FALLOCATE, DISK_INO, _abi.fallocate_in.pack(0, 0, 4096, 0x08, 0))[0]
        == -errno.EOPNOTSUPP
    )
    assert (
        client.call(_abi.FALLOCATE, DISK_INO + 1, _abi.fallocate_in.pack(0, 0, 4096, punch, 0))[0]
        == -errno.EOPNOTSUPP
    )


def test_truncated_requests_get_an_errno_and_the_loop_goes_on(session_factory):
    session, client = session_factory()
    client.init()
    for opcode in (
        _abi.READ,
        _abi.WRITE,
        _abi.SETATTR,
        _abi.OPEN,
        _abi.FALLOCATE,
        _abi.READDIR,
        _abi.INIT,
    ):
        error, _ = client.call(opcode, DISK_INO, b"\1\2")
        assert error == -errno.EIO
    assert session.errors == 7
    # A WRITE whose data is shorter than its size field.
    body = _abi.write_in.pack(0, 0, 4096, 0, 0, 0, 0) + b"x" * 100
    assert client.call(_abi.WRITE, DISK_INO, body)[0] == -errno.EIO
    # A header shorter than a header: dropped and counted, no reply possible.
    client.sock.send(b"\0" * 10)
    assert client.call(_abi.GETATTR, DISK_INO, _abi.getattr_in.pack(0, 0, 0))[0] == 0
    assert session.errors >= 1


def test_an_unexpected_exception_is_eio_and_counted(session_factory):
    session, client = session_factory(BrokenStatfs)
    client.init()
    assert client.call(_abi.STATFS, ROOT_INO) == (-errno.EIO, b"")
    assert session.errors == 1
    assert isinstance(session.last_error, RuntimeError)
    assert client.call(_abi.GETATTR, ROOT_INO, _abi.getattr_in.pack(0, 0, 0))[0] == 0


def test_several_reader_threads_share_the_fd(session_factory):
    session, client = session_factory(threads=3)
    client.init()
    # Pipeline requests; replies may come back in any order.
    sent = {client.send(_abi.READ, DISK_INO, read_in(i * 4096, 4096)) for i in range(50)}
    got = set()
    for _ in range(50):
        error, unique, payload = client.recv()
        assert (error, payload) == (0, bytes(4096))
        got.add(unique)
    assert got == sent
