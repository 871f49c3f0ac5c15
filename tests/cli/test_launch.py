"""zramfs.launch: how the daemon is started (isolated, in /, clean environment) and what a failed start says."""

import os
import sys

import pytest

from zramfs import cli, launch
from zramfs.config import DeviceConfig


def test_the_daemon_runs_isolated():
    config = DeviceConfig(mountpoint="/mnt/z", size=4096)
    command = launch.daemon_command(config, python="/usr/bin/python3")
    # -I: no working directory or script directory on sys.path, no PYTHON* variables, no user site.
    assert command[:4] == ["/usr/bin/python3", "-I", "-m", "zramfs.daemon"]
    assert command[4:] == config.argv()


def test_the_environment_is_cleaned(monkeypatch):
    for name, value in {
        "PYTHONPATH": "/tmp/evil",
        "PYTHONSTARTUP": "/tmp/evil.py",
        "PYTHONHOME": "/tmp",
        "LD_PRELOAD": "/tmp/evil.so",
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("ZRAMFS_PURE_PYTHON", "ZRAMFS_NO_URING", "ZRAMFS_FUSE_SPIN_US"):
        monkeypatch.delenv(name, raising=False)  # a test run's own switches
    env = launch.clean_env()
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }
    monkeypatch.delenv("PATH")
    assert launch.clean_env()["PATH"] == launch.DEFAULT_PATH


def test_the_speed_levers_off_switches_reach_the_daemon(monkeypatch):
    switches = {"ZRAMFS_PURE_PYTHON": "1", "ZRAMFS_NO_URING": "1", "ZRAMFS_FUSE_SPIN_US": "0"}
    for name, value in switches.items():
        monkeypatch.setenv(name, value)
    env = launch.clean_env()
    assert {name: env.get(name) for name in switches} == switches


@pytest.fixture
def not_executable(tmp_path):
    python = tmp_path / "python"
    python.write_text("")
    python.chmod(0o644)
    return str(python)


def test_a_daemon_that_cannot_be_started_is_a_typed_error(tmp_path, not_executable):
    config = DeviceConfig(mountpoint=str(tmp_path), size=4096)
    with pytest.raises(launch.DaemonStartError) as info:
        launch.spawn(config, python=not_executable)
    assert (
        str(info.value) == f"cannot start the zramfs daemon ({not_executable}): Permission denied"
    )
    assert cli.exit_code_for(info.value) == cli.EXIT_FAILURE


@pytest.mark.skipif(
    not os.path.exists("/dev/fuse"), reason="mount checks /dev/fuse before it starts a daemon"
)
def test_a_mount_whose_daemon_cannot_start_is_one_line_exit_1_and_undone(
    tmp_path, not_executable, monkeypatch, capsys
):
    """Issue 10: an OSError from starting the daemon was a traceback."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("ZRAMFS_RUN_DIR", str(run_dir))
    monkeypatch.setattr(
        sys, "executable", not_executable
    )  # in this process only: no knob for anyone else
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = cli.main(["mount", str(mnt), "--size", "64M", "--name", "zt-spawn"])
    out, err = capsys.readouterr()
    assert (code, out, err) == (
        1,
        "",
        f"zramfs: error: cannot start the zramfs daemon ({not_executable}): Permission denied\n",
    )
    assert not run_dir.exists()  # the claim and the run directory are undone
