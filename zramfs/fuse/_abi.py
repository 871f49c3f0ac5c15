"""The FUSE kernel ABI, 7.38: opcodes, flags and struct layouts.

Where this sits: the session (`_session.py`) reads raw requests from /dev/fuse
and decodes them with the structs below; it encodes replies with them too.
Everything here is transcribed from include/uapi/linux/fuse.h (7.38, the
header installed on the build machine).  The structs are precompiled
`struct.Struct` objects so the request loop never parses a format string.

All FUSE structs are little-endian-native and padded to 8 bytes; "<" is used
because every machine zramfs runs on is little-endian and "<" disables
alignment padding, so the layouts below list every padding field explicitly,
exactly as the header does.
"""

import struct

# We answer INIT with this protocol version (or the kernel's, if older).
KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 38
# Oldest minor whose INIT reply is the full 64-byte fuse_init_out; older
# kernels want the 24-byte FUSE_COMPAT_22_INIT_OUT_SIZE form.
INIT_OUT_FULL_MINOR = 23
COMPAT_22_INIT_OUT_SIZE = 24

ROOT_ID = 1

# enum fuse_opcode
LOOKUP = 1
FORGET = 2  # no reply
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
GETLK = 31
SETLK = 32
SETLKW = 33
ACCESS = 34
CREATE = 35
INTERRUPT = 36
BMAP = 37
DESTROY = 38
IOCTL = 39
POLL = 40
NOTIFY_REPLY = 41
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
SETUPMAPPING = 48
REMOVEMAPPING = 49
SYNCFS = 50
TMPFILE = 51
# One past the highest opcode we know: the dispatch list's length.
MAX_OPCODE = 52

# INIT flags (fuse_init_in.flags / fuse_init_out.flags)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8

# Structs.  Names are the kernel's without the fuse_ prefix.
in_header = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
IN_HEADER_SIZE = in_header.size  # 40
# in_header followed by read_in's/write_in's fh, offset, size: the hot path
# decodes a whole READ/WRITE with one call.
in_header_io = struct.Struct(in_header.format + "QQI")
out_header = struct.Struct("<IiQ")  # len error unique
OUT_HEADER_SIZE = out_header.size  # 16
# A notification is an out_header with unique 0 and the notify code
# (enum fuse_notify_code) where the error goes.
NOTIFY_INVAL_INODE = 2
# FUSE_NOTIFY_RESEND (7.40, Linux 6.9): no payload.  The kernel puts every
# request a server has read but not answered back on the pending queue, with
# UNIQUE_RESEND set in its unique (a reply names that unique as it came).
NOTIFY_RESEND = 7
RESEND_MINOR = 40
UNIQUE_RESEND = 1 << 63
notify_inval_inode_out = struct.Struct("<Qqq")  # ino off len (off < 0: attributes only)

init_in = struct.Struct("<IIIII")  # major minor max_readahead flags flags2 (+ unused[11])
init_out = struct.Struct("<IIIIHHIIHHI28x")  # ... flags2, unused[7]
assert init_out.size == 64

# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev blksize flags
attr = struct.Struct("<QQQQQQIIIIIIIIII")
assert attr.size == 88
# nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec + attr
entry_out = struct.Struct("<QQQQII" + attr.format[1:])
assert entry_out.size == 128
# attr_valid attr_valid_nsec dummy + attr
attr_out = struct.Struct("<QII" + attr.format[1:])
assert attr_out.size == 104

getattr_in = struct.Struct("<IIQ")  # getattr_flags dummy fh
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode unused4 uid gid unused5
setattr_in = struct.Struct("<IIQQQQQQIIIIIIII")
assert setattr_in.size == 88
open_in = struct.Struct("<II")  # flags open_flags
mknod_in = struct.Struct("<IIII")  # mode rdev umask padding (+ name)
open_out = struct.Struct("<QII")  # fh open_flags padding
release_in_fh = struct.Struct(
    "<Q"
)  # release_in's first field: fh (then flags release_flags lock_owner)
read_in = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
write_in = struct.Struct("<QQIIQII")  # fh offset size write_flags lock_owner flags padding
assert write_in.size == 40
write_out = struct.Struct("<II")  # size padding
# blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
kstatfs = struct.Struct("<QQQQQIIII24x")
assert kstatfs.size == 80
fallocate_in = struct.Struct("<QQQII")  # fh offset length mode padding
dirent = struct.Struct("<QQII")  # ino off namelen type (+ name, padded to 8)
batch_forget_in = struct.Struct("<II")  # count dummy

# Where a request's payload starts, and where WRITE's data starts.
WRITE_DATA_OFFSET = IN_HEADER_SIZE + write_in.size  # 80


def dirent_size(namelen):
    """FUSE_DIRENT_SIZE: each record is padded to 8 bytes."""
    return (dirent.size + namelen + 7) & ~7
