"""The second FUSE backend: the same Filesystem, served through pyfuse3/libfuse3.

Where this sits: ``Session(fs, mountpoint, backend="pyfuse3")`` builds a
`Pyfuse3Session` instead of the default /dev/fuse session.  libfuse3 reads
each request from the kernel and pyfuse3 calls one `_Operations` method in a
trio task; the method calls one `zramfs.fs.Filesystem` method and turns its
typed exceptions into ``FUSEError(errno_for(exc))``.  Below that, data goes
down through zramfs.device and the allocator exactly as with the default
backend: this module adds no semantics of its own (attributes, modes, sizes,
clamping and errors all come from `Filesystem`).

Differences from the default backend, all forced by pyfuse3 3.5:
- No FALLOCATE handler is registered, so libfuse answers ENOSYS, the kernel
  remembers that (fc->no_fallocate) and every fallocate(2) on `disk` fails
  with EOPNOTSUPP.  Discard (loop's PUNCH_HOLE, fstrim, swapon --discard)
  therefore cannot give memory back: `SUPPORTS_DISCARD` says so, and the CLI
  and `zramfs status` read it.
- libfuse negotiates INIT itself: max_write is 1 MiB (libfuse >= 3.6 asks for
  max_pages 256), async direct I/O is on by default; we cannot tune them.
- pyfuse3 keeps its session in module globals: one pyfuse3 mount per process.
- Requests run as trio tasks on one thread; a handler that does not await
  runs to completion before the next request is read.  Big transfers are
  handed to worker threads (lz4 releases the GIL) so both cores work, small
  ones stay inline because a thread hop costs more than a 4 KiB block.

The lifecycle matches the default `Session`: mount() (typed MountError
subclasses, from the shared `_mount.check_mountpoint`), serve() (blocking:
runs its own ``trio.run`` until the filesystem is unmounted or stop() is
called, so the daemon may run it in a thread exactly like the default
session) and stop() (lazy unmount, from any thread).  ``serve_async()`` is
the same loop for a caller that wants it inside its own trio run.
"""

import errno
import os
import threading

import trio

from zramfs.fuse._errors import errno_for
from zramfs.fuse._mount import (
    MountError,
    MountpointBusyError,
    check_mountpoint,
    is_mounted,
    mountinfo_entry,
    unmount,
)

try:
    import pyfuse3
except ImportError:  # an optional extra: zramfs[pyfuse3]
    pyfuse3 = None

# What this backend can do, read by the CLI (swapon leaves out --discard and
# says why) and by `zramfs status`.  pyfuse3 3.5 registers no FALLOCATE
# handler (pyfuse3/internal.pxi init_fuse_ops), so discard cannot free memory.
SUPPORTS_DISCARD = False

# The errno a fallocate(2) on a pyfuse3 mount fails with: libfuse replies
# ENOSYS to the unregistered opcode, the kernel turns that into EOPNOTSUPP.
FALLOCATE_ERRNO = errno.EOPNOTSUPP

# The tree never changes shape, so names and attributes could be cached
# forever; but `disk`'s st_blocks follows mem_used_total and chmod changes
# modes, so attributes are cached for one second only (what `ls -l` needs).
_ENTRY_TIMEOUT = 300
_ATTR_TIMEOUT = 1

# Reads and writes of at least this many bytes run in a worker thread, so
# compression of one 1 MiB request overlaps the next one on the other core.
# Below it the thread hop (tens of µs) would cost more than the work.
_THREAD_MIN_BYTES = 64 * 1024

# pyfuse3 starts a task per request in flight up to this many.  The loop
# device keeps up to 128 requests queued; each waiting task is only a frame.
_MAX_TASKS = 64


class Pyfuse3UnavailableError(MountError):
    """Raised when the pyfuse3 backend is asked for but pyfuse3 is not installed."""


class Pyfuse3BusyError(MountError):
    """Raised when a second pyfuse3 mount is started in one process (pyfuse3 keeps global state)."""


def _entry(attr):
    """An `EntryAttributes` carrying exactly what Filesystem said."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_size = attr.size
    e.st_blocks = attr.blocks
    e.st_blksize = 4096
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    e.entry_timeout = _ENTRY_TIMEOUT
    e.attr_timeout = _ATTR_TIMEOUT
    return e


if pyfuse3 is not None:

    class _Operations(pyfuse3.Operations):
        """pyfuse3 request handlers, each one Filesystem call.

        pyfuse3 lets only FUSEError out of a handler: anything else would end
        pyfuse3.main() and leave the kernel request unanswered.  So every
        handler maps every Exception through errno_for (unknown ones: EIO).
        File handles are inode numbers: Filesystem keeps no per-open state.
        """

        # Filesystem answers "." and ".." itself.
        supports_dot_lookup = True
        enable_writeback_cache = False
        enable_acl = False

        def __init__(self, fs, threads):
            super().__init__()
            self._fs = fs
            self._limiter = trio.CapacityLimiter(threads)
            # Requests that ended in an exception errno_for did not know (EIO).
            self.errors = 0
            self.last_error = None

        def _fuse_error(self, exc):
            err = errno_for(exc)
            if err == errno.EIO:
                self.errors += 1
                self.last_error = exc
            return pyfuse3.FUSEError(err)

        async def lookup(self, parent_inode, name, ctx):
            try:
                return _entry(self._fs.lookup(parent_inode, name))
            except Exception as exc:
                raise self._fuse_error(exc) from None

        async def getattr(self, inode, ctx):
            try:
                return _entry(self._fs.getattr(inode))
            except Exception as exc:
                raise self._fuse_error(exc) from None

        async def setattr(self, inode, attr, fields, fh, ctx):
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
            try:
                self._fs.open(inode, flags)
            except Exception as exc:
                raise self._fuse_error(exc) from None
            # direct_io: no uncompressed copy in the page cache, and attribute
            # files render fresh text on every read.
            return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

        async def read(self, fh, off, size):
            try:
                if size >= _THREAD_MIN_BYTES:
                    return await trio.to_thread.run_sync(self._fs.read, fh, off, size, limiter=self._limiter)
                return self._fs.read(fh, off, size)
            except Exception as exc:
                raise self._fuse_error(exc) from None

        async def write(self, fh, off, buf):
            try:
                if len(buf) >= _THREAD_MIN_BYTES:
                    return await trio.to_thread.run_sync(self._fs.write, fh, off, buf, limiter=self._limiter)
                return self._fs.write(fh, off, buf)
            except Exception as exc:
                raise self._fuse_error(exc) from None

        async def flush(self, fh):
            # Nothing is buffered above the device: every write is stored
            # before it is answered.
            pass

        async def fsync(self, fh, datasync):
            pass

        async def release(self, fh):
            pass

        async def opendir(self, inode, ctx):
            try:
                self._fs.opendir(inode)
            except Exception as exc:
                raise self._fuse_error(exc) from None
            return inode

        async def readdir(self, fh, start_id, token):
            # The offset of an entry is its index + 1 in Filesystem's list,
            # which never changes order.
            try:
                entries = self._fs.readdir(fh)
            except Exception as exc:
                raise self._fuse_error(exc) from None
            for i in range(start_id, len(entries)):
                name, attr = entries[i]
                if not pyfuse3.readdir_reply(token, name, _entry(attr), i + 1):
                    break

        async def releasedir(self, fh):
            pass

        async def fsyncdir(self, fh, datasync):
            pass

        async def statfs(self, ctx):
            # Must answer: loop(4) offers discard only when statfs on the
            # backing file works, and takes f_bsize as the granularity.
            try:
                s = self._fs.statfs()
            except Exception as exc:
                raise self._fuse_error(exc) from None
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


# pyfuse3.init() stores its session in module globals; this guards them.
_active_lock = threading.Lock()
_active = None


class Pyfuse3Session:
    """One pyfuse3 mount of a Filesystem; the interface of `_session.DevSession`."""

    # Read by the CLI and status through the Session, whichever backend runs.
    supports_discard = SUPPORTS_DISCARD

    def __init__(self, fs, mountpoint, fsname="zram0", threads=1):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        self.fs = fs
        self.mountpoint = os.path.abspath(mountpoint)
        self.fsname = fsname
        self.threads = threads
        self._ops = None
        self._mnt_dev = None  # "major:minor" of our mount, from mountinfo
        # Guards the fields below; serve() and stop() run on different threads.
        self._state_lock = threading.Lock()
        self._initialized = False  # pyfuse3.init() done and close() not yet
        self._token = None  # the trio run serving the mount, while serve() runs
        self._stopping = False

    @property
    def errors(self):
        """Requests that failed with an unexpected exception (answered EIO)."""
        return self._ops.errors if self._ops is not None else 0

    @property
    def last_error(self):
        return self._ops.last_error if self._ops is not None else None

    # -- lifecycle ----------------------------------------------------------

    def mount(self):
        """Mount with libfuse3; raises a MountError subclass on failure."""
        global _active
        if pyfuse3 is None:
            raise Pyfuse3UnavailableError("the pyfuse3 backend needs pyfuse3 (pip install 'zramfs[pyfuse3]')")
        # The same typed, one-line refusals as the default backend, before
        # libfuse gets to print its own.
        check_mountpoint(self.mountpoint)
        with _active_lock:
            if _active is not None:
                raise Pyfuse3BusyError(f"pyfuse3 already serves {_active.mountpoint} in this process")
            _active = self
        # The mount(2) the default backend makes: type "fuse.zramfs" (libfuse
        # appends the subtype), source = fsname, MS_NOSUID|MS_NODEV (libfuse's
        # flags), allow_other, default_permissions.
        options = {f"fsname={self.fsname}", "subtype=zramfs", "allow_other", "default_permissions"}
        self._ops = _Operations(self.fs, self.threads)
        try:
            pyfuse3.init(self._ops, self.mountpoint, options)
        except RuntimeError as exc:
            # libfuse printed its reason to stderr.  If fuse_session_new()
            # worked but fuse_session_mount() did not, pyfuse3 still holds a
            # session that must be destroyed; close() with none would crash
            # (fuse_session_destroy(NULL)), and pyfuse3 tells them apart only
            # by message.
            if "fuse_session_mount" in str(exc):
                pyfuse3.close(unmount=False)
            with _active_lock:
                _active = None
            if is_mounted(self.mountpoint):
                raise MountpointBusyError(f"{self.mountpoint} is already a mount point") from None
            raise MountError(f"mount {self.mountpoint}: libfuse3 refused (its message is above)") from None
        self._initialized = True
        entry = mountinfo_entry(self.mountpoint)
        self._mnt_dev = entry[2] if entry else None

    def serve(self):
        """Answer requests until the filesystem is unmounted; blocking.

        Runs its own ``trio.run`` (pyfuse3's loop is trio), so a caller runs
        it in a thread exactly like the default backend's serve().
        """
        trio.run(self.serve_async)

    async def serve_async(self):
        """serve(), inside the caller's trio run (requests then share its thread)."""
        with self._state_lock:
            if not self._initialized:
                raise RuntimeError("serve() before mount()")
            if self._stopping:
                # stop() came first: the mount is detached and nobody will
                # read the connection again.
                self._release()
                return
            self._token = trio.lowlevel.current_trio_token()
        try:
            await pyfuse3.main(min_tasks=1, max_tasks=_MAX_TASKS)
        finally:
            with self._state_lock:
                self._token = None
                self._release()

    def _is_our_mount(self):
        entry = mountinfo_entry(self.mountpoint)
        return entry is not None and self._mnt_dev is not None and entry[2] == self._mnt_dev

    def _release(self):
        # Caller holds _state_lock.  Unmount only our own mount (never one
        # stacked on it since), then free libfuse's session and its fd.
        # close(unmount=False): libfuse's own unmount is umount2() without
        # UMOUNT_NOFOLLOW and would not check whose mount it is.
        global _active
        if not self._initialized:
            return
        self._initialized = False
        if self._is_our_mount():
            unmount(self.mountpoint)
        pyfuse3.close(unmount=False)
        with _active_lock:
            _active = None

    def stop(self):
        """Unmount (lazily) so serve() returns once the last user lets go; any thread.

        Lazy (MNT_DETACH) like the default backend: a loop device or swap may
        still hold `disk` open and is served until it lets go; then the kernel
        ends the connection, libfuse sees ENODEV and pyfuse3.main() returns.
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
        if _abort_connection(self._mnt_dev):
            return True
        with self._state_lock:
            token = self._token
        if token is None:
            return False
        try:
            # terminate() touches pyfuse3's trio loop: run it in that loop's
            # thread (run_sync_soon is safe from any thread, that one included).
            token.run_sync_soon(pyfuse3.terminate)
        except trio.RunFinishedError:
            return False
        return True

    def close(self):
        """Release the session (after unmounting if still mounted).

        For a session whose serve() never ran or already returned; while
        serve() runs, use stop() or abort().
        """
        with self._state_lock:
            if self._token is not None:
                raise RuntimeError("close() while serve() runs: stop() or abort() it first")
            self._release()



def _abort_connection(mnt_dev):
    # The same fusectl write as DevSession.abort(); belongs in _mount.py as
    # one shared function (owned elsewhere, so not moved from here).
    if mnt_dev is None:
        return False
    minor = mnt_dev.split(":")[1]
    try:
        with open(f"/sys/fs/fuse/connections/{minor}/abort", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True
