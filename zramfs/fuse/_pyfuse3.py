"""The second FUSE backend ("pyfuse3"): the same Filesystem, served through libfuse3.

Where this sits: ``Session(fs, mountpoint, backend="pyfuse3")`` builds a
`Pyfuse3Session` instead of the default `_session.DevSession`.  libfuse3 reads
each request from /dev/fuse, pyfuse3 calls one `_Operations` method in a trio
task, and that method calls one `zramfs.fs.Filesystem` method and turns its
typed exceptions into ``FUSEError(errno_for(exc))``.  Below that, data goes
down through zramfs.device and the allocator exactly as with the default
backend.  This module adds no semantics of its own: attributes, modes, sizes,
clamping and errors all come from `Filesystem` and `errno_for`; mount-point
checks and unmounting from `_mount`; cache timeouts from `_session`.

What pyfuse3 3.5 cannot do, and so this backend does not:
- **Discard.**  pyfuse3 registers no FALLOCATE handler (`init_fuse_ops` in
  its internal.pxi), so libfuse answers ENOSYS, the kernel remembers that
  (fc->no_fallocate) and every fallocate(2) on `disk` fails with EOPNOTSUPP.
  Punched holes, `fstrim` and `swapon --discard` free no memory.  A loop
  device still advertises discard (it only checks that statfs works) and
  BLKDISCARD on it returns 0, freeing nothing.  `SUPPORTS_DISCARD` says so;
  the CLI and `zramfs status` read it through `supports_discard`.
- **INIT tuning.**  libfuse negotiates INIT itself: 1 MiB max_write (libfuse
  >= 3.6 asks for max_pages 256) and async direct I/O are its defaults; there
  is no FOPEN_PARALLEL_DIRECT_WRITES in pyfuse3's FileInfo, so the kernel
  serializes writes to `disk` on its inode lock.
- **O_TRUNC without side effects.**  libfuse asks for FUSE_ATOMIC_O_TRUNC
  on its own, so open(disk, O_TRUNC) (`dd of=disk`, a shell redirect)
  reaches us as OPEN with O_TRUNC, which changes nothing, but the kernel
  then sets its cached size of `disk` to 0 until the next stat, and async
  direct reads through loop are cut short meanwhile.  The default backend
  does not ask for it.
- **Several mounts per process.**  pyfuse3 keeps its session in module
  globals; a second mount in one process gets `Pyfuse3BusyError`.

Concurrency: pyfuse3 runs every request as a task of one trio run, on one
thread; a handler that does not await runs to completion before the next
request is read.  Reads and writes of `_THREAD_MIN_BYTES` or more go to at
most `threads` worker threads (lz4 releases the GIL), so the trio thread
reads the next request meanwhile; small ones stay inline, where a thread hop
would cost more than the block.  Filesystem and BlockDevice do their own
locking, as they do for the default backend's reader threads.

Lifecycle, the interface of `DevSession`: mount() raises the same MountError
subclasses (`_mount.check_mountpoint`) before libfuse gets to try; serve()
blocks, running its own ``trio.run(pyfuse3.main)``, so the daemon runs it in
a worker thread exactly like the default backend's; stop() unmounts lazily
from any thread and serve() returns once the last user of `disk` lets go;
abort() cuts the connection; close() releases.  ``serve_async()`` is the
same loop for a caller that wants it inside its own trio run.
"""

import errno
import os
import threading

import trio

from zramfs.device import PAGE_SIZE
from zramfs.fs import DISK_INO
from zramfs.fuse._errors import errno_for
from zramfs.fuse._mount import (
    DEFAULT_THREADS,
    MountedSession,
    MountError,
    MountpointBusyError,
    abort_connection,
    check_mountpoint,
    is_mounted,
    unmount,
)
from zramfs.fuse._session import ATTR_VALID_S, ENTRY_VALID_S

try:
    import pyfuse3
except ImportError:  # an optional extra, zramfs[pyfuse3]; mount() says so
    pyfuse3 = None  # type: ignore[assignment]

# What this backend can do; the CLI (swapon leaves out --discard and says
# why) and `zramfs status` read it as `Pyfuse3Session.supports_discard`.
SUPPORTS_DISCARD = False

# How a fallocate(2) on a pyfuse3 mount fails, any mode: libfuse answers
# ENOSYS to the unregistered opcode, the kernel turns that into EOPNOTSUPP.
# Tests expect exactly this where the default backend frees memory.
FALLOCATE_ERRNO = errno.EOPNOTSUPP

# Reads and writes of at least this many bytes run in a worker thread so one
# request's compression overlaps reading the next.  A thread hop costs tens of
# µs, more than a 4 KiB block's work (lz4 takes 1-4 µs a page here).
_THREAD_MIN_BYTES = 64 * 1024

# pyfuse3 starts another task whenever none is waiting for a request, up to
# this many.  Waiting tasks are cheap; 64 matches the default backend's
# max_background, the requests the kernel keeps in flight for loop's async I/O.
_MAX_TASKS = 64

# The mount(2) the default backend makes (`_mount.mount_fuse`): type
# "fuse.zramfs" (libfuse appends the subtype), MS_NOSUID|MS_NODEV (libfuse's
# defaults), allow_other, default_permissions; fsname is the source.
# Without root libfuse runs fusermount3 itself; allow_other is dropped then.
_MOUNT_OPTIONS = ("subtype=zramfs", "allow_other", "default_permissions")


class Pyfuse3UnavailableError(MountError):
    """Raised when the pyfuse3 backend is asked for but pyfuse3 is not installed."""


class Pyfuse3BusyError(MountError):
    """Raised when a second pyfuse3 mount is started in one process (pyfuse3 keeps global state)."""


def _entry(attr):
    """An `EntryAttributes` saying exactly what Filesystem said."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_size = attr.size
    e.st_blocks = attr.blocks
    e.st_blksize = PAGE_SIZE  # what st_blksize tells cp and dd to use
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    e.entry_timeout = ENTRY_VALID_S
    e.attr_timeout = ATTR_VALID_S
    return e


class _Operations(pyfuse3.Operations if pyfuse3 is not None else object):  # type: ignore[misc]
    """pyfuse3's request handlers, each one Filesystem call.

    pyfuse3 lets only FUSEError out of a handler: anything else ends
    pyfuse3.main() and leaves the kernel's request unanswered.  So every
    handler maps every Exception through errno_for (unknown ones: EIO, and
    counted in `errors`, as the default backend counts them).  File handles
    are what Filesystem.open returns: the inode number, or for a dump
    (block_state) a handle of its own above 2**32 that read and release
    pass back in the inode's place.  Handlers not
    defined here (xattrs, fallocate...) answer ENOSYS, as in the default
    backend.
    """

    # Like the default backend: no NFS export support, no writeback cache
    # (it would keep uncompressed copies), no ACLs.
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs):
        super().__init__()
        self._fs = fs
        self.limiter = None  # a trio.CapacityLimiter, made inside the trio run
        # Requests that ended in an exception errno_for did not know (EIO).
        self.errors = 0
        self.last_error = None

    def _fuse_error(self, exc):
        err = errno_for(exc)
        if err == errno.EIO:
            self.errors += 1
            self.last_error = exc
        return pyfuse3.FUSEError(err)

    def _call(self, fn, *args):
        """fn(*args), with its exceptions turned into FUSEError."""
        try:
            return fn(*args)
        except Exception as exc:
            raise self._fuse_error(exc) from None

    async def lookup(self, parent_inode, name, ctx):
        return _entry(self._call(self._fs.lookup, parent_inode, name))

    async def getattr(self, inode, ctx):
        return _entry(self._call(self._fs.getattr, inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        # pyfuse3 has already turned ATIME_NOW/MTIME_NOW into times in `attr`.
        try:
            a = self._fs.setattr(
                inode,
                size=attr.st_size if fields.update_size else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            )
            return _entry(a)
        except Exception as exc:
            raise self._fuse_error(exc) from None

    async def open(self, inode, flags, ctx):
        fh = self._call(self._fs.open, inode, flags)
        # direct_io: no uncompressed copy of `disk` in the page cache, and
        # attribute files render fresh text on every read.
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        try:
            if size >= _THREAD_MIN_BYTES:
                return await trio.to_thread.run_sync(
                    self._fs.read, fh, off, size, fh, limiter=self.limiter
                )
            return self._fs.read(fh, off, size, fh)
        except Exception as exc:
            raise self._fuse_error(exc) from None

    async def write(self, fh, off, buf):
        try:
            if self._fs.is_slow(fh):
                # A writeback may take minutes: off the trio thread (and
                # outside the limiter), so other requests go on meanwhile.
                return await trio.to_thread.run_sync(self._fs.write, fh, off, buf)
            if len(buf) >= _THREAD_MIN_BYTES:
                return await trio.to_thread.run_sync(
                    self._fs.write, fh, off, buf, limiter=self.limiter
                )
            return self._fs.write(fh, off, buf)
        except Exception as exc:
            raise self._fuse_error(exc) from None

    # Nothing is buffered above the device (every write is stored before it
    # is answered) and there is no per-open state: these only say "done".
    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        # fh is the inode, or a dump's handle (see Filesystem.open): disk's
        # opens are counted for reset, a dump's copy is dropped.
        self._call(self._fs.release, fh, fh)

    async def opendir(self, inode, ctx):
        self._call(self._fs.opendir, inode)
        return inode

    async def readdir(self, fh, start_id, token):
        # An entry's offset is its index + 1 in Filesystem's list, whose order
        # never changes (the default backend uses the same offsets).
        entries = self._call(self._fs.readdir, fh)
        for i in range(start_id, len(entries)):
            name, attr = entries[i]
            if not pyfuse3.readdir_reply(token, name, _entry(attr), i + 1):
                break  # the kernel's buffer is full; it asks again from i

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        pass

    async def statfs(self, ctx):
        # Must answer: loop(4) offers discard only when statfs on the backing
        # file works, and takes f_bsize as its discard granularity.
        s = self._call(self._fs.statfs)
        v = pyfuse3.StatvfsData()
        v.f_bsize = s.bsize
        v.f_frsize = s.frsize
        v.f_blocks = s.blocks
        v.f_bfree = s.bfree
        v.f_bavail = s.bavail
        v.f_files = s.files
        v.f_ffree = s.ffree
        v.f_favail = s.ffree
        v.f_namemax = s.namelen
        return v

    # The tree is fixed: Filesystem refuses each of these (EACCES or EPERM).

    async def create(self, parent_inode, name, mode, flags, ctx):
        self._call(self._fs.create, parent_inode)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._call(self._fs.mknod, parent_inode, mode)

    async def mkdir(self, parent_inode, name, mode, ctx):
        self._call(self._fs.change_tree, parent_inode)

    async def unlink(self, parent_inode, name, ctx):
        self._call(self._fs.change_tree, parent_inode)

    async def rmdir(self, parent_inode, name, ctx):
        self._call(self._fs.change_tree, parent_inode)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._call(self._fs.change_tree, parent_inode_old)

    async def symlink(self, parent_inode, name, target, ctx):
        self._call(self._fs.change_tree, parent_inode)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._call(self._fs.change_tree, new_parent_inode)


# pyfuse3.init() keeps its session in module globals: one mount per process.
_active_lock = threading.Lock()
_active = None


class Pyfuse3Session(MountedSession):
    """A FUSE session through pyfuse3/libfuse3 (see the module docstring)."""

    supports_discard = SUPPORTS_DISCARD
    fallocate_errno = FALLOCATE_ERRNO

    def __init__(self, fs, mountpoint, fsname="zram0", threads=DEFAULT_THREADS):
        super().__init__(fs, mountpoint, fsname, threads)
        self._ops = _Operations(fs)
        fs.on_resize = self._disk_resized
        # Guards the three fields below: serve() runs on its own thread while
        # stop(), abort() and close() come from the daemon's.
        self._state_lock = threading.Lock()
        self._initialized = False  # pyfuse3.init() done and close() not yet
        self._token = None  # the trio run inside serve(), while it runs
        self._stopping = False

    @property
    def errors(self):
        """Requests that failed with an unexpected exception (answered EIO)."""
        return self._ops.errors

    @property
    def last_error(self):
        return self._ops.last_error

    def _disk_resized(self):
        # As DevSession._disk_resized: drop the kernel's cached size of disk
        # (attributes only: no page cache, no inode lock, safe in a handler).
        try:
            pyfuse3.invalidate_inode(DISK_INO, attr_only=True)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    # -- lifecycle ----------------------------------------------------------

    def mount(self):
        """Mount through libfuse3; raises MountError subclasses."""
        global _active
        if pyfuse3 is None:
            raise Pyfuse3UnavailableError(
                "the pyfuse3 backend needs pyfuse3 (pip install 'zramfs[pyfuse3]')"
            )
        # The default backend's exact one-line refusals, before libfuse
        # prints its own to stderr.
        check_mountpoint(self.mountpoint)
        with _active_lock:
            if _active is not None:
                raise Pyfuse3BusyError(
                    f"pyfuse3 already serves {_active.mountpoint} in this process"
                )
            _active = self
        options = {f"fsname={self.fsname}", *_MOUNT_OPTIONS}
        if os.geteuid() != 0:
            # libfuse mounts through fusermount3, which refuses allow_other to
            # users unless /etc/fuse.conf allows it: owner-only, like `_mount`.
            options.discard("allow_other")
        try:
            pyfuse3.init(self._ops, self.mountpoint, options)
        except RuntimeError as exc:
            # If fuse_session_new() worked and fuse_session_mount() did not,
            # pyfuse3 still holds a session that must be destroyed; close()
            # with none would crash (fuse_session_destroy(NULL)).  pyfuse3
            # tells the two apart only by message.
            if "fuse_session_mount" in str(exc):
                pyfuse3.close(unmount=False)
            with _active_lock:
                _active = None
            if is_mounted(self.mountpoint):  # mounted on meanwhile
                raise MountpointBusyError(f"{self.mountpoint} is already a mount point") from None
            raise MountError(
                f"mount {self.mountpoint}: libfuse3 refused (its message is above)"
            ) from None
        self._initialized = True
        self._remember_mount()

    def serve(self):
        """Answer requests until the filesystem is unmounted; blocking.

        Runs its own ``trio.run``, so it can run in any thread, including a
        worker thread of another trio run (the daemon's).
        """
        trio.run(self.serve_async)

    async def serve_async(self):
        """serve() inside the caller's trio run; requests then share its thread."""
        with self._state_lock:
            if not self._initialized:
                raise RuntimeError("serve() before mount()")
            if self._stopping:
                # stop() or close() came first: the mount is detached and
                # nobody will read the connection again.
                self._release()
                return
            self._token = trio.lowlevel.current_trio_token()
        self._ops.limiter = trio.CapacityLimiter(self.threads)
        try:
            await pyfuse3.main(min_tasks=1, max_tasks=_MAX_TASKS)
        finally:
            with self._state_lock:
                self._token = None
                self._release()

    def _release(self):
        # Caller holds _state_lock.  Unmount only our own mount (never one
        # stacked on it since), then free libfuse's session and close its fd.
        # Not close(unmount=True): libfuse's umount2() would not check whose
        # mount it is.
        global _active
        if not self._initialized:
            return
        self._initialized = False
        if self._is_our_mount():
            unmount(self.mountpoint)
        pyfuse3.close(unmount=False)
        with _active_lock:
            _active = None

    def _terminate(self, token):
        # pyfuse3.terminate() must run in pyfuse3's own trio thread;
        # run_sync_soon is safe from any thread, that one included.
        try:
            token.run_sync_soon(pyfuse3.terminate)
        except trio.RunFinishedError:
            return False
        return True

    def stop(self):
        """Unmount (lazily) so serve() returns once the last user lets go; any thread.

        Lazy (MNT_DETACH) like the default backend: a loop device or swap
        still holding `disk` is served until it lets go; then the kernel ends
        the connection, libfuse sees ENODEV and pyfuse3.main() returns.
        """
        with self._state_lock:
            self._stopping = True
            if self._initialized and self._is_our_mount():
                unmount(self.mountpoint)

    def abort(self):
        """Cut the connection now, even if `disk` is still open (like fusectl's abort).

        Pending and future I/O on the mount fails with ENOTCONN; serve()
        returns.  Uses fusectl's abort file when /sys/fs/fuse/connections is
        mounted; otherwise ends pyfuse3's loop, and serve() then closes the
        /dev/fuse fd, which aborts the connection just the same.  Returns
        whether it could abort.
        """
        if abort_connection(self._mnt_dev):
            return True
        with self._state_lock:
            token = self._token
        return token is not None and self._terminate(token)

    def close(self):
        """Release the session (after unmounting if still mounted).

        If serve() still runs (the daemon gives up on it when setup fails),
        unmount and end pyfuse3's loop instead: serve() then releases the
        session itself as it returns.
        """
        with self._state_lock:
            self._stopping = True
            token = self._token
            if token is None:
                self._release()
                return
            if self._is_our_mount():
                unmount(self.mountpoint)
        self._terminate(token)
