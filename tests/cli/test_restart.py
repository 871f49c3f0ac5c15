"""Restart without loss, decided without root: the record names supervisor and daemon,
teardown stops both, `zramfs restart` refuses what it cannot do, the supervisor's rules."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from zramfs import supervisor
from zramfs.cli import (
    EXIT_INCOMPATIBLE,
    DaemonError,
    DeviceNotFoundError,
    RestartRefusedError,
    exit_code_for,
)
from zramfs.cli._restart import restart
from zramfs.cli._teardown import Step, plan_swapoff, plan_umount
from zramfs.config import DeviceConfig
from zramfs.system import DaemonRecord


def test_the_record_keeps_supervisor_daemon_and_restarts(tmp_path):
    config = DeviceConfig(mountpoint="/mnt/z", size=4096, name="z1")
    DaemonRecord(10, 100, config, daemon_pid=11, daemon_start_time=101, restarts=3).write(tmp_path)
    record = DaemonRecord.parse((tmp_path / "daemon.json").read_text())
    assert (record.pid, record.daemon_pid, record.restarts, record.supervised) == (10, 11, 3, True)
    assert record.processes() == [(10, 100), (11, 101)]
    # A record written without a supervisor (pyfuse3, an older zramfs) still reads.
    DaemonRecord(12, 102, config).write(tmp_path)
    record = DaemonRecord.parse((tmp_path / "daemon.json").read_text())
    assert (record.supervised, record.restarts, record.processes()) == (False, 0, [(12, 102)])


def test_umount_stops_supervisor_and_daemon(machine):
    machine.mount("/mnt/z", "z1")
    machine.daemon("z1", "/mnt/z", pid=31, start_time=1, daemon_pid=32)
    assert plan_umount(machine.system(), "/mnt/z") == [
        Step("unmount", "/mnt/z"),
        Step("stop", "/mnt/z", pid=31, start_time=1),
        Step("stop", "/mnt/z", pid=32, start_time=2),
        Step("forget", "z1"),
    ]


def test_umount_of_a_device_whose_supervisor_was_killed_stops_its_daemon(machine):
    machine.mount("/mnt/z", "z1")
    machine.daemon("z1", "/mnt/z", pid=31, start_time=1, daemon_pid=32, alive=False)
    assert plan_umount(machine.system(), "/mnt/z") == [
        Step("unmount", "/mnt/z"),
        Step("stop", "/mnt/z", pid=32, start_time=2),
        Step("forget", "z1"),
    ]
    assert machine.system().device(machine.system().mounts()[-1]).record is not None


def test_restart_of_nothing_is_not_found(machine):
    with pytest.raises(DeviceNotFoundError, match="^no running zramfs device named 'z9'$"):
        restart(machine.system(), "z9")
    machine.daemon("z8", "/mnt/z", pid=40, alive=False, daemon_pid=41, daemon_alive=False)
    with pytest.raises(DeviceNotFoundError):
        restart(machine.system(), "z8")


def test_restart_refuses_a_device_without_supervisor(machine):
    machine.daemon("z1", "/mnt/z", pid=50, backend="pyfuse3")
    with pytest.raises(DaemonError) as info:
        restart(machine.system(), "z1")
    assert str(info.value) == (
        "'z1' runs without a supervisor (the pyfuse3 backend): "
        "it cannot be restarted without losing its data"
    )


def test_restart_refuses_when_the_supervisor_was_killed(machine):
    machine.daemon("z1", "/mnt/z", pid=60, alive=False, daemon_pid=61)
    with pytest.raises(DaemonError, match=r"^the supervisor of 'z1' \(pid 60\) is gone: "):
        restart(machine.system(), "z1")


def _answering(machine, name, answer):
    """A fake supervisor socket for device `name` that answers one request with `answer`."""
    path = os.path.join(machine.device_dir(name), "supervisor.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        assert conn.recv(64) == b"restart\n"
        conn.sendall(answer.encode() + b"\n")
        conn.close()
        listener.close()

    t = threading.Thread(target=serve)
    t.start()
    return t


@pytest.mark.parametrize(
    "answer, error, message",
    [
        (
            "REFUSED the state format changed incompatibly: format 3, this zramfs reads 2",
            RestartRefusedError,
            "z1: not restarted, the old daemon serves on: "
            "the state format changed incompatibly: format 3, this zramfs reads 2",
        ),
        (
            "ERROR the new code cannot start: No module named 'lz4'",
            DaemonError,
            "z1: not restarted: the new code cannot start: No module named 'lz4'",
        ),
    ],
)
def test_restart_passes_the_supervisors_refusal_on_in_one_line(machine, answer, error, message):
    machine.daemon("z1", "/mnt/z", pid=70, daemon_pid=71)
    t = _answering(machine, "z1", answer)
    with pytest.raises(error) as info:
        restart(machine.system(), "z1")
    t.join()
    assert str(info.value) == message
    if error is RestartRefusedError:
        assert exit_code_for(info.value) == EXIT_INCOMPATIBLE


def test_restart_reports_the_new_daemon(machine):
    machine.daemon("z1", "/mnt/z", pid=80, daemon_pid=81)
    t = _answering(machine, "z1", "OK 4321")
    assert restart(machine.system(), "z1") == (4321, 2)
    t.join()


# -- the supervisor's rules ------------------------------------------------------------


def _supervisor(**state):
    s = supervisor.Supervisor(["/mnt/z"])
    s.fuse_fd, s.kernel_minor, s.can_resend = 99, 45, True
    for k, v in state.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize(
    "state, code, served, why",
    [
        ({}, -9, True, None),  # SIGKILL: restart
        ({}, supervisor.EXIT_HANDOVER, True, None),  # zramfs restart
        ({}, -9, False, None),  # died while starting: restart (counted)
        ({"stopping": True}, -9, True, "stopping"),
        ({}, 1, True, "it failed on its own"),
        ({}, 3, True, "it failed on its own"),
        ({"fuse_fd": None}, -9, False, "it never served"),
        (
            {"can_resend": False, "kernel_minor": 38},
            -9,
            True,
            "the kernel cannot resend FUSE requests (protocol 7.38 < 7.40)",
        ),
        (
            {"quick_deaths": supervisor.MAX_QUICK_DEATHS},
            -9,
            False,
            f"{supervisor.MAX_QUICK_DEATHS} daemons in a row died before they served",
        ),
    ],
)
def test_when_the_supervisor_restarts_a_daemon(state, code, served, why):
    assert _supervisor(**state)._why_not_restart(code, served) == why


def test_supervisor_command_line():
    assert supervisor.parse_args(["--ready-fd", "7", "--hold-fd", "5", "--control", "/r/s", "--", "/mnt", "--size", "4096"]) == (
        ["/mnt", "--size", "4096"], 7, [5], "/r/s", None
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown option --frob"):
        supervisor.parse_args(["--frob", "1", "--", "/mnt"])
    with pytest.raises(ValueError, match="usage"):
        supervisor.parse_args(["/mnt"])


def test_the_supervisor_imports_no_zramfs_module_but_itself():
    """Its memory stays small: only the standard library (checked in a fresh interpreter)."""
    code = (
        "import sys, zramfs.supervisor; "
        "print(sorted(m for m in sys.modules if m.startswith(('zramfs', 'allocator', 'trio', 'lz4'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['zramfs', 'zramfs.supervisor']"


def test_swapoff_of_a_dead_mount_removes_its_directory(machine):
    """A dead mount's directory does not stat (ENOTCONN): it is removed after the unmount all the same."""
    machine.mount("/run/zramfs/z1", "z1")
    os.rmdir(os.path.join(machine.root, "run/zramfs/z1"))  # what isdir sees of a dead mount
    machine.daemon("z1", "/run/zramfs/z1", pid=90, alive=False, daemon_pid=91, daemon_alive=False)
    assert plan_swapoff(machine.system(), "z1") == [
        Step("unmount", "/run/zramfs/z1"),
        Step("rmdir", "/run/zramfs/z1"),
        Step("forget", "z1"),
    ]
