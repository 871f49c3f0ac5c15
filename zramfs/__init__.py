"""zramfs: zram in userspace.

A FUSE filesystem whose one data file, ``disk``, behaves like ``/dev/zramN``:
attach it with a loop device and use it as swap or put a filesystem on it.
Data flows down through ``zramfs.fuse`` (the FUSE session), ``zramfs.fs``
(the inode table and zram's attribute files), ``zramfs.device`` (the slot
table, codecs and same-filled/huge pages) and the ``allocator`` package (the
zsmalloc-style pool of compressed objects).  ``zramfs.cli`` and
``zramfs.daemon`` sit beside that path and control it.
"""

__version__ = "0.1.0"
