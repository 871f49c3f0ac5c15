"""Helpers the test tiers share, imported as ``tests._support.NAME``.

* ``fuse``: a zramfs daemon mounted in a temporary directory, and how to
  stop it whatever state it is in (the fuse tier's fixtures).
* ``system``: the real ``zramfs`` command in a private run directory, and a
  cleanup that removes every swap area, loop device, mount and daemon a
  test left, without going through the CLI (the system tier's fixtures).
* ``threads``: run a function in several threads and report what any of
  them raised.

``tests`` is a package, so pytest puts the repository root on ``sys.path``
and these import by their full name; ``scripts/`` (the benchmark's memcg.py
and swap_workload.py, which the tests share) is on ``pythonpath`` in
pyproject.toml.
"""
