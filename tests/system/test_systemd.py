"""Boot integration under a real systemd: install, boot, use, stop, fail readably.

systemd is not PID 1 on the machines this runs on, so the test boots one in
a container made from the host's own /usr (``systemd-nspawn --volatile=yes``,
apt package systemd-container):

- ``scripts/setup.sh --system`` runs for real, in a private mount namespace
  where /usr/local and /opt are overlays whose writes go to a temporary
  directory: the host's own are never touched, and the container (whose /usr
  is the host's) sees the install at the real paths.  ``--uninstall`` runs
  there too once the container is off, and must leave nothing.
- /etc/zramfs comes from a temporary directory, with one swap device and one
  file system device; PID 1's command line carries
  ``systemd.zramfs.container=1``, so the generator runs in the container.
- /dev/fuse and /dev/loop-control are bound in; the setup makes the node of
  the loop device it gets (the container's /dev has no udev).
- Commands run inside with ``nsenter`` into the container's namespaces.

Whatever happens, the container is powered off (then SIGTERM, then SIGKILL),
and any swap or loop device it left on the host is removed; the test fails
if it had to remove one.

In the container the setup services swapon themselves: systemd refuses
``.swap`` units there.  Outside one, the generator writes a ``.swap`` unit
and the setup stops after mkswap.  ``test_swap_unit_under_systemd`` boots
the container with PID 1 told it is on a host, so a real systemd runs that
unit; ``test_swap_unit_path_on_the_host`` does on the host what systemd
would with the units the generator wrote (the setup's start with its
drop-in's environment, the swapon and swapoff systemd's swap.c runs, the
setup's stop), also with a taken loop device and after the daemon died.
"""

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import memcg
import pytest

from zramfs import system

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NSPAWN = shutil.which("systemd-nspawn")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CONFIG = """\
# copied as zram-generator would take it
[zram0]
zram-size = 128
swap-priority = 50
compression-algorithm = zstd

[zram1]
zram-size = 64
mount-point = /var/tmp/zfs
# a file, which zram-generator cannot use (zramfs makes it)
writeback-device = /var/lib/zram1.wb
"""
BROKEN = """\
[zram2]
zram-size = 64
compression-algorithm = zstd(level=99)
"""

BOOT_SCRIPT = r"""
set -e
# /opt and /usr/local as the host has them, with every write going to $T.
for d in opt usr/local; do
    mkdir -p "$T/upper/$d" "$T/work/$d"
    mount -t overlay overlay -o "lowerdir=/$d,upperdir=$T/upper/$d,workdir=$T/work/$d" "/$d"
done
scripts/setup.sh --system > "$T/install.log" 2>&1
set +e
systemd-nspawn --quiet --register=no --keep-unit -D / --volatile=yes \
    --console=read-only $NSPAWN_ARGS \
    --capability=CAP_IPC_LOCK,CAP_SYS_RESOURCE --system-call-filter=@swap \
    --bind=/dev/fuse --bind=/dev/loop-control --bind-ro=/opt/zramfs \
    --bind-ro="$T/etc-zramfs:/etc/zramfs" \
    -b systemd.firstboot=off $INIT_ARGS
status=$?
scripts/setup.sh --uninstall > "$T/uninstall.log" 2>&1 || status=$?
exit $status
"""

pytestmark = pytest.mark.slow


def _loops():
    """{loopN: backing file} for every attached loop device on the host."""
    loops = {}
    for entry in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{entry}/loop/backing_file") as f:
                loops[entry] = f.read().strip()
        except OSError:
            pass
    return loops


class Container:
    """A booted container; ``run`` executes a command inside it."""

    def __init__(self, tmp):
        self.tmp = tmp
        os.makedirs(os.path.join(tmp, "etc-zramfs"))
        self.console = open(os.path.join(tmp, "console.log"), "w")
        self.proc = None
        self.leader = None
        self.as_host = False

    def start(self, config, *, as_host=False):
        """Boot with `config`; `as_host`: PID 1 is told it is in no container (see
        test_swap_unit_under_systemd), and is only ever killed, never powered off."""
        with open(os.path.join(self.tmp, "etc-zramfs", "zramfs-generator.conf"), "w") as f:
            f.write(config)
        self.as_host = as_host
        if as_host:
            nspawn_args, init_args = (
                "--setenv=container= --bind-ro=/dev/null:/run/host/container-manager "
                "--kill-signal=SIGKILL",
                "",
            )
        else:
            nspawn_args, init_args = "--kill-signal=SIGRTMIN+3", "systemd.zramfs.container=1"
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", BOOT_SCRIPT],
            cwd=REPO,
            env={
                "PATH": PATH,
                "T": self.tmp,
                "HOME": os.environ.get("HOME", "/root"),
                "NSPAWN_ARGS": nspawn_args,
                "INIT_ARGS": init_args,
            },
            stdout=self.console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_for_systemd(timeout=300)  # the install builds a wheel
        state = self.run(
            "systemctl", "is-system-running", "--wait", check=False, timeout=120
        ).stdout.strip()
        assert state in ("running", "degraded"), f"system is {state}: {self.log()}"

    def wait_for_systemd(self, timeout, interval=0.2):
        """Wait until the container's PID 1 runs and answers systemctl."""
        deadline = time.monotonic() + timeout
        while self.leader is None:
            if self.proc.poll() is not None:
                raise AssertionError(f"nspawn exited {self.proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the container did not start: {self.log()}")
            self.leader = self._find_leader()
            time.sleep(interval)
        # systemctl talks to PID 1 over this socket, which PID 1 makes early
        # in its boot (until then systemctl fails at once, even with --wait).
        while self.run("test", "-S", "/run/systemd/private", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"systemd in the container did not come up: {self.log()}")
            time.sleep(interval)

    def _find_leader(self):
        """The container's PID 1: the process under the script's nspawn that runs systemd."""
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(child) for child in f.read().split()]
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"/systemd") or argv0 == b"/sbin/init":
                return pid
        return None

    def run(self, *argv, check=True, timeout=60):
        proc = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-m",
                "-u",
                "-i",
                "-p",
                "-r",
                "-w",
                "env",
                "-i",
                f"PATH={PATH}",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
            )
        return proc

    def unit(self, name, *props):
        out = self.run("systemctl", "show", "-p", ",".join(props), name).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_unit(self, name, states=("active", "failed"), timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            state = self.unit(name, "ActiveState")["ActiveState"]
            if state in states or time.monotonic() > deadline:
                return state
            time.sleep(0.2)

    def log(self):
        self.console.flush()
        text = ""
        for name in ("install.log", "console.log", "uninstall.log"):
            try:
                with open(os.path.join(self.tmp, name)) as f:
                    text += f"\n--- {name}\n" + f.read()[-4000:]
            except OSError:
                pass
        try:  # what the setups said, if the container still runs
            journal = self.run(
                "journalctl", "-o", "cat", "-u", "zramfs-setup@*", check=False
            ).stdout
            text += "\n--- journal of zramfs-setup@*\n" + journal[-4000:]
        except Exception as exc:  # the log is for a failure message; never fail it
            text += f"\n--- journal unavailable: {exc}\n"
        return text

    def stop(self):
        """Power off; then SIGTERM nspawn (which asks PID 1 to power off); then SIGKILL.

        Returns what ended it: "poweroff", "SIGTERM", "SIGKILL" (None: it had ended).
        """
        if self.proc is None or self.proc.poll() is not None:
            return None
        if self.as_host and self.leader is not None:
            # A PID 1 that thinks it is on the host would, at the end of a
            # shutdown, swapoff and detach every swap and loop device it
            # sees: the host's.  Killing it ends the container at once.
            os.kill(self.leader, signal.SIGKILL)
            self.proc.wait(timeout=60)
            return "SIGKILL"
        if self.leader is not None:
            try:
                self.run("systemctl", "--no-block", "poweroff", check=False, timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait in ((None, 60), (signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            if sig is not None:
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                return sig.name if sig else "poweroff"
            except subprocess.TimeoutExpired:
                continue
        return "nothing"


def require_nspawn():
    """Skip without systemd-nspawn, or fail where the system tiers are required."""
    if NSPAWN is None:
        message = "needs systemd-nspawn (apt package systemd-container)"
        if os.environ.get("ZRAMFS_SYSTEM_TESTS") == "require":
            pytest.fail(
                f"ZRAMFS_SYSTEM_TESTS=require, but this system test {message}", pytrace=False
            )
        pytest.skip(message)


@pytest.fixture
def container(tmp_path):
    require_nspawn()
    loops_before = _loops()
    c = Container(str(tmp_path))
    try:
        yield c
    finally:
        c.stop()
        c.console.close()
        left = remove_leftovers(loops_before)
        assert not left, f"the container left these behind (now removed): {left}"


def remove_leftovers(loops_before):
    """Swapoff and detach the loop devices attached since `loops_before`; say which.

    A container's loop devices and swap areas are the kernel's: they outlive it.
    """
    left = []
    new = {loop: f for loop, f in _loops().items() if loops_before.get(loop) != f}
    for loop in new:
        # /proc/swaps names it by the container's node ("/loop0" once that
        # /dev is gone), so try swapoff on every one: it fails on a non-swap.
        if subprocess.run(["swapoff", f"/dev/{loop}"], stderr=subprocess.DEVNULL).returncode == 0:
            left.append(f"swap on /dev/{loop}")
        subprocess.run(["losetup", "-d", f"/dev/{loop}"])
        left.append(f"/dev/{loop} ({new[loop]})")
    return left


def test_boot_use_stop_and_a_broken_config(container):
    container.start(CONFIG)
    c = container

    # Boot: the generator's units set both devices up, without being asked.
    assert c.wait_unit("zramfs-setup@zram0.service") == "active", c.log()
    assert c.wait_unit("var-tmp-zfs.mount") == "active", c.log()
    assert c.unit("zramfs-setup@zram1.service", "ActiveState")["ActiveState"] == "active"
    desc = c.unit("zramfs-setup@zram0.service", "Description")["Description"]
    assert desc == "zramfs swap zram0: disksize 134217728 (128.0 MiB), zstd, priority 50"

    swaps = c.run("swapon", "--show=NAME,SIZE,PRIO", "--bytes", "--noheadings").stdout.split()
    assert len(swaps) == 3 and swaps[0].startswith("/dev/loop"), swaps
    # mkswap keeps the first page for its header.
    assert int(swaps[1]) == 128 * 2**20 - 4096 and swaps[2] == "50"
    status = {
        d["name"]: d for d in json.loads(c.run("zramfs", "status", "--json").stdout)["zramfs"]
    }
    assert set(status) == {"zram0", "zram1"}, status

    source, fstype = c.run("findmnt", "-n", "-o", "SOURCE,FSTYPE", "/var/tmp/zfs").stdout.split()
    assert source.startswith("/dev/loop") and fstype == "ext2"
    assert os.path.basename(source) != os.path.basename(swaps[0])
    c.run("dd", "if=/dev/urandom", "of=/var/tmp/zfs/data", "bs=1M", "count=8", "status=none")
    written = c.run("sha256sum", "/var/tmp/zfs/data").stdout.split()[0]
    c.run("sync")
    # The file writeback-device: random data is huge pages, written back to it.
    assert c.run("cat", "/run/zramfs/zram1/backing_dev").stdout == "/var/lib/zram1.wb\n"
    c.run("sh", "-c", "echo huge > /run/zramfs/zram1/writeback")
    assert int(c.run("cat", "/run/zramfs/zram1/bd_stat").stdout.split()[0]) >= 2048
    # The setup made the file and marked it, so the next boot's setup may empty it.
    mark = c.run(
        "python3",
        "-c",
        "import os; print(os.getxattr('/var/lib/zram1.wb', "
        "'trusted.zramfs-generator.backing').decode())",
    ).stdout
    assert mark == "zram1\n"
    # Read back past the page cache, from the compressed device.
    back = c.run(
        "sh", "-c", "dd if=/var/tmp/zfs/data iflag=direct bs=1M status=none | sha256sum"
    ).stdout.split()[0]
    assert back == written

    # Stop both: swapoff, unmount, loop devices detached, daemons gone.
    c.run("systemctl", "stop", "zramfs-setup@zram0.service", "var-tmp-zfs.mount", timeout=120)
    # The mount's setup service is bound to it: its stop follows as a job of its own.
    assert c.wait_unit("zramfs-setup@zram1.service", ("inactive", "failed")) == "inactive", c.log()
    assert c.run("swapon", "--show", "--noheadings").stdout == ""
    assert c.run("findmnt", "/var/tmp/zfs", check=False).returncode == 1
    assert "fuse.zramfs" not in c.run("cat", "/proc/self/mountinfo").stdout
    assert c.run("losetup", "--list", "--noheadings").stdout == ""
    assert json.loads(c.run("zramfs", "status", "--json").stdout) == {"zramfs": []}
    assert c.run("sh", "-c", "ls -A /run/zramfs 2>/dev/null || true").stdout == ""
    assert c.run("test", "-e", "/run/zramfs-generator/zram1", check=False).returncode == 1
    processes = c.run("ps", "-eo", "args", "--no-headers").stdout.splitlines()
    assert not [p for p in processes if "-m zramfs.daemon" in p or "-m zramfs.supervisor" in p], (
        processes
    )

    # A broken config: a failed unit, and the reason in one journal line.
    os.makedirs(os.path.join(c.tmp, "etc-zramfs", "zramfs-generator.conf.d"))
    with open(
        os.path.join(c.tmp, "etc-zramfs", "zramfs-generator.conf.d", "50-broken.conf"), "w"
    ) as f:
        f.write(BROKEN)
    c.run("systemctl", "daemon-reload")
    assert c.run("systemctl", "start", "zramfs-setup@zram2.service", check=False).returncode != 0
    props = c.unit("zramfs-setup@zram2.service", "ActiveState", "Result")
    assert props == {"ActiveState": "failed", "Result": "exit-code"}, props
    journal = c.run("journalctl", "-o", "cat", "-u", "zramfs-setup@zram2.service").stdout
    reason = (
        "zramfs-generator: zram2: refused: compression-algorithm zstd(level=99): "
        "zstd level must be between 1 and 22, not 99"
    )
    assert reason in journal.splitlines(), journal

    # Shutdown with both devices in use: swapoff and unmount come before the
    # daemons stop, and the container powers off by itself, leaving nothing
    # (the fixture checks the host for loop devices and swap).
    c.run("systemctl", "start", "zramfs-setup@zram0.service", "var-tmp-zfs.mount", timeout=120)
    c.run("cp", "/usr/bin/systemctl", "/var/tmp/zfs/")
    assert len(c.run("swapon", "--show", "--noheadings").stdout.splitlines()) == 1
    # The reset reads no config: the devices go even when their config went first.
    shutil.rmtree(os.path.join(c.tmp, "etc-zramfs"))
    console = os.path.join(c.tmp, "console.log")
    booted = os.path.getsize(console)
    started = time.monotonic()
    assert c.stop() == "poweroff", c.log()
    assert time.monotonic() - started < 60
    with open(console) as f:
        f.seek(booted)
        shutdown = f.read()
    for done in (
        "Unmounted var-tmp-zfs.mount",
        "Stopped zramfs-setup@zram0.service",
        "Stopped zramfs-setup@zram1.service",
    ):
        assert done in shutdown, shutdown
    assert "FAILED" not in shutdown, shutdown
    assert c.proc.returncode == 0, c.log()

    # The real uninstall, in the same namespace after the container: nothing
    # of the install is left in /opt or /usr/local (only directories they had).
    with open(os.path.join(c.tmp, "uninstall.log")) as f:
        assert f.read() == "setup.sh: zramfs removed from the system\n"
    upper = os.path.join(c.tmp, "upper")
    left = [os.path.join(d, f) for d, _, files in os.walk(upper) for f in files]
    left += [d for d, _, _ in os.walk(upper) if os.path.islink(d)]
    assert left == [], left


# -- outside a container: the .swap unit's path ------------------------------------------

SWAP_CONFIG = """\
[zram0]
zram-size = 96
swap-priority = 7
options = discard,nofail
"""


def test_swap_unit_under_systemd(container):
    """The .swap unit's path under a real systemd: PID 1 told it is in no container.

    systemd finds a container by /run/host/container-manager (which nspawn
    writes), else by PID 1's ``$container``: with that file bound to
    /dev/null and ``--setenv=container=``, PID 1 takes itself for a host's,
    runs .swap units, and gives generators no ``container:``
    ``$SYSTEMD_VIRTUALIZATION``, so the generator writes the .swap unit.
    /sys is read-only there, so systemd has no device units and the unit
    waits for no udev.  Such a PID 1 must never shut down (systemd-shutdown
    would swapoff and detach every swap and loop device it sees: the
    host's), so the container is killed instead, and shutdown is the
    container test's.
    """
    container.start(SWAP_CONFIG, as_host=True)
    c = container
    assert c.wait_unit("dev-loop1000.swap") == "active", c.log()
    assert c.unit("zramfs-setup@zram0.service", "ActiveState")["ActiveState"] == "active"
    swap = c.unit("dev-loop1000.swap", "What", "Priority", "Options", "Requires", "After")
    assert (swap["What"], swap["Priority"], swap["Options"]) == (
        "/dev/loop1000",
        "7",
        "discard,nofail",
    )
    assert "zramfs-setup@zram0.service" in swap["Requires"].split()
    assert "zramfs-setup@zram0.service" in swap["After"].split()
    assert c.unit("zramfs-setup@zram0.service", "BindsTo")["BindsTo"] == "dev-loop1000.swap"
    # The .swap unit swapped it on, with the config's priority; the setup only made it.
    shown = c.run("swapon", "--show=NAME,SIZE,PRIO", "--bytes", "--noheadings").stdout.split()
    assert shown == ["/dev/loop1000", str(96 * 2**20 - 4096), "7"], shown
    journal = c.run("journalctl", "-o", "cat", "-u", "zramfs-setup@zram0.service").stdout
    assert "zram0: 96 MiB lz4 swap area on /dev/loop1000 (not swapped on)" in journal, journal

    def assert_nothing_left():
        assert c.run("swapon", "--show", "--noheadings").stdout == ""
        assert c.run("losetup", "--list", "--noheadings").stdout == ""
        assert json.loads(c.run("zramfs", "status", "--json").stdout) == {"zramfs": []}
        assert "fuse.zramfs" not in c.run("cat", "/proc/self/mountinfo").stdout
        assert c.run("test", "-e", "/sys/block/loop1000", check=False).returncode == 1
        processes = c.run("ps", "-eo", "args", "--no-headers").stdout.splitlines()
        assert not [p for p in processes if "-m zramfs.daemon" in p], processes

    # Stopping the swap: swapoff, and the setup service bound to it follows.
    c.run("systemctl", "stop", "dev-loop1000.swap", timeout=120)
    assert c.wait_unit("zramfs-setup@zram0.service", ("inactive", "failed")) == "inactive", c.log()
    assert_nothing_left()
    # Starting the swap starts its setup first; stopping the setup stops the swap first.
    c.run("systemctl", "start", "dev-loop1000.swap", timeout=120)
    assert c.unit("zramfs-setup@zram0.service", "ActiveState")["ActiveState"] == "active"
    c.run("systemctl", "stop", "zramfs-setup@zram0.service", timeout=120)
    assert c.unit("dev-loop1000.swap", "ActiveState")["ActiveState"] == "inactive"
    assert_nothing_left()
    # In that order: the swap was off before the setup's stop (the reset) began.
    swap_off = c.unit("dev-loop1000.swap", "InactiveEnterTimestampMonotonic")
    reset = c.unit("zramfs-setup@zram0.service", "ActiveExitTimestampMonotonic")
    assert int(swap_off["InactiveEnterTimestampMonotonic"]) <= int(
        reset["ActiveExitTimestampMonotonic"]
    )


# -- outside a container: the .swap unit's path, on the host ---------------------------

HOST_CONFIG = """\
[zram97]
zram-size = 64
swap-priority = 42
options = discard,nofail
"""


def _generator(*argv, env=None):
    return subprocess.run(
        [sys.executable, "-m", "zramfs.generator", *argv],
        env={**{k: v for k, v in os.environ.items() if k != "SYSTEMD_VIRTUALIZATION"}, **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def _unit(path):
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _swaps():
    """{device: (used KiB, priority)} of /proc/swaps."""
    with open("/proc/swaps") as f:
        return {line.split()[0]: tuple(line.split()[3:5]) for line in f.readlines()[1:]}


# 40 MiB touched under a 16 MiB cgroup: most of it goes to swap, and stays.
HOG = (
    "b = bytearray(40 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint(flush=True)\ninput()"
)


def _kill_daemon(name):
    """SIGKILL the supervisor and the daemon of swap device `name` (what a crash leaves)."""
    sys_ = system.System(run_dir="/run/zramfs")
    record = sys_.daemon_record(name)
    assert record is not None
    for pid, _ in record.processes():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(system.start_time(pid) for pid, _ in record.processes()):
        assert time.monotonic() < deadline, "the daemon outlived SIGKILL"
        time.sleep(0.05)


def test_swap_unit_path_on_the_host(tmp_path):
    root = tmp_path / "root"
    (root / "etc/zramfs").mkdir(parents=True)
    (root / "proc").mkdir()
    (root / "etc/zramfs/zramfs-generator.conf").write_text(HOST_CONFIG)
    shutil.copy("/proc/meminfo", root / "proc/meminfo")
    out = tmp_path / "units"
    proc = _generator(str(out), env={"ZRAMFS_GENERATOR_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr

    # What systemd would read: the .swap unit, and the setup's drop-in.
    swap = _unit(out / "dev-loop1097.swap")["Swap"]
    assert dict(swap) == {"What": "/dev/loop1097", "Priority": "42", "Options": "discard,nofail"}
    dropin = _unit(out / "zramfs-setup@zram97.service.d/device.conf")
    assert dropin["Unit"]["BindsTo"] == "dev-loop1097.swap"
    key, loop = dropin["Service"]["Environment"].split("=", 1)
    assert loop == swap["What"]
    service_env = {"ZRAMFS_GENERATOR_ROOT": str(root), key: loop}
    # swap.c's command lines for this unit.
    swapon = ["swapon", "--fixpgsz", "-o", swap["Options"], "-p", swap["Priority"], loop]
    swapoff = ["swapoff", loop]

    loops_before = _loops()
    assert "loop1097" not in loops_before, "/dev/loop1097 is in use on this machine"
    had_link_dir = os.path.isdir("/run/zramfs-generator")
    taken = tmp_path / "taken"
    taken.write_bytes(b"\0" * 2**20)
    try:
        # The fixed loop device held by someone else: a failed setup, the reason in one line.
        system.add_loop_device(1097)
        subprocess.run(["losetup", loop, str(taken)], check=True)
        proc = _generator("--setup-device", "zram97", env=service_env)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.splitlines()[0] == (
            "zramfs: error: /dev/loop1097 is attached already "
            "(losetup -d it, or give another --loop)"
        )
        subprocess.run(["losetup", "-d", loop], check=True)

        for crash in (False, True):
            # The setup service's start: mounted, attached at the fixed device, mkswap, no swapon.
            proc = _generator("--setup-device", "zram97", env=service_env)
            assert proc.returncode == 0, proc.stderr
            assert _loops()["loop1097"] == "/run/zramfs/zram97/disk"
            assert loop not in _swaps()
            # The .swap unit's start.
            subprocess.run(swapon, check=True)
            assert _swaps()[loop] == ("0", "42")
            if not crash:
                subprocess.run(swapoff, timeout=60, check=True)
            else:
                # Shutdown after the daemon died, with pages out on its swap:
                # reading them back fails at once (the FUSE connection is gone),
                # so swapoff finishes, never hangs.
                with memcg.memory_cgroup(16 << 20) as cg:
                    hog = cg.popen(
                        [sys.executable, "-c", HOG],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    try:
                        assert hog.stdout is not None and hog.stdout.readline() == "\n"
                        assert int(_swaps()[loop][0]) > 16 << 10, _swaps()
                        _kill_daemon("zram97")
                        subprocess.run(swapoff, timeout=60)
                    finally:
                        hog.kill()
                        hog.communicate()
                    # While the hog lived, swapoff may stop at the first page it
                    # cannot read back (EIO) and leave the area on; shutdown stops
                    # processes before swap units, so once they are gone it must go.
                    if loop in _swaps():
                        subprocess.run(swapoff, timeout=60, check=True)
            assert loop not in _swaps()
            # The setup service's stop: detached, unmounted, the loop device removed.
            proc = _generator("--reset-device", "zram97", env=service_env)
            assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
            assert _loops() == loops_before
            assert not os.path.exists("/sys/block/loop1097")
            assert not os.path.exists("/run/zramfs/zram97")
            with open("/proc/self/mountinfo") as f:
                assert "fuse.zramfs" not in f.read()
    finally:
        left = remove_leftovers(loops_before)
        _generator("--reset-device", "zram97", env=service_env)
        system.remove_loop_device(1097)
        if not had_link_dir:
            shutil.rmtree("/run/zramfs-generator", ignore_errors=True)
    assert not left, f"left behind (now removed): {left}"
