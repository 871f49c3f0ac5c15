"""Starting the daemon: the one place zramfs starts a Python process, and how.

Where this sits: between the CLI and ``zramfs.daemon``.  `spawn_daemon`
runs ``python -I -m zramfs.daemon ARGS`` (ARGS from `DeviceConfig.argv`) and
waits on a pipe for the daemon's one line, "READY" or "ERROR <message>".

The daemon runs as root and holds other processes' memory, so nothing of
the caller's may choose its code:

* ``-I`` (isolated mode): no script or working directory on ``sys.path``, no
  ``PYTHON*`` variables, no user site-packages.  The interpreter's own
  site-packages still load their ``.pth`` files, which is how an installed
  (or editable ``pip install -e``) zramfs is found.
* ``cwd="/"``: nothing is looked up relative to where the command was typed.
* A clean environment: only `KEEP_ENV` (the locale, ``PATH`` for
  ``fusermount3``, systemd's ``NOTIFY_SOCKET``/``JOURNAL_STREAM``, and the
  speed levers' off switches).

Programs the CLI runs (losetup, mkswap, swapon) get the same directory and
environment (`clean_env`).

The CLI (`start`) runs the daemon under ``zramfs.supervisor`` when its
backend can be restarted (``dev``): the supervisor gets the same arguments
after ``--``, answers on the same ready pipe once its daemon serves, holds
the claim's fds (--hold-fd) and listens for ``zramfs restart`` on
``supervisor.sock`` in the device's directory.  pyfuse3 daemons (and
`spawn_daemon`, which the FUSE tests use) run alone, as before.
``zramfs mount --foreground`` execs the same supervisor command.
"""

import os
import select
import subprocess
import sys
import time

from zramfs.config import DeviceConfig
from zramfs.fuse import is_mounted
from zramfs.fuse._mount import unmount
from zramfs.system import CONTROL

# Backends whose daemon a supervisor can restart without losing the device.
RESTARTABLE_BACKENDS = ("dev",)

# What the daemon and the tools may see of the caller's environment.
# ZRAMFS_PURE_PYTHON=1 runs the allocator from source, not compiled
# (allocator/_compiled.py): the daemon must see it to honour it.
KEEP_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    # The speed levers' off switches (README: "Compiled pool, and the
    # switches"): allocator's build, allocator._uring, zramfs.fuse._session.
    "ZRAMFS_PURE_PYTHON",
    "ZRAMFS_NO_URING",
    "ZRAMFS_FUSE_SPIN_US",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# How long a daemon may take to report READY (its mount answering) by default.
READY_TIMEOUT_S = 30.0


class DaemonStartError(Exception):
    """Raised when the daemon cannot be started, reports an error, dies or never becomes ready.

    The message is one line: the daemon's own, when it sent one.
    """


def clean_env():
    """The environment of every process zramfs starts: `KEEP_ENV` and the LC_* variables, nothing else."""
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def daemon_command(config, python=None):
    """The daemon's full command line (without --ready-fd): what `spawn_daemon` runs
    and `mount --foreground` execs for a backend without supervisor (pyfuse3)."""
    return [python or sys.executable, "-I", "-m", "zramfs.daemon", *config.argv()]


def supervised_command(config, python=None, hold_fds=(), options=()):
    """The supervisor's command line (without --ready-fd) that runs the daemon of `config`
    (what `mount --foreground` execs); `options` go to the supervisor (a takeover's fds)."""
    command = [python or sys.executable, "-I", "-m", "zramfs.supervisor", *options]
    for fd in hold_fds:
        command += ["--hold-fd", str(fd)]
    if config.run_dir is not None:
        command += ["--control", control_path(config.run_dir)]
    return [*command, "--", *config.argv()]


def control_path(run_dir):
    """Where the supervisor of the device whose directory is `run_dir` listens."""
    return os.path.join(run_dir, CONTROL)


def _read_line(fd, deadline):
    """Read one line from `fd` until `deadline`; None on timeout, "" on EOF."""
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


def spawn(
    config, *, timeout=READY_TIMEOUT_S, stderr=None, python=None, keep_fds=(), supervise=False
):
    """Start the daemon for `config` and wait until it is READY; returns its Popen.

    With `supervise` (and a restartable backend) the Popen is the
    supervisor's, which starts the daemon and outlives it.

    Raises DaemonStartError if it cannot be started (the interpreter cannot be
    run), reports an error or exits, or is not ready within `timeout` seconds
    (then it is stopped and anything it mounted is unmounted).  `stderr` goes
    to subprocess.Popen (None: inherit ours); `keep_fds` stay open in the
    daemon (the lock on its device directory, see zramfs.system).  The
    daemon runs in its own session, so a Ctrl-C at the terminal does not
    reach it.
    """
    was_mounted = is_mounted(config.mountpoint)
    if supervise and config.fuse_backend in RESTARTABLE_BACKENDS:
        command = supervised_command(config, python, keep_fds)
        command.insert(command.index("--"), "--ready-fd")
        r, w = os.pipe()
        command.insert(command.index("--"), str(w))
    else:
        command = daemon_command(config, python)
        r, w = os.pipe()
        command += ["--ready-fd", str(w)]
    try:
        proc = subprocess.Popen(
            command,
            pass_fds=(w, *keep_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
            cwd="/",
            env=clean_env(),
        )
    except OSError as e:
        os.close(r)
        raise DaemonStartError(
            f"cannot start the zramfs daemon ({command[0]}): {e.strerror}"
        ) from None
    finally:
        os.close(w)
    try:
        line = _read_line(r, time.monotonic() + timeout)
    finally:
        os.close(r)
    if line == "READY":
        return proc
    if line is None:
        _stop_failed(proc, config.mountpoint, was_mounted)
        raise DaemonStartError(f"the zramfs daemon did not become ready within {timeout:g} s")
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _stop_failed(proc, config.mountpoint, was_mounted)
        rc = proc.returncode
    if line.startswith("ERROR "):
        raise DaemonStartError(line[len("ERROR ") :])
    raise DaemonStartError(f"the zramfs daemon exited with status {rc} before it was ready")


def _stop_failed(proc, mountpoint, was_mounted):
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not was_mounted and is_mounted(mountpoint):
        unmount(mountpoint)


def spawn_daemon(
    mountpoint, size, *, timeout=READY_TIMEOUT_S, stderr=None, python=None, **settings
):
    """`spawn` for a DeviceConfig(mountpoint, size, **settings) (algorithm, mem_limit, name, ...)."""
    config = DeviceConfig(mountpoint=os.path.abspath(mountpoint), size=size, **settings)
    return spawn(config, timeout=timeout, stderr=stderr, python=python)


def start(config, *, stderr=None, timeout=READY_TIMEOUT_S, keep_fds=()):
    """`spawn` under a supervisor, returning its pid once READY (it outlives the caller)."""
    proc = spawn(config, stderr=stderr, timeout=timeout, keep_fds=keep_fds, supervise=True)
    # Keep the Popen alive: dropping it while the daemon runs would warn
    # (ResourceWarning) from Popen.__del__.
    _background.append(proc)
    return proc.pid


def start_background(mountpoint, size, **kwargs):
    """`start` for a DeviceConfig(mountpoint, size, ...); keyword arguments as `spawn_daemon`."""
    proc = spawn_daemon(mountpoint, size, **kwargs)
    _background.append(proc)
    return proc.pid


_background: list[subprocess.Popen] = []
