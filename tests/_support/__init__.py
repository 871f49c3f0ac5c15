"""Helpers the test tiers share, imported as ``tests._support.NAME``.

* ``fuse``: a zramfs daemon mounted in a temporary directory, and how to
  stop it whatever state it is in (the fuse tier's fixtures).
* ``system``: the real ``zramfs`` command in a private run directory, and a
  cleanup that removes every swap area, loop device, mount and daemon a
  test left, without going through the CLI (the system tier's fixtures).
* ``threads``: run a function in several threads and report what any of
  them raised.
* ``pages``: pages of each kind (an ordinary object, a huge page) made
  from a seed.
* ``crash``: kill a forked child at a named step of a write path, for the
  restart tests.
* ``nspawn``: a real systemd in a container, running this tree's zramfs.

``tests`` is a package, so pytest puts the repository root on ``sys.path``
and these import by their full name; ``scripts/`` (the benchmark's memcg.py
and swap_workload.py, which the tests share) is on ``pythonpath`` in
pyproject.toml.
"""
