"""The supervisor's side of systemd, without systemd: sd_notify's datagrams and
their fds, the fd store's bookkeeping, LISTEN_FDS read back, ending an old
daemon through its pidfd, and a takeover's command line.

A bound AF_UNIX datagram socket stands in for systemd's notify socket: what
arrives there (text and SCM_RIGHTS fds) is exactly what systemd would get.
"""

import array
import os
import socket
import subprocess
import sys

import pytest

from zramfs import supervisor
from zramfs.supervisor import FdStore, inherited, listen_fds, sd_notify


@pytest.fixture
def notify_socket(tmp_path):
    """(address, receive()) of a socket that takes what sd_notify sends."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)

    def receive():
        """[(text, [fds])] of every datagram waiting."""
        got = []
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except BlockingIOError:
                return got
            fds = array.array("i")
            for level, kind, raw in anc:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fds.frombytes(raw[: len(raw) - len(raw) % 4])
            got.append((data.decode(), list(fds)))

    yield path, receive
    sock.close()


def _texts(receive):
    """The texts of what arrived; their fds closed."""
    got = receive()
    for _, fds in got:
        for fd in fds:
            os.close(fd)
    return [text for text, _ in got]


def _same_file(a, b):
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# -- sd_notify ------------------------------------------------------------------


def test_sd_notify_sends_one_datagram_with_its_fds(notify_socket):
    address, receive = notify_socket
    memfd = os.memfd_create("state")
    try:
        assert sd_notify("FDSTORE=1\nFDNAME=state-arena", [memfd], address)
        ((text, fds),) = receive()
        assert text == "FDSTORE=1\nFDNAME=state-arena"
        assert len(fds) == 1 and _same_file(fds[0], memfd)
        os.close(fds[0])
    finally:
        os.close(memfd)


def test_sd_notify_abstract_address():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"zramfs-test-{os.getpid()}"
    sock.bind("\0" + name)
    try:
        assert sd_notify("READY=1", address="@" + name)
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_sd_notify_without_systemd_sends_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    assert FdStore.from_env() is None


def test_sd_notify_to_a_missing_socket_logs_one_line(tmp_path, capsys):
    assert sd_notify("READY=1\nSTATUS=x", address=str(tmp_path / "none")) is False
    assert capsys.readouterr().err == (
        "zramfs-supervisor: cannot notify systemd (READY=1): No such file or directory\n"
    )


# -- the fd store's bookkeeping ----------------------------------------------------


def test_fd_store_put_drop_and_clear(notify_socket):
    address, receive = notify_socket
    store = FdStore(address)
    r, w = os.pipe()
    try:
        store.put("fuse-7.41", r)
        store.put("daemon-12", w)
        assert sorted(store.stored) == ["daemon-12", "fuse-7.41"]
        store.drop("daemon-12")
        store.clear()
        assert _texts(receive) == [
            "FDSTORE=1\nFDNAME=fuse-7.41",
            "FDSTORE=1\nFDNAME=daemon-12",
            "FDSTOREREMOVE=1\nFDNAME=daemon-12",
            "FDSTOREREMOVE=1\nFDNAME=fuse-7.41",
        ]
        assert store.stored == {}
    finally:
        os.close(r)
        os.close(w)


def test_fd_store_sync_stores_a_state_once_and_replaces_a_new_one(notify_socket):
    address, receive = notify_socket
    store = FdStore(address)
    first = {"header": os.memfd_create("h"), "slots": os.memfd_create("s")}
    second = {"header": os.memfd_create("h2")}
    try:
        store.sync("state-", first)
        # The same files again (a resumed daemon sends its STATE): nothing is sent.
        dups = {name: os.dup(fd) for name, fd in first.items()}
        store.sync("state-", dups)
        for fd in dups.values():
            os.close(fd)
        # An init or reset made new memfds: the old names go, then the new ones come.
        store.sync("state-", second)
        assert _texts(receive) == [
            "FDSTORE=1\nFDNAME=state-header",
            "FDSTORE=1\nFDNAME=state-slots",
            "FDSTOREREMOVE=1\nFDNAME=state-header",
            "FDSTOREREMOVE=1\nFDNAME=state-slots",
            "FDSTORE=1\nFDNAME=state-header",
        ]
        assert list(store.stored) == ["state-header"]
    finally:
        for fd in [*first.values(), *second.values()]:
            os.close(fd)


def test_the_supervisor_stores_the_connection_it_receives(notify_socket):
    """A FUSE message from the daemon: held, and put into the store under its minor."""
    address, receive = notify_socket
    s = supervisor.Supervisor(["/mnt/z"], fdstore=FdStore(address))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        s.ctl = ours
        socket.send_fds(theirs, [b"FUSE 41 1"], [r])
        assert s._receive()
        ((text, fds),) = receive()
        assert text == "FDSTORE=1\nFDNAME=fuse-7.41" and _same_file(fds[0], r)
        os.close(fds[0])
        # A kernel without RESEND: held, but not stored (a restart could not resume it).
        socket.send_fds(theirs, [b"FUSE 39 0"], [w])
        assert s._receive()
        assert receive() == []
    finally:
        s._release()
        ours.close()
        theirs.close()
        os.close(r)
        os.close(w)


# -- LISTEN_FDS ------------------------------------------------------------------


def test_listen_fds_with_names():
    env = {"LISTEN_PID": "42", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "fuse-7.41:state-header:x"}
    assert listen_fds(env, pid=42) == [("fuse-7.41", 3), ("state-header", 4), ("x", 5)]


def test_listen_fds_meant_for_another_process_or_absent():
    assert listen_fds({}, pid=42) == []
    assert listen_fds({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, pid=42) == []


def test_listen_fds_without_names_are_unknown():
    assert listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, pid=7) == [
        ("unknown", 3),
        ("unknown", 4),
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, "malformed LISTEN_PID='x' LISTEN_FDS='1'"),
        ({"LISTEN_PID": "7", "LISTEN_FDS": "two"}, "malformed LISTEN_PID='7' LISTEN_FDS='two'"),
        ({"LISTEN_PID": "7", "LISTEN_FDS": "-1"}, "malformed LISTEN_FDS=-1"),
        (
            {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"},
            "LISTEN_FDNAMES names 1 fds, LISTEN_FDS says 2",
        ),
    ],
)
def test_listen_fds_malformed(env, message):
    with pytest.raises(ValueError) as info:
        listen_fds(env, pid=7)
    assert str(info.value) == message


def test_inherited_sorts_the_fds_by_name():
    found = inherited(
        [("fuse-7.41", 3), ("state-header", 4), ("state-arena", 5), ("daemon-99", 6), ("x", 7)]
    )
    assert (found.fuse_fd, found.kernel_minor) == (3, 41)
    assert found.state == {"header": 4, "arena": 5}
    assert found.daemons == {"daemon-99": 6} and found.unknown == {"x": 7}
    assert sorted(found.fds()) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("fuse-7.41", 3), ("fuse-7.41", 4)], "two FUSE connections among the fds systemd passed (fuse-7.41)"),
        ([("fuse-7.x", 3)], "malformed fd name 'fuse-7.x'"),
    ],
)  # fmt: skip
def test_inherited_refuses_what_cannot_be_one_device(pairs, message):
    with pytest.raises(ValueError) as info:
        inherited(pairs)
    assert str(info.value) == message


# -- ending an old daemon, and the takeover's command line ---------------------------


def test_end_daemons_kills_and_waits():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pidfd = os.pidfd_open(child.pid)
    try:
        assert supervisor.end_daemons([pidfd], timeout=10)
        assert child.wait(timeout=5) == -9
        # Already gone (its pidfd outlives it): nothing to do, at once.
        assert supervisor.end_daemons([pidfd], timeout=0)
    finally:
        os.close(pidfd)


def test_supervisor_command_line_of_a_takeover():
    argv = ["--fuse-fd", "3", "--kernel-minor", "41", "--state-fd", "header=4",
            "--state-fd", "arena=5", "--restarts", "2", "--hold-fd", "9", "--", "/mnt"]  # fmt: skip
    daemon_args, ready_fd, hold, control, resume = supervisor.parse_args(argv)
    assert (daemon_args, ready_fd, hold, control) == (["/mnt"], None, [9], None)
    assert (resume.fuse_fd, resume.kernel_minor, resume.restarts) == (3, 41, 2)
    assert resume.state == {"header": 4, "arena": 5}
    with pytest.raises(ValueError, match="^--fuse-fd needs --kernel-minor$"):
        supervisor.parse_args(["--fuse-fd", "3", "--", "/mnt"])
    with pytest.raises(ValueError, match="^--state-fd and --kernel-minor need --fuse-fd$"):
        supervisor.parse_args(["--state-fd", "header=4", "--", "/mnt"])


def test_the_daemon_sees_no_systemd_variables_when_its_supervisor_speaks_to_systemd(monkeypatch):
    for name, value in (("NOTIFY_SOCKET", "/run/n"), ("LISTEN_FDS", "2"), ("LISTEN_PID", "1"),
                        ("LISTEN_FDNAMES", "a:b"), ("LANG", "C.UTF-8")):  # fmt: skip
        monkeypatch.setenv(name, value)
    env = supervisor._daemon_env(True)
    assert env["LANG"] == "C.UTF-8"
    assert not set(supervisor.SYSTEMD_ONLY_ENV) & set(env)
    # A background supervisor (the CLI's child) leaves the daemon's as it was.
    assert supervisor._daemon_env(False)["NOTIFY_SOCKET"] == "/run/n"
