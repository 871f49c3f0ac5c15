"""The daemon's lifecycle: readiness, signals, external unmount, setup errors, cleanup."""

import errno
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests._support.fuse import DISKSIZE, stop_daemon
from zramfs.fuse import is_mounted
from zramfs.launch import DaemonStartError, spawn_daemon, start_background


def wait_exit(proc, timeout=10):
    return proc.wait(timeout=timeout)


def wait_unmounted(mountpoint, timeout=10):
    deadline = time.monotonic() + timeout
    while is_mounted(str(mountpoint)):
        assert time.monotonic() < deadline, f"{mountpoint} still mounted after {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_and_exits_0(zram, signum):
    zram.proc.send_signal(signum)
    assert wait_exit(zram.proc) == 0
    assert not is_mounted(str(zram.mountpoint))
    assert f"{signal.Signals(signum).name}: unmounting" in zram.log.read_text()


def test_external_umount_ends_the_daemon(zram):
    r = subprocess.run(["umount", str(zram.mountpoint)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert wait_exit(zram.proc) == 0


def test_lazy_unmount_serves_open_files_until_closed(zram):
    # What a loop device holding `disk` sees when the daemon is told to stop.
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        os.pwrite(fd, b"kept", 0)
        zram.proc.send_signal(signal.SIGTERM)
        wait_unmounted(zram.mountpoint)
        time.sleep(0.2)
        assert zram.proc.poll() is None
        assert os.pread(fd, 4, 0) == b"kept"
    finally:
        os.close(fd)
    assert wait_exit(zram.proc) == 0


def test_second_signal_aborts_a_mount_still_in_use(zram):
    # A loop device or swap still holding disk keeps a lazily unmounted
    # filesystem alive; asking twice cuts it off.
    fd = os.open(zram.disk, os.O_RDWR)
    try:
        zram.proc.terminate()
        wait_unmounted(zram.mountpoint)
        time.sleep(0.2)
        assert zram.proc.poll() is None
        zram.proc.terminate()
        assert wait_exit(zram.proc) == 0
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, 0)
        assert e.value.errno == errno.ENOTCONN
    finally:
        try:
            os.close(fd)
        except OSError as e:  # close's FLUSH fails too: the fd is released all the same
            assert e.errno == errno.ENOTCONN
    assert "aborting the connection" in zram.log.read_text()


def test_ready_means_the_mount_answers(zram):
    # spawn_daemon returned only after READY: no waiting needed here.
    assert is_mounted(str(zram.mountpoint))
    assert os.stat(zram.disk).st_size == DISKSIZE
    assert "serving" in zram.log.read_text()


def test_notify_socket_gets_ready(tmp_path, backend, monkeypatch):
    name = f"zramfs-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        proc = spawn_daemon(mnt, DISKSIZE, fuse_backend=backend, stderr=subprocess.DEVNULL)
        try:
            msg = sock.recv(4096).decode()
            assert "READY=1" in msg.split("\n")
            assert f"MAINPID={proc.pid}" in msg.split("\n")
            proc.terminate()
            assert sock.recv(4096) == b"STOPPING=1"
            assert wait_exit(proc) == 0
        finally:
            stop_daemon(proc, mnt)


def test_start_background_returns_the_pid(tmp_path, backend):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pid = start_background(mnt, DISKSIZE, fuse_backend=backend, stderr=subprocess.DEVNULL)
    try:
        assert is_mounted(str(mnt))
        assert os.path.exists(f"/proc/{pid}")
        with open(f"/proc/{pid}/cmdline") as f:
            assert "zramfs.daemon" in f.read()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        os.waitpid(pid, 0)  # our child: reap it
    assert not is_mounted(str(mnt))


# -- setup errors: one line, non-zero exit, nothing left behind -----------------


def start_error(mountpoint, size=DISKSIZE, **kwargs):
    with pytest.raises(DaemonStartError) as e:
        spawn_daemon(mountpoint, size, stderr=subprocess.DEVNULL, **kwargs)
    return str(e.value)


def test_busy_mountpoint(zram, backend):
    msg = start_error(zram.mountpoint, fuse_backend=backend)
    assert msg == f"{zram.mountpoint} is already a mount point"
    zram.assert_alive()


def test_missing_mountpoint(tmp_path, backend):
    assert (
        start_error(tmp_path / "nope", fuse_backend=backend)
        == f"{tmp_path / 'nope'} does not exist"
    )


def test_mountpoint_not_a_directory(tmp_path, backend):
    f = tmp_path / "file"
    f.write_text("")
    assert start_error(f, fuse_backend=backend) == f"{f} is not a directory"


def test_bad_size(tmp_path, backend):
    msg = start_error(tmp_path, 4097, fuse_backend=backend)
    assert msg == "disksize 4097 is not a multiple of 4096 bytes (the page size)"
    assert not is_mounted(str(tmp_path))


def test_unknown_algorithm(tmp_path, backend):
    msg = start_error(tmp_path, algorithm="lzma", fuse_backend=backend)
    assert "lzma" in msg
    assert not is_mounted(str(tmp_path))


def test_ready_fd_gets_the_error_line(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zramfs.daemon",
            str(tmp_path / "nope"),
            "--size",
            "4096",
            "--ready-fd",
            str(w),
        ],
        pass_fds=(w,),
        stderr=subprocess.PIPE,
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.read()
    _, err = proc.communicate(timeout=10)
    assert line == f"ERROR {tmp_path / 'nope'} does not exist\n".encode()
    assert proc.returncode == 1
    assert b"does not exist" in err


def test_usage_errors_reach_the_ready_fd(tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zramfs.daemon",
            str(tmp_path),
            "--size",
            "lots",
            "--ready-fd",
            str(w),
        ],
        pass_fds=(w,),
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r, "rb") as f:
        line = f.read()
    assert proc.wait(timeout=10) == 2
    assert line == b"ERROR argument --size: not a size in bytes: 'lots'\n"


# -- the fixture's cleanup path, exercised on purpose --------------------------


def test_cleanup_of_a_running_daemon(start):
    d = start()
    assert stop_daemon(d.proc, d.mountpoint) == ["unmounted"]
    assert d.proc.returncode == 0
    assert not is_mounted(str(d.mountpoint))


def test_cleanup_of_a_hung_daemon(start):
    d = start()
    os.kill(d.proc.pid, signal.SIGSTOP)  # hung: it will never answer or exit by itself
    steps = stop_daemon(d.proc, d.mountpoint, timeout=1)
    assert steps == ["unmounted", "killed"]
    assert d.proc.returncode == -signal.SIGKILL
    assert not is_mounted(str(d.mountpoint))


def test_cleanup_of_a_killed_daemon_with_a_stale_mount(start):
    d = start()
    d.proc.kill()
    d.proc.wait()
    assert is_mounted(str(d.mountpoint))  # stale: ENOTCONN to everyone
    with pytest.raises(OSError) as e:
        d.attr("mm_stat")
    assert e.value.errno == errno.ENOTCONN
    assert stop_daemon(d.proc, d.mountpoint) == ["unmounted"]
    assert not is_mounted(str(d.mountpoint))


def test_cleanup_after_the_daemon_is_gone(zram):
    zram.proc.terminate()
    zram.proc.wait(timeout=10)
    assert stop_daemon(zram.proc, zram.mountpoint) == []


# -- MountError messages, from the session itself --------------------------------


def session_for(mountpoint, backend):
    from zramfs.device import BlockDevice
    from zramfs.fs import Filesystem
    from zramfs.fuse import Session

    return Session(Filesystem(BlockDevice(1 << 20)), mountpoint, backend=backend)


def test_mount_without_dev_fuse(tmp_path, monkeypatch):
    import zramfs.fuse._mount
    from zramfs.fuse import NoFuseDeviceError

    monkeypatch.setattr(zramfs.fuse._mount, "FUSE_DEVICE", str(tmp_path / "fuse"))
    with pytest.raises(NoFuseDeviceError) as e:
        session_for(tmp_path, "dev").mount()
    assert str(e.value) == f"{tmp_path / 'fuse'} does not exist (is the fuse module loaded?)"
    assert not is_mounted(str(tmp_path))


def test_mount_errors_are_typed(zram, tmp_path, backend):
    from zramfs.fuse import MountpointBusyError, MountpointMissingError, MountpointNotDirectoryError

    with pytest.raises(MountpointBusyError, match=f"^{zram.mountpoint} is already a mount point$"):
        session_for(zram.mountpoint, backend).mount()
    with pytest.raises(MountpointMissingError, match="does not exist$"):
        session_for(tmp_path / "nope", backend).mount()
    (tmp_path / "f").write_text("")
    with pytest.raises(MountpointNotDirectoryError, match="is not a directory$"):
        session_for(tmp_path / "f", backend).mount()


def test_mount_without_fusermount3(tmp_path, monkeypatch):
    # Without root the mount goes through fusermount3; missing, it is named.
    import zramfs.fuse._mount
    from zramfs.fuse import FusermountMissingError

    monkeypatch.setattr(zramfs.fuse._mount, "_is_root", lambda: False)
    monkeypatch.setattr(zramfs.fuse._mount, "FUSERMOUNT", "fusermount3-not-installed")
    with pytest.raises(FusermountMissingError) as e:
        session_for(tmp_path, "dev").mount()
    assert str(e.value) == "fusermount3-not-installed not found: install fuse3, or mount as root"
    assert not is_mounted(str(tmp_path))


def test_not_root_on_a_directory_it_cannot_write(tmp_path):
    # As nobody, on a root-owned 0755 directory: refused before fusermount3 runs.
    import tempfile

    mnt = tempfile.mkdtemp(prefix="zramfs-test-", dir="/tmp")
    try:
        os.chmod(mnt, 0o755)
        r = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "zramfs.daemon", mnt, "--size", "4096", "--ready-fd", "1"],
            capture_output=True,
            text=True,
            cwd="/",
            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__import__("zramfs").__file__)))},
        )  # fmt: skip
        assert r.returncode == 1, r.stderr
        assert (
            r.stdout
            == f"ERROR {mnt} is not writable by uid 65534 (mount as root, or on a directory you own)\n"
        )
        # Hardening is root-only, and says so once.
        assert r.stderr.count("not root: memory is not locked") == 1, r.stderr
        assert not is_mounted(mnt)
    finally:
        os.rmdir(mnt)
