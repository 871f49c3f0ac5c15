"""Writeback before memory runs out: a watermark on the pool (beyond zram).

Where this sits in the data flow::

    zramfs.fs (writeback_watermark, writeback_low_watermark, writeback_watermark_stat)
      -> zramfs.device.BlockDevice   a store that takes the pool to the high
         |                           mark kicks the thread; a write refused
         |                           at mem_limit waits for it (wait_for_room)
         '-> zramfs._watermark (this module): one thread per device that
               calls BlockDevice.writeback_cold (coldest slots first) and
               BlockDevice.compact until the pool is under the low mark
                 -> zramfs._backing (the backing file or block device)

Kernel zram fails a write at ``mem_limit`` and writes back only when user
space asks.  With a backing store and ``writeback_watermark`` set, zramfs
keeps its pool (mm_stat's mem_used_total) near the watermark itself:

* the *high mark* H is ``writeback_watermark``, or 15/16 of ``mem_limit``
  when that is set and lower (so writeback starts before writes reach the
  limit and have to wait);
* the *low mark* is ``writeback_low_watermark`` when set and below H, else
  7/8 of H: each round writes back until the pool is under it, so that a
  round frees an eighth of the pool's worth and rounds stay rare;
* a round writes back the least recently used slots (``writeback_cold``)
  in chunks sized from the average object (the memory each freed object
  gives back), then compacts the pool if the freed objects left it still
  over the low mark (an object freed from a zspage that keeps others frees
  no page until compaction moves them);
* the *cap* is H plus an eighth (WM_CAP_DEN), or ``mem_limit`` if lower: a
  write that would take the pool past it waits for a chunk of writeback
  (``wait_for_room``) instead of going ahead or failing, and is retried
  while the chunks make progress.  So the pool stays under the cap
  throughout, however fast the writers, and writes never fail while the
  backing store has room;
* when writeback cannot make room (the store is full or failing,
  ``writeback_limit`` is used up), a write held at the cap goes ahead, and
  one at ``mem_limit`` fails as in zram (ENOSPC for the writer, counted in
  failed_writes).

``writeback_limit`` applies: the watermark's writeback draws on it as a
``writeback`` request does, since the limit exists to bound the wear of the
backing device, whoever writes.  After a failure (store full, I/O error,
limit used up), no round starts for RETRY_S seconds, except that a full
store is tried again as soon as it has a free block.

Concurrency rule: ``_cond`` (its own lock) guards the flags and counters
here.  The device kicks the thread while holding the device lock, so the
thread never takes the device lock (it calls no device method) while
holding ``_cond``; a writer waits on ``_cond`` holding no device lock, so
the writeback it waits for can always take every lock it needs.
"""

import threading
import time
from dataclasses import dataclass

from allocator import PAGE_SIZE

from ._backing import BackingStoreError, BackingStoreFullError

__all__ = ["RETRY_S", "Watermark", "WatermarkStats", "watermark_stat_line"]

# The low mark when none is set: 7/8 of the high mark.  A round then frees
# an eighth of the pool, so rounds (each a scan of the slot table) stay
# rare, and the pool stays within an eighth of its watermark.
LOW_NUM, LOW_DEN = 7, 8
# The cap: a store that would take the pool more than 1/WM_CAP_DEN above
# the watermark waits for writeback (as at mem_limit), while writeback can
# make room.  An eighth: the distance between the low and the high mark, so
# a write waits only when a whole round's worth of writes outran the thread
# (measured: without it, swap's first fill took a 32 MiB mark to 58.7 MiB).
WM_CAP_DEN = 8
# After a failed round no round starts for this long (a full store: until
# it has a free block again).
RETRY_S = 1.0
# How often the idle thread looks at the pool without being kicked (a
# backing store set later, a mark lowered below the pool).
POLL_S = 1.0
# A round writes back at most this many slots between looks at the pool
# (and at a close): 16 MiB of pages, ~8 MiB of pool at 2:1.
CHUNK_MAX = 4096
# ... and at least this many (zram's writeback_batch_size).
CHUNK_MIN = 32


@dataclass(frozen=True, slots=True)
class WatermarkStats:
    """``writeback_watermark_stat``'s columns, in order."""

    triggered: int  # rounds started: the pool reached the high mark, or a writer waited
    written: int  # pages written back by rounds
    waited: int  # writes that mem_limit refused and that waited for a round
    failed: int  # rounds stopped by the backing store (full, I/O error) or writeback_limit
    compacted: int  # pool pages freed by the compactions rounds ran


def watermark_stat_line(s):
    """The ``writeback_watermark_stat`` line: triggered written waited
    failed compacted, mm_stat's layout ("%8llu" each)."""
    return "%8d %8d %8d %8d %8d\n" % (s.triggered, s.written, s.waited, s.failed, s.compacted)


class Watermark:
    """The watermark thread of one BlockDevice (see the module docstring).

    ``device`` is the BlockDevice; this class calls its ``writeback_cold``,
    ``compact`` and ``stats`` and reads its pool's page count and backing
    store.  The thread starts with the first ``start`` and ends in ``close``.
    """

    def __init__(self, device):
        self._device = device
        self._cond = threading.Condition()
        self._thread = None
        self._stopping = False
        self._kicked = False
        self._asked = False  # a writer waits for the next chunk
        self._rounds = 0  # chunks finished: a waiting writer retries after each
        self._progress = False  # whether the last chunk freed pool memory
        self._retry_at = 0.0  # monotonic time before which no round starts
        self._full = False  # the last failure was a full store
        self.error = None  # why the last round stopped early, or None
        self._triggered = 0
        self._written = 0
        self._waited = 0
        self._failed = 0
        self._compacted = 0

    def stats(self):
        with self._cond:
            return WatermarkStats(
                self._triggered, self._written, self._waited, self._failed, self._compacted
            )

    # --- the device's side ------------------------------------------------------

    def start(self):
        """Start the thread if it is not running (a watermark was set)."""
        with self._cond:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(
                    target=self._run, name="zramfs-watermark", daemon=True
                )
                self._thread.start()

    def close(self):
        """Stop the thread: it finishes the batch it is writing and exits.
        Waiting writers give up (their writes fail as without a watermark)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def kick(self):
        """The pool reached the high mark (called under the device lock:
        takes only ``_cond``, briefly, and only once per round)."""
        if not self._kicked:
            self._kicked = True
            with self._cond:
                self._cond.notify()

    def wait_for_room(self, first):
        """A write was refused at mem_limit: wait (holding no device lock)
        for the next chunk of writeback; True if the write should be tried
        again (the chunk freed memory, or the pool is under the low mark);
        False at once if no writeback can help (no thread, no backing
        store, the watermark off, paused after a failure), or after a chunk
        that freed nothing.  ``first``: the write's first wait (counted in
        ``waited``).  Each True took a chunk that wrote back or compacted
        something, so a write cannot wait forever."""
        with self._cond:
            if self._thread is None or self._stopping or not self._can_run():
                return False
            if first:
                self._waited += 1
            rounds = self._rounds
            self._asked = True
            self._cond.notify_all()
            while self._rounds == rounds and not self._stopping:
                self._cond.wait()
            return self._progress and not self._stopping

    # --- the thread -------------------------------------------------------------

    def _can_run(self):
        """Under _cond: whether a round may start (backing store set, the
        watermark on, not paused after a failure)."""
        device = self._device
        return device._backing is not None and bool(device._wm_high) and not self._paused()

    def _paused(self):
        """Under _cond: whether a failure pauses rounds (a full store: until
        it has a free block; else for RETRY_S)."""
        if self._full:
            store = self._device._backing
            return store is not None and store.blocks_used >= store.nr_blocks
        return time.monotonic() < self._retry_at

    def _run(self):
        device = self._device
        try:
            while True:
                with self._cond:
                    if self._paused():
                        # Kicks stay suppressed (_kicked) until the pause ends.
                        self._kicked = True
                        self._cond.wait_for(lambda: self._stopping or self._asked, timeout=POLL_S)
                    else:
                        self._cond.wait_for(
                            lambda: self._stopping or self._asked or self._kicked,
                            timeout=POLL_S,
                        )
                    if self._stopping:
                        return
                    asked = self._asked
                    can_run = self._can_run()
                    if can_run:
                        # Cleared before the pool is looked at: a store that
                        # reaches the mark after this look kicks again.
                        self._kicked = False
                    elif asked:
                        self._end_chunk(False)  # the writers give up
                if can_run and (asked or device._pool.pages_used >= device._wm_trigger_pages()):
                    self._round()
        except BaseException:
            with self._cond:
                self._stopping = True  # writers must not wait on a dead thread
                self._cond.notify_all()
            raise

    def _end_chunk(self, progress):
        """Under _cond: a chunk ended; the writers waiting retry if
        ``progress``, and a writer that asks after this asks again."""
        self._rounds += 1
        self._progress = progress
        self._asked = False
        self._cond.notify_all()

    def _round(self):
        """Write back and compact until the pool is under the low mark, or
        as long as writers ask for room."""
        from .device import PostProcessBusyError  # noqa: PLC0415 (device imports this module)

        device = self._device
        pool = device._pool
        with self._cond:
            self._triggered += 1
        while True:
            target = device._wm_low_pages()
            used = pool.pages_used
            with self._cond:
                if self._stopping:
                    self._end_chunk(False)
                    return
                if used <= target:
                    if not self._asked:
                        self._end_chunk(True)  # room: a writer waiting retries
                        return
                    # A writer still finds no room under the low mark (a
                    # mem_limit just above it): one more chunk.
                    used = target + CHUNK_MIN
            # Only the error's text and kind are kept, and its traceback is
            # dropped: the raising frames hold views of the slot table,
            # which close() must unmap, in a cycle only gc would break.
            error = None
            full = busy = False
            compacted = 0
            # Pages written, counted from bd_writes: a writeback that fails
            # part way raises after installing what it wrote.
            bd_writes = device.stats().bd_writes
            try:
                device._writeback_cold(self._chunk(used - target), self._stop_requested)
            except PostProcessBusyError:
                busy = True
            except BackingStoreError as exc:
                error, full = str(exc), isinstance(exc, BackingStoreFullError)
                exc.__traceback__ = None  # a cycle through the raising frame
            except Exception as exc:  # WritebackLimitError, or a bug: pause, keep going
                error = f"{type(exc).__name__}: {exc}"
                exc.__traceback__ = None
            written = device.stats().bd_writes - bd_writes
            if pool.pages_used > target and not self._stopping:
                compacted = device.compact()
            with self._cond:
                self._written += written
                self._compacted += compacted
                progress = bool(written or compacted)
                if error is not None:
                    self._failed += 1
                    self.error = error
                    self._full = full
                    self._retry_at = time.monotonic() + RETRY_S
                    self._end_chunk(progress)
                    return
                if progress:
                    self._full = False
                if busy:
                    # A writeback or recompression asked for by hand runs:
                    # look again shortly (writers keep waiting).
                    self._cond.wait(0.05)
                    continue
                self._end_chunk(progress)
                if not progress:
                    return  # nothing left to write back

    def _stop_requested(self):
        return self._stopping

    def _chunk(self, excess_pages):
        """How many slots to write back to free ``excess_pages`` pool pages:
        the excess over the average object's size, an eighth more for the
        pages fragmentation keeps, within CHUNK_MIN..CHUNK_MAX."""
        s = self._device.stats()
        objects = (s.orig_data_size // PAGE_SIZE) - s.same_pages - s.bd_count
        if objects <= 0 or not s.compr_data_size:
            return CHUNK_MIN
        average = s.compr_data_size / objects
        want = int(excess_pages * PAGE_SIZE / average * 9 / 8) + 1
        return max(CHUNK_MIN, min(CHUNK_MAX, want))
