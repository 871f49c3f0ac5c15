"""`zramfs mount`/`umount` as an ordinary user (nobody), through fusermount3, for real.

Where this sits: the system tier's check of the non-root path in
`zramfs.fuse._mount`.  nobody mounts on a directory it owns, writes and reads
`disk`, finds the mount in mountinfo as `fuse.zramfs` with its name, is told
"busy" while it holds `disk` open, and unmounts: nothing is left.

fusermount3 needs /dev/fuse open to the user; distributions make it 0666
(udev).  Where this machine's node is not (0600 here), the user's commands
run in a private mount namespace with a 0666 node for the same device bound
over /dev/fuse -- the machine's own node is never touched.  The fixture's
teardown removes every mount, daemon and namespace holder, whatever the test
did, and then fails the test if it had to.
"""

import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from tests._support.system import BACKENDS, REPO
from zramfs.fuse._mount import unmount

NOBODY = 65534
AS_USER = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
NAME = "zramt-user"


def _reachable_by_others(path):
    """Whether every directory above `path` lets others through and `path` lets them execute."""
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & stat.S_IXOTH:
        return False
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _user_python():
    """A python of this version an ordinary user may run (a venv is made from it: `_user_venv`)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and _reachable_by_others(candidate):
            return candidate
    pytest.fail(f"no {version} that uid {NOBODY} may run ({sys.executable} is not reachable)")


def _user_venv(root):
    """A venv under `root` that nobody may run, which finds this checkout and this venv's packages.

    The CLI starts its daemon with ``python -I`` (no PYTHONPATH, no working
    directory), so the packages must be found the way an installation finds
    them: through a .pth file in the interpreter's own site-packages.
    """
    venv = os.path.join(root, "venv")
    subprocess.run([_user_python(), "-m", "venv", "--without-pip", venv], check=True)
    (site_dir,) = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
    with open(os.path.join(site_dir, "zramfs-checkout.pth"), "w") as f:
        f.write("\n".join([REPO, *(p for p in sys.path if p.endswith("site-packages"))]) + "\n")
    return os.path.join(venv, "bin", "python")


def _mountinfo(pid, path):
    """[(fstype, source, superopts)] of the mounts at `path` in the mount namespace of `pid`."""
    found = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == path:
                found.append((fields[sep + 1], fields[sep + 2], fields[sep + 3]))
    return found


def _daemons(mountpoint, modules=("zramfs.daemon",)):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(m in argv for m in modules) and mountpoint in argv and state not in ("Z", "X"):
            found.append(int(entry))
    return found


class UserMount:
    """A directory nobody owns under a 0755 tmp dir, and the zramfs CLI run as nobody."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="zramfs-user-", dir="/tmp")
        os.chmod(self.root, 0o755)
        self.mnt = os.path.join(self.root, "mnt")
        os.mkdir(self.mnt, 0o755)
        os.chown(self.mnt, NOBODY, NOBODY)
        self.disk = os.path.join(self.mnt, "disk")
        self.python = _user_venv(self.root)
        # The user's session directory, as logind makes it: the run directory goes there.
        self.xdg = os.path.join(self.root, "xdg")
        os.mkdir(self.xdg, 0o700)
        os.chown(self.xdg, NOBODY, NOBODY)
        self.run_dir = os.path.join(self.xdg, "zramfs")
        self.env = {**os.environ, "XDG_RUNTIME_DIR": self.xdg}
        self.env.pop("ZRAMFS_RUN_DIR", None)
        self.holder = None
        self.prefix = ()
        dev = os.stat("/dev/fuse")
        if dev.st_mode & 0o006 != 0o006:
            node = os.path.join(self.root, "fuse")
            os.mknod(node, stat.S_IFCHR | 0o666, dev.st_rdev)
            os.chmod(node, 0o666)
            self.holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --bind "$1" /dev/fuse && echo ready && exec sleep 3600', "sh", node],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if self.holder.stdout.readline() != b"ready\n":
                self.cleanup()
                pytest.fail(
                    f"cannot bind a 0666 node over /dev/fuse in a private mount namespace ({node})"
                )
            self.prefix = ("nsenter", f"--target={self.holder.pid}", "--mount")

    @property
    def ns_pid(self):
        return self.holder.pid if self.holder else os.getpid()

    def run(self, *argv, **kwargs):
        """Run argv as nobody (in the namespace, if there is one)."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(
            [*self.prefix, *AS_USER, *argv], env=self.env, text=True, timeout=60, cwd="/",
            stdin=subprocess.DEVNULL, check=False, **kwargs,
        )  # fmt: skip

    def cli(self, *args, **kwargs):
        return self.run(self.python, "-m", "zramfs", *args, **kwargs)

    def mounts(self):
        return _mountinfo(self.ns_pid, self.mnt)

    def cleanup(self):
        """Remove every leftover; return what there was."""
        left = []
        pids = _daemons(self.mnt)
        for _ in self.mounts():
            left.append("mount")
            if self.holder:
                subprocess.run([*self.prefix, "umount", "-l", self.mnt], check=False)
            else:
                unmount(self.mnt)  # as root: MNT_DETACH
        left += [f"daemon {pid}" for pid in pids]
        both = ("zramfs.supervisor", "zramfs.daemon")  # supervisors first: none restarts a daemon
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _daemons(self.mnt, both):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while _daemons(self.mnt, both) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.holder:
            self.holder.kill()
            self.holder.wait(timeout=10)
            self.holder.stdout.close()
        assert not _daemons(self.mnt, both), "a daemon or supervisor survived SIGKILL"
        shutil.rmtree(self.root)
        return left


@pytest.fixture
def user_mount():
    um = UserMount()
    try:
        yield um
    finally:
        left = um.cleanup()
    assert not left, f"the test left these behind (now removed): {left}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_user_mounts_writes_and_unmounts(user_mount, tmp_path, backend):
    um = user_mount
    log = tmp_path / "daemon.log"
    with open(log, "w") as stderr:  # a file, so the background daemon logs into it
        r = um.cli("mount", um.mnt, "--size", "64M", "--name", NAME, "--fuse-backend", backend,
                   capture_output=False, stdout=subprocess.PIPE, stderr=stderr)  # fmt: skip
    assert r.returncode == 0, log.read_text()
    assert r.stdout == f"{NAME}: 64 MiB lz4, mounted at {um.mnt}\n"
    assert log.read_text() == ""  # the daemon logs into its own file, in the user's run directory
    daemon_log = os.path.join(um.run_dir, f".{NAME}", "daemon.log")
    with open(daemon_log) as f:
        text = f.read()
    # Hardening is root-only: skipped, said once; nothing else went wrong.
    assert text.count("zramfs-daemon: not root: memory is not locked") == 1, text
    assert "failed" not in text
    assert os.stat(um.run_dir).st_mode & 0o777 == 0o700 and os.stat(daemon_log).st_uid == NOBODY

    ((fstype, source, opts),) = um.mounts()
    assert (fstype, source) == ("fuse.zramfs", NAME)
    assert f"user_id={NOBODY}" in opts.split(",")

    r = um.run(
        "sh",
        "-c",
        'printf zramfs-user | dd of="$1" conv=notrunc status=none && head -c 11 "$1"',
        "sh",
        um.disk,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "zramfs-user", "")
    r = um.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [row for row in json.loads(r.stdout)["zramfs"] if row["dir"] == um.mnt]
    assert (row["name"], row["disksize"], row["backend"]) == (NAME, 64 << 20, backend)
    assert row["data"] == 4096

    # Not lazy: while nobody holds disk open, umount is refused as busy (exit 5).
    r = um.run(
        "sh", "-c", 'exec 3<"$1"; shift; exec "$@"', "sh", um.disk, um.python, "-m", "zramfs", "umount", um.mnt,
    )  # fmt: skip
    assert (r.returncode, r.stderr) == (
        5,
        f"zramfs: error: {um.mnt} is busy (a process or loop device has files open)\n",
    )
    assert len(um.mounts()) == 1 and len(_daemons(um.mnt)) == 1

    r = um.cli("umount", um.mnt)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert um.mounts() == []
    assert _daemons(um.mnt, ("zramfs.supervisor", "zramfs.daemon")) == []  # umount waits for both
    assert not os.path.exists(um.run_dir)  # and nothing is left in the user's run directory


def test_cleanup_of_a_user_mount_left_behind(tmp_path):
    # The fixture's teardown, on the mess a killed test leaves: mount and daemon.
    um = UserMount()
    try:
        with open(tmp_path / "log", "w") as stderr:
            r = um.cli("mount", um.mnt, "--size", "64M", "--name", NAME, capture_output=False,
                       stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
        assert r.returncode == 0, (tmp_path / "log").read_text()
        pid = _daemons(um.mnt)[0]
    finally:
        left = um.cleanup()
    assert left == ["mount", f"daemon {pid}"]
    assert not os.path.exists(um.root)
