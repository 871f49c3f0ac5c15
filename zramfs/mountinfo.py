"""Reading /proc/self/mountinfo: the one parser the FUSE layer, the CLI and the tests share.

Where this sits: beside the data path.  The FUSE backends ask it whether
their mount is still theirs before unmounting; `zramfs.system` (and through
it the CLI) finds zramfs devices, busy mountpoints and free names with it.
Reading mountinfo never touches the mounted filesystem, so it is safe on a
FUSE mount whose daemon is dead or stopped, where stat() would hang or fail.
"""

from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"


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


def parse(line):
    """The Mount of one mountinfo line."""
    fields = line.split()
    # id parent major:minor root mountpoint options [optional...] - fstype source superopts
    sep = fields.index("-")
    return Mount(unescape(fields[4]), fields[sep + 1], unescape(fields[sep + 2]), fields[2])


def mounts(path=MOUNTINFO):
    """Every mount in `path` (this namespace's mountinfo), in order (later ones on top)."""
    with open(path) as f:
        return [parse(line) for line in f if line.strip()]


def mount_at(mountpoint, path=MOUNTINFO):
    """The topmost mount at `mountpoint` (absolute, normalized), or None."""
    found = None
    for m in mounts(path):
        if m.mountpoint == mountpoint:
            found = m  # later lines are mounted on top of earlier ones
    return found
