"""Whether this process was forked since a connection was made, without a system call.

Stores keep a connection per thread, and a connection must never cross a fork
(a gunicorn worker forked from a parent that already used the store must open
its own). Comparing ``os.getpid()`` on every call costs a system call per
request; this counter moves only when a fork happens.
"""

from __future__ import annotations

import os

#: How many forks led to this process; a child sees a higher number than its parent.
generation = 0


def _forked() -> None:
    global generation
    generation += 1


os.register_at_fork(after_in_child=_forked)
