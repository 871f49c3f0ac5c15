"""Mounting and unmounting a FUSE filesystem: mount(2) as root, fusermount3 otherwise.

Where this sits: `Session.mount()` calls `mount_fuse()` to get an open
/dev/fuse fd whose connection is attached to the mountpoint; `Session.stop()`
calls `unmount()`.

As root (swap needs it: the daemon mlocks, sets PR_SET_IO_FLUSHER and sits
under swap) mount(2) and umount2(2) are called directly.  As anyone else the
setuid-root fusermount3 does it, the way libfuse does: we hand it one end of
a socketpair in $_FUSE_COMMFD; it opens /dev/fuse, mounts (always nosuid,
nodev, with user_id/group_id the caller's), sends the fd back as one byte
with SCM_RIGHTS, and exits.  ``fusermount3 -u [-z]`` unmounts, and only a
mount whose user_id is the caller's.  Without user_allow_other in
/etc/fuse.conf fusermount3 refuses allow_other, so a non-root mount is
reachable by its owner only (not even by root).  subtype=zramfs makes the
type `fuse.zramfs` and fsname the source, as mount(2) does, so `zramfs
status` and `umount` find it the same way.

Every way mounting can fail before the kernel is asked gets its own
MountError subclass with an exact one-line message; the CLI prints it as is.
"""

import ctypes
import errno
import os
import socket
import stat

from zramfs.mountinfo import mount_at

MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

FUSE_DEVICE = "/dev/fuse"
FUSERMOUNT = "fusermount3"
# Where fusermount3 lives when $PATH is bare (a daemon started by systemd or sudo).
_FUSERMOUNT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
# fusermount3 either sends the fd and exits at once or fails at once; this
# only bounds a hung one.
FUSERMOUNT_TIMEOUT_S = 30.0
# fusectl: one directory per FUSE connection, named by its device number.
FUSECTL = "/sys/fs/fuse/connections"

# The process's own libc (dlopen(NULL)): ctypes.util.find_library ran
# ldconfig at import and loaded subprocess, shutil and tempfile, 2.4 MiB
# that the daemon keeps locked.  subprocess and shutil are imported where
# fusermount3 is run, which only a mount without root does.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class MountError(Exception):
    """Raised when a FUSE filesystem cannot be mounted; the message is one line for the user."""


class FusermountMissingError(MountError):
    """Raised when mounting without root and fusermount3 (from fuse3) is not installed."""


class MountpointPermissionError(MountError):
    """Raised when mounting without root on a directory this user may not write (fusermount3 requires it)."""


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


def _is_root():
    return os.geteuid() == 0


def fusermount_path():
    """Where fusermount3 is; FusermountMissingError if nowhere."""
    import shutil

    path = shutil.which(FUSERMOUNT) or shutil.which(FUSERMOUNT, path=_FUSERMOUNT_PATH)
    if path is None:
        raise FusermountMissingError(f"{FUSERMOUNT} not found: install fuse3, or mount as root")
    return path


def check_mountpoint(mountpoint):
    """Raise the matching MountError if `mountpoint` cannot take a mount now."""
    if not os.path.exists(FUSE_DEVICE):
        raise NoFuseDeviceError(f"{FUSE_DEVICE} does not exist (is the fuse module loaded?)")
    if not _is_root():
        fusermount_path()
    if is_mounted(mountpoint):
        raise MountpointBusyError(f"{mountpoint} is already a mount point")
    not_writable = MountpointPermissionError(
        f"{mountpoint} is not writable by uid {os.getuid()} (mount as root, or on a directory you own)"
    )
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountpointMissingError(f"{mountpoint} does not exist") from None
    except PermissionError:
        raise not_writable from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountpointNotDirectoryError(f"{mountpoint} is not a directory")
    if not _is_root() and not os.access(mountpoint, os.W_OK):
        raise not_writable


def mount_fuse(mountpoint, fsname, subtype="zramfs"):
    """Open /dev/fuse and mount it on `mountpoint`; returns the fd.

    As root, with mount(2).  Options: allow_other so every user reaches the
    files (as with /dev/zramN), default_permissions so the kernel enforces
    the modes we report (disk is 0600 root), user_id/group_id the mounting
    user.  Without root, through fusermount3 (`_mount_fusermount`).
    """
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    if not _is_root():
        return _mount_fusermount(mountpoint, fsname, subtype)
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
        raise MountError(f"mount {mountpoint}: {os.strerror(err)}")
    return fd


def _last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _mount_fusermount(mountpoint, fsname, subtype):
    """Mount through fusermount3 (see the module docstring); returns the /dev/fuse fd.

    Options: no allow_other (fusermount3 refuses it to users unless
    /etc/fuse.conf says user_allow_other), so only this user reaches the
    files; default_permissions as with mount(2).
    """
    if "," in fsname or "," in subtype:
        raise MountError(f"mount {mountpoint}: the name {fsname!r} may not contain ','")
    import subprocess

    fusermount = fusermount_path()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            proc = subprocess.run(
                [
                    fusermount,
                    "-o",
                    f"fsname={fsname},subtype={subtype},default_permissions",
                    "--",
                    mountpoint,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=(theirs.fileno(),),
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                timeout=FUSERMOUNT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise FusermountMissingError(
                f"{FUSERMOUNT} not found: install fuse3, or mount as root"
            ) from None
        except subprocess.TimeoutExpired:
            raise MountError(
                f"mount {mountpoint}: {FUSERMOUNT} did not finish within {FUSERMOUNT_TIMEOUT_S:g} s"
            ) from None
        theirs.close()  # now a failed fusermount3 reads as EOF, not a hang
        fds = []
        if proc.returncode == 0:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    finally:
        theirs.close()
        ours.close()
    if proc.returncode != 0 or not fds:
        for fd in fds:
            os.close(fd)
        if is_mounted(mountpoint):
            raise MountpointBusyError(f"{mountpoint} is already a mount point")
        detail = _last_line(proc.stderr) or f"exit status {proc.returncode}, no fd sent"
        raise MountError(f"mount {mountpoint}: {detail}")
    os.set_inheritable(fds[0], False)
    return fds[0]


# fusermount3 reports a failed umount2(2) as "...: <strerror>"; this turns it back into the errno.
_ERRNO_OF_STRERROR = {os.strerror(n): n for n in errno.errorcode}


def _unmount_fusermount(mountpoint, lazy):
    if not is_mounted(mountpoint):
        return False
    import subprocess

    argv = [fusermount_path(), "-u", *(["-z"] if lazy else []), "--", mountpoint]
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return True
    if not is_mounted(mountpoint):
        return False  # gone meanwhile
    detail = _last_line(proc.stderr) or f"exit status {proc.returncode}"
    err = _ERRNO_OF_STRERROR.get(detail.rsplit(": ", 1)[-1], errno.EPERM)
    raise OSError(err, f"umount {mountpoint}: {detail}")


def unmount(mountpoint, *, lazy=True):
    """Unmount `mountpoint`; returns False if nothing was mounted there.

    Lazy (MNT_DETACH, fusermount3 -z) by default, because a loop device or
    swap may still hold `disk` open: the filesystem leaves the namespace now
    and the session keeps serving until the last user lets go.  The CLI's
    umount is not lazy: there EBUSY (an OSError) means "still in use", which
    it reports.  Without root, fusermount3 unmounts, and only this user's
    mounts (others: EPERM).
    """
    if not _is_root():
        return _unmount_fusermount(mountpoint, lazy)
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


# Reader threads a session serves with unless told otherwise.  Two: the kernel
# splits loop's 1 MiB direct read into two requests of MAX_PAGES
# (_session.py), and the second reader takes the second half while the
# first decodes its own, so a large read runs on both cores.  Small requests
# and writes stay on the first reader (DevSession._reader has the numbers).
DEFAULT_THREADS = 2


class MountedSession:
    """What both backends share: their arguments, and knowing which mount is theirs.

    A backend subclasses it, calls ``_remember_mount()`` right after mounting,
    and asks ``_is_our_mount()`` before it unmounts.
    """

    def __init__(self, fs, mountpoint, fsname="zram0", threads=DEFAULT_THREADS):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        self.fs = fs
        self.mountpoint = os.path.abspath(mountpoint)
        self.fsname = fsname
        self.threads = threads
        self._mnt_dev = None  # "major:minor" of our mount, from mountinfo

    def _remember_mount(self):
        m = mount_at(self.mountpoint)
        self._mnt_dev = m.dev if m else None

    def _is_our_mount(self):
        return is_our_mount(self.mountpoint, self._mnt_dev)
