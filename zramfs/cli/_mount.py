"""``zramfs mount MOUNTPOINT [--size SIZE]``: one device, its `disk` on MOUNTPOINT.

Without --size the device is mounted uninitialised, as zram's devices are
before their disksize is written: ``echo 1G > MOUNTPOINT/disksize``
initialises it.

With --foreground this process becomes the device's supervisor
(`zramfs.supervisor`, exec'd; pyfuse3: the daemon itself): the terminal or
systemd sees its readiness, logs and exit status, and a killed daemon is
restarted as in the background.  Under systemd (systemd/zramfs@.service),
a service restarted after its supervisor died gets the device's fds back
from the fd store (LISTEN_FDS): then the device is taken over
(`_take_over`), not made again.
"""

import os
import sys

from zramfs import launch, supervisor, system
from zramfs.config import ConfigError
from zramfs.fuse._mount import check_mountpoint
from zramfs.system import System

from ._common import (
    Undo,
    check_options,
    claim,
    device_config,
    disksize,
    human,
    mountpoint_arg,
    need_fuse,
    start_daemon,
)
from ._errors import EXIT_OK, DaemonError, NameInUseError


def cmd_mount(args):
    """Mount a device; return once it answers (or become its supervisor, with --foreground)."""
    mountpoint = mountpoint_arg(args.mountpoint)
    size = disksize(args.size) if args.size is not None else None
    check_options(args)
    need_fuse(args.fuse_backend)
    supervised = args.foreground and args.fuse_backend in launch.RESTARTABLE_BACKENDS
    if supervised:
        found = _handed_back()
        if found is not None:
            _take_over(args, mountpoint, size, found)
    # Missing, not a directory, already a mount point: typed MountErrors.
    check_mountpoint(mountpoint)
    sys_ = System()
    undo = Undo()
    try:
        name, held = claim(sys_, args.name, undo)
        config = device_config(args, size=size, mountpoint=mountpoint, name=name, sys_=sys_)
        if supervised:
            _become(launch.supervised_command(config, hold_fds=(held,)), [held])
        if args.foreground:
            _become(launch.daemon_command(config), [held])
        start_daemon(sys_, config, held)
    except BaseException:
        undo.run()
        raise
    if size is None:
        print(f"{name}: uninitialised, mounted at {mountpoint} (write its disksize to start)")
    else:
        print(f"{name}: {human(size, long=True)} {config.algorithm}, mounted at {mountpoint}")
    return EXIT_OK


def _become(command, fds):
    """Exec `command` in this process, `fds` (the claim, a takeover's) open in it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir("/")
    for fd in fds:
        os.set_inheritable(fd, True)
    os.execve(command[0], command, launch.clean_env())


def _handed_back():
    """The live device systemd's fd store handed back (a `supervisor.Inherited`
    with the connection), its old daemons ended; None when there is none."""
    try:
        found = supervisor.inherited(supervisor.listen_fds())
    except ValueError as e:
        raise ConfigError(f"the fds systemd passed: {e}") from None
    if not found.fds():
        return None
    store = supervisor.FdStore.from_env()
    # A dead supervisor's daemon may still serve: it must be gone first.
    if not supervisor.end_daemons(list(found.daemons.values())):
        raise DaemonError("the daemon of the supervisor that died does not exit after SIGKILL")
    dropped = dict(found.daemons)
    dropped.update(found.unknown)
    if found.fuse_fd is None:
        # The old daemon died before it served: nothing to take over.
        dropped.update({supervisor.FDNAME_STATE + n: fd for n, fd in found.state.items()})
    for name, fd in dropped.items():
        os.close(fd)
        if store is not None:
            store.drop(name)
    return found if found.fuse_fd is not None else None


def _take_over(args, mountpoint, size, found):
    """Exec a supervisor that resumes device --name from `found` (never returns)."""
    name = args.name
    if name is None:
        raise ConfigError("taking a device over from systemd's fd store needs --name")
    sys_ = System()
    m = sys_.mount_at(mountpoint)
    # Not mounted is fine: a lazy unmount left the connection without a path.
    if m is not None and (m.fstype != system.FSTYPE or m.source != name):
        raise NameInUseError(f"{mountpoint} is mounted, but not by zramfs device {name!r}")
    path = sys_.path(sys_.device_dir(name))
    try:
        held = system.lock_device_dir(path)
    except FileNotFoundError:
        os.makedirs(path, 0o700)
        held = system.lock_device_dir(path)
    if held is None:
        raise NameInUseError(f"name {name!r} is in use (claimed: {sys_.device_dir(name)})")
    record = sys_.daemon_record(name)
    options = ["--fuse-fd", str(found.fuse_fd), "--kernel-minor", str(found.kernel_minor)]
    for state_name, fd in found.state.items():
        options += ["--state-fd", f"{state_name}={fd}"]
    options += ["--restarts", str((record.restarts if record is not None else 0) + 1)]
    config = device_config(args, size=size, mountpoint=mountpoint, name=name, sys_=sys_)
    command = launch.supervised_command(config, hold_fds=(held,), options=options)
    _become(command, [held, *found.fds()])
