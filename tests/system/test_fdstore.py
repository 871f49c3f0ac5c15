"""systemd/zramfs@.service under a real systemd: the fd store keeps the device
when the supervisor and the daemon are both killed, and a stop leaves nothing.

The container (tests/_support/nspawn.py) runs this tree's zramfs; the unit is
the shipped file, unchanged.  First the daemon alone is killed (its supervisor
restarts it; systemd sees nothing).  Data goes through `disk` with O_DIRECT,
one write still in flight when both processes get SIGKILL; systemd restarts
the service, which takes the device over from the fds it kept, and every byte
is read back.  Then the supervisor alone is killed: the restarted service ends
its old daemon itself before a new one resumes.
"""

import json
import os
import time

import pytest

from tests._support.nspawn import TreeContainer
from tests.system.test_systemd import REPO, require_nspawn

pytestmark = pytest.mark.slow

NAME = "zram5"
UNIT = f"zramfs@{NAME}.service"
MNT = f"/run/zramfs/{NAME}"
DISK = f"{MNT}/disk"
MiB = 1 << 20
# 24 MiB random (huge pages) + 24 MiB of /usr/bin (compressible): 48 MiB,
# written at 0 and again, with a kill during it, at 48 MiB.
DATA_MIB = 48


@pytest.fixture
def tree_container(tmp_path):
    require_nspawn()
    # No loop device or swap here: what the container holds (its mount, its
    # processes) ends with it.
    c = TreeContainer(str(tmp_path))
    try:
        yield c
    finally:
        c.stop()
        c.console.close()


def _state(c):
    props = c.unit(UNIT, "ActiveState", "MainPID", "NRestarts", "Result")
    record = json.loads(c.run("cat", f"/run/zramfs/.{NAME}/daemon.json").stdout)
    return props, record


def _wait_restarted(c, restarts):
    """Wait until systemd restarted the service `restarts` times and its new
    daemon serves; the seconds that took (polled: tens of ms too many)."""
    start = time.monotonic()
    while time.monotonic() < start + 30:
        props = c.unit(UNIT, "ActiveState", "NRestarts")
        if props == {"ActiveState": "active", "NRestarts": str(restarts)}:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(
        f"{UNIT} not restarted: {c.unit(UNIT, 'ActiveState', 'NRestarts')}\n{c.journal(UNIT)[-6000:]}"
    )


def _sha(c, command):
    return c.run("sh", "-c", f"{command} | sha256sum").stdout.split()[0]


def _read_back(c):
    return _sha(c, f"dd if={DISK} bs=1M count={2 * DATA_MIB} iflag=direct status=none")


def _processes(c):
    args = c.run("ps", "-eo", "pid=,args=").stdout.splitlines()
    return {
        module: [int(line.split()[0]) for line in args if f"-m zramfs.{module}" in line]
        for module in ("supervisor", "daemon")
    }


def test_fd_store_keeps_every_page_when_supervisor_and_daemon_die(tree_container):
    c = tree_container
    with open(os.path.join(REPO, "systemd", "zramfs@.service")) as f:
        unit = f.read()
    c.start({"zramfs@.service": unit}, {f"{NAME}.env": 'OPTIONS="--size 128M --algorithm zstd"\n'})
    c.run("systemctl", "start", UNIT, timeout=60)
    props, record = _state(c)
    assert props["ActiveState"] == "active", c.journal(UNIT)
    # The supervisor is the service's main process; the daemon its child.
    assert record["pid"] == int(props["MainPID"]) and record["restarts"] == 0
    assert _processes(c) == {"supervisor": [record["pid"]], "daemon": [record["daemon_pid"]]}

    # The daemon alone: the supervisor restarts it, systemd sees nothing.
    c.run("kill", "-9", str(record["daemon_pid"]))
    deadline = time.monotonic() + 30
    while _state(c)[1]["restarts"] != 1:
        assert time.monotonic() < deadline, c.journal(UNIT)
        time.sleep(0.05)
    props, record = _state(c)
    assert props["NRestarts"] == "0" and record["pid"] == int(props["MainPID"])

    half = DATA_MIB // 2
    c.run("sh", "-c", f"head -c {half}M /dev/urandom > /var/tmp/data; "
          f"cat /usr/bin/* 2>/dev/null | head -c {half}M >> /var/tmp/data")  # fmt: skip
    c.run("dd", "if=/var/tmp/data", f"of={DISK}", "bs=1M", "oflag=direct", "conv=notrunc",
          "status=none")  # fmt: skip
    # The second copy in small writes, so that it is still going when both die.
    c.run("systemd-run", "--unit=writer", "--property=Type=exec", "dd", "if=/var/tmp/data",
          f"of={DISK}", "bs=16k", f"seek={DATA_MIB * MiB // 16384}", "oflag=direct",
          "conv=notrunc", "status=none")  # fmt: skip
    c.run("sleep", "0.3")
    assert c.unit("writer.service", "ActiveState")["ActiveState"] == "active"
    c.run("kill", "-9", str(record["pid"]), str(record["daemon_pid"]))
    both = _wait_restarted(c, 1)
    assert c.wait_unit("writer.service", ("inactive", "failed")) == "inactive", c.journal(
        "writer.service"
    )
    expected = _sha(c, "cat /var/tmp/data /var/tmp/data")
    assert _read_back(c) == expected, c.journal(UNIT)
    props, after = _state(c)
    assert after["pid"] == int(props["MainPID"]) != record["pid"] and after["restarts"] == 2
    assert _processes(c) == {"supervisor": [after["pid"]], "daemon": [after["daemon_pid"]]}

    # The supervisor alone: its daemon serves on until the restarted service ends it.
    c.run("kill", "-9", str(after["pid"]))
    alone = _wait_restarted(c, 2)
    print(
        f"\nkill to serving again: both {both * 1000:.0f} ms, the supervisor {alone * 1000:.0f} ms"
    )
    assert _read_back(c) == expected, c.journal(UNIT)
    props, last = _state(c)
    assert last["restarts"] == 3
    assert _processes(c) == {"supervisor": [last["pid"]], "daemon": [last["daemon_pid"]]}
    journal = c.journal(UNIT)
    assert journal.count("taking over the device from a supervisor that died") == 2, journal
    # Only the main process spoke to systemd (the daemon has no $NOTIFY_SOCKET).
    assert "reception only permitted for main PID" not in journal, journal

    # A clean stop: unmounted, both processes gone, nothing in /run/zramfs.
    c.run("systemctl", "stop", UNIT, timeout=60)
    props = c.unit(UNIT, "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "Result": "success"}, c.journal(UNIT)
    assert "fuse.zramfs" not in c.run("cat", "/proc/self/mountinfo").stdout
    assert _processes(c) == {"supervisor": [], "daemon": []}
    assert c.run("sh", "-c", "ls -A /run/zramfs 2>/dev/null || true").stdout == ""
