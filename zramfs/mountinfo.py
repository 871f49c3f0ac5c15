"""Reading /proc/self/mountinfo: the one parser the FUSE layer, the CLI and the tests share.

Where this sits: beside the data path.  The FUSE backends ask it whether
their mount is still theirs before unmounting; the CLI finds zramfs devices,
busy mountpoints and free names with it.  Reading mountinfo never touches the
mounted filesystem, so it is safe on a FUSE mount whose daemon is dead or
stopped, where stat() would hang or fail.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    # "major:minor" of the superblock: tells two mounts at one path apart.
    dev: str


def unescape(field):
    """Undo mountinfo's escapes: space, tab, newline and backslash are written as \\ooo."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def mounts():
    """Every mount in this namespace, in mountinfo order (later ones on top)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # id parent major:minor root mountpoint options [optional...] - fstype source superopts
            sep = fields.index("-")
            found.append(Mount(unescape(fields[4]), fields[sep + 1], unescape(fields[sep + 2]), fields[2]))
    return found


def mount_at(path):
    """The topmost mount at `path` (absolute, normalized), or None."""
    found = None
    for m in mounts():
        if m.mountpoint == path:
            found = m  # later lines are mounted on top of earlier ones
    return found
