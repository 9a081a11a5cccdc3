"""Fault injection for the kill -9 suite (tests/test_faults.py).

A test hook; never set in production. With the environment variable
`GROWJAX_FAULT=POINT` or `GROWJAX_FAULT=POINT:N`, the N-th time (default the 1st)
this process reaches `maybe_kill(POINT)` it sends itself SIGKILL: no handler,
no cleanup, no flush, exactly what a machine loss or the OOM killer leaves behind.
Unset (always, outside tests) a call costs one dict lookup.

Points: mid_step (train.py _Loop.one_step, a step dispatched, its metrics unread),
mid_save (train.py _Loop.save, a save started, an async write maybe in flight),
handoff (growth/stages.py, a stage done and its growth not started: with several growth
  events, `GROWJAX_FAULT=handoff:N` kills at the N-th stage boundary),
mid_grow (growth/offline.py: the whole grown state computed, its checkpoint being written;
  streamed growth, states of 1 GiB or more: after the first piece is written),
mid_prepare (data/prepare.py: a shard's progress record written, the shard not yet renamed
into place; `GROWJAX_FAULT=mid_prepare:N` kills at the N-th shard).
"""

from __future__ import annotations

import os
import signal

ENV = "GROWJAX_FAULT"
_counts: dict[str, int] = {}


def maybe_kill(point: str) -> None:
  """SIGKILLs this process on the N-th arrival at `point` when $GROWJAX_FAULT asks."""
  spec = os.environ.get(ENV)
  if not spec:
    return
  name, _, nth = spec.partition(":")
  if name != point:
    return
  _counts[point] = _counts.get(point, 0) + 1
  if _counts[point] == (int(nth) if nth else 1):
    os.kill(os.getpid(), signal.SIGKILL)
