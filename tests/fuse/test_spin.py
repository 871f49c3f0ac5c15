"""The first reader's spin: after answering, it looks for the next request
for up to spin_us before it sleeps in readv (zramfs.fuse._session, SPIN_US),
where the vCPU does not halt-poll for as long itself.

Every test runs with the spin on and off (spin_us=0), the way the lever is
kept switchable: through a socketpair, request by request, and through a
real mount of an in-process session, where O_DIRECT block I/O on `disk`
takes the kernel's /dev/fuse path.  A spin must never turn into a busy
loop: an idle session's thread uses no CPU.
"""

import mmap
import os
import random
import socket
import threading
import time

import pytest

from tests.fuse.test_protocol import Client, read_in, write_in
from zramfs.device import BlockDevice
from zramfs.fs import DISK_INO, Filesystem
from zramfs.fuse import _abi, _session
from zramfs.fuse._session import SPIN_ENV, SPIN_US, DevSession, default_spin_us

DISKSIZE = 4 << 20
BLOCK = 4096


@pytest.fixture(params=[SPIN_US, 0], ids=["spin", "nospin"])
def spin_us(request, monkeypatch):
    # The reader leaves the spin out where the vCPU halt-polls for longer;
    # here it must spin whatever this machine's setting.
    monkeypatch.setattr(_session, "halt_poll_ns", lambda: 0)
    return request.param


@pytest.fixture
def served(spin_us):
    """A session on a socketpair (see test_protocol) with the given spin."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session = DevSession(Filesystem(BlockDevice(DISKSIZE)), "/nonexistent", spin_us=spin_us)
    session.fd = ours.detach()
    ready = threading.Event()
    t = threading.Thread(target=lambda: (ready.set(), session.serve()))
    t.start()
    ready.wait()
    yield session, Client(theirs), t
    theirs.close()
    t.join(timeout=10)
    assert not t.is_alive()


def _thread_cpu_s(native_id):
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_requests_back_to_back_and_apart_all_get_their_answer(served):
    session, client, _t = served
    assert session.spin_us in (0, SPIN_US)
    client.init()
    rnd = random.Random(7)
    blocks = {}
    for i in range(400):
        b = rnd.randrange(DISKSIZE // BLOCK)
        if i % 3:
            data = bytes([i % 251]) * 1000 + rnd.randbytes(BLOCK - 1000)
            error, _ = client.call(_abi.WRITE, DISK_INO, write_in(b * BLOCK, data))
            assert error == 0
            blocks[b] = data
        else:
            error, payload = client.call(_abi.READ, DISK_INO, read_in(b * BLOCK, BLOCK))
            assert (error, payload) == (0, blocks.get(b, bytes(BLOCK)))
        if i % 50 == 0:
            time.sleep(0.002)  # longer than any spin: the reader sleeps in readv
    assert session.errors == 0


def test_an_idle_session_burns_no_cpu(served):
    session, client, t = served
    client.init()
    client.call(_abi.WRITE, DISK_INO, write_in(0, b"x" * BLOCK))
    time.sleep(0.05)  # past the spin and the populating after the write
    before = _thread_cpu_s(t.native_id)
    time.sleep(1.0)
    # A spin that never stopped would use the whole second.
    assert _thread_cpu_s(t.native_id) - before <= 0.05


def test_the_spin_is_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(SPIN_ENV, raising=False)
    assert default_spin_us() == SPIN_US
    monkeypatch.setenv(SPIN_ENV, "0")
    assert default_spin_us() == 0
    assert DevSession(Filesystem(BlockDevice(DISKSIZE)), "/nonexistent").spin_us == 0
    monkeypatch.setenv(SPIN_ENV, "fast")
    with pytest.raises(ValueError, match=f"^{SPIN_ENV} must be a whole number"):
        default_spin_us()


def test_halt_polling_is_read_from_sysfs(tmp_path, monkeypatch):
    path = tmp_path / "guest_halt_poll_ns"
    monkeypatch.setattr(_session, "HALT_POLL_NS", str(path))
    assert _session.halt_poll_ns() == 0  # no haltpoll driver: not a KVM guest
    path.write_text("200000\n")
    assert _session.halt_poll_ns() == 200000


def test_a_negative_spin_is_refused():
    with pytest.raises(ValueError, match="^spin_us must be >= 0, not -1$"):
        DevSession(Filesystem(BlockDevice(DISKSIZE)), "/nonexistent", spin_us=-1)


def test_block_io_through_the_kernel(tmp_path, spin_us):
    # A real mount: the kernel's /dev/fuse queue, its wait queue and wakeups.
    mp = tmp_path / "mnt"
    mp.mkdir()
    session = DevSession(Filesystem(BlockDevice(DISKSIZE)), str(mp), spin_us=spin_us)
    session.mount()
    t = threading.Thread(target=session.serve)
    t.start()
    try:
        fd = os.open(mp / "disk", os.O_RDWR | os.O_DIRECT)
        try:
            aligned = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT wants
            rnd = random.Random(3)
            written = {}
            for i in range(300):
                b = rnd.randrange(DISKSIZE // BLOCK)
                if i % 2:
                    data = rnd.randbytes(1500) + bytes(BLOCK - 1500)
                    aligned[:] = data
                    assert os.pwritev(fd, [aligned], b * BLOCK) == BLOCK
                    written[b] = data
                else:
                    assert os.preadv(fd, [aligned], b * BLOCK) == BLOCK
                    assert aligned[:] == written.get(b, bytes(BLOCK))
            aligned.close()
        finally:
            os.close(fd)
    finally:
        session.stop()
        t.join(timeout=20)
        assert not t.is_alive()
    assert session.errors == 0
