"""Mounting and unmounting a FUSE filesystem with mount(2), as root.

Where this sits: `Session.mount()` calls `mount_fuse()` to get an open
/dev/fuse fd whose connection is attached to the mountpoint; `Session.stop()`
calls `unmount()`.  No fusermount3: zramfs runs as root (it mlocks, sets
PR_SET_IO_FLUSHER and sits under swap), so mount(2) is called directly.

Every way mounting can fail before the kernel is asked gets its own
MountError subclass with an exact one-line message; the CLI prints it as is.
"""

import ctypes
import ctypes.util
import errno
import os
import stat

from zramfs.mountinfo import mount_at

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

FUSE_DEVICE = "/dev/fuse"
# fusectl: one directory per FUSE connection, named by its device number.
FUSECTL = "/sys/fs/fuse/connections"

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class MountError(Exception):
    """Raised when a FUSE filesystem cannot be mounted; the message is one line for the user."""


class NotRootError(MountError):
    """Raised when mounting is attempted without root (zramfs mounts with mount(2) directly)."""


class NoFuseDeviceError(MountError):
    """Raised when /dev/fuse does not exist (no fuse module, or a container without it)."""


class MountpointMissingError(MountError):
    """Raised when the mountpoint does not exist."""


class MountpointNotDirectoryError(MountError):
    """Raised when the mountpoint exists but is not a directory."""


class MountpointBusyError(MountError):
    """Raised when something is already mounted on the mountpoint."""


def is_mounted(path):
    """Whether something is mounted at `path` (an absolute, normalized path)."""
    return mount_at(path) is not None


def check_mountpoint(mountpoint):
    """Raise the matching MountError if `mountpoint` cannot take a mount now."""
    if os.geteuid() != 0:
        raise NotRootError("zramfs must run as root to mount (it uses mount(2) directly)")
    if not os.path.exists(FUSE_DEVICE):
        raise NoFuseDeviceError(f"{FUSE_DEVICE} does not exist (is the fuse module loaded?)")
    if is_mounted(mountpoint):
        raise MountpointBusyError(f"{mountpoint} is already a mount point")
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountpointMissingError(f"{mountpoint} does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountpointNotDirectoryError(f"{mountpoint} is not a directory")


def mount_fuse(mountpoint, fsname, subtype="zramfs"):
    """Open /dev/fuse and mount it on `mountpoint`; returns the fd.

    Options: allow_other so every user reaches the files (as with
    /dev/zramN), default_permissions so the kernel enforces the modes we
    report (disk is 0600 root), user_id/group_id the mounting user.
    """
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise NoFuseDeviceError(f"cannot open {FUSE_DEVICE}: {e.strerror}") from None
    opts = (
        f"fd={fd},rootmode={stat.S_IFDIR:o},user_id={os.getuid()},group_id={os.getgid()},"
        "allow_other,default_permissions"
    )
    rc = _libc.mount(
        fsname.encode(),
        mountpoint.encode(),
        f"fuse.{subtype}".encode(),
        MS_NOSUID | MS_NODEV,
        opts.encode(),
    )
    if rc != 0:
        err = ctypes.get_errno()
        os.close(fd)
        if err == errno.EBUSY:
            raise MountpointBusyError(f"{mountpoint} is already a mount point")
        if err == errno.EPERM:
            raise NotRootError(f"mount {mountpoint}: {os.strerror(err)}")
        raise MountError(f"mount {mountpoint}: {os.strerror(err)}")
    return fd


def unmount(mountpoint, *, lazy=True):
    """Unmount `mountpoint`; returns False if nothing was mounted there.

    Lazy (MNT_DETACH) by default, because a loop device or swap may still
    hold `disk` open: the filesystem leaves the namespace now and the session
    keeps serving until the last user lets go.  The CLI's umount is not lazy:
    there EBUSY (an OSError) means "still in use", which it reports.
    """
    flags = (MNT_DETACH if lazy else 0) | UMOUNT_NOFOLLOW
    rc = _libc.umount2(os.fsencode(mountpoint), flags)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        raise OSError(err, f"umount {mountpoint}: {os.strerror(err)}")
    return True


def is_our_mount(mountpoint, mnt_dev):
    """Whether `mountpoint` is still the mount whose mountinfo dev is `mnt_dev`.

    Both backends ask before unmounting, so they never unmount a mount that
    someone else has since put at the same path.
    """
    m = mount_at(mountpoint)
    return m is not None and mnt_dev is not None and m.dev == mnt_dev


def abort_connection(mnt_dev):
    """Abort the FUSE connection of the mount whose mountinfo dev is `mnt_dev` ("0:NN").

    Like `echo 1 > /sys/fs/fuse/connections/NN/abort`: every pending and
    future request fails with ENOTCONN and the session's reads get ENODEV.
    fusectl is mounted first if nobody has (systemd normally does at boot).
    Returns whether the abort was written.
    """
    if mnt_dev is None:
        return False
    major, minor = (int(x) for x in mnt_dev.split(":"))
    # FUSE superblocks are anonymous (major 0), so the dev number is the minor.
    path = f"{FUSECTL}/{(major << 20) | minor}/abort"
    if not os.path.exists(path) and os.path.isdir(FUSECTL) and not is_mounted(FUSECTL):
        _libc.mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None)
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError:
        return False
    return True
