"""Progress of long quiet work (training a tokenizer on a corpus): a line every `every_s`
seconds while it runs, naming what was read so far and the time, a line when the
reading is done and one when the work is. For work inside a library call with no hook
of its own (SentencePiece reads its sentences and trains in C++): documents are counted
as the library pulls them, and a daemon thread prints. Not for the train loop, which
reports per step (`growjax.train.metrics`)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, Iterator


class Reading:
  """`with Reading(what, log) as r: library(r.count(documents))`: prints, every
  `every_s` seconds, the documents and bytes read so far (then, once all are read,
  that `what` is still running), the line when the last document was read and one
  at the end."""

  def __init__(self, what: str, log: Callable[[str], None] = print, every_s: float = 10.0):
    self.what, self.log, self.every_s = what, log, every_s
    self.documents = self.bytes = 0
    self.read_s: float | None = None          # seconds the reading took, once done
    self._t0 = time.perf_counter()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._tick, daemon=True)

  def elapsed(self) -> float:
    return time.perf_counter() - self._t0

  def _read_text(self) -> str:
    return f"{self.documents:,} documents ({self.bytes / 1e6:,.1f} MB)"

  def count(self, documents: Iterable[str]) -> Iterator[str]:
    for doc in documents:
      self.documents += 1
      self.bytes += len(doc.encode("utf-8", "replace"))
      yield doc
    self.read_s = self.elapsed()
    self.log(f"{self.what}: read {self._read_text()} in {self.read_s:.1f}s; training ...")

  def _tick(self) -> None:
    while not self._done.wait(self.every_s):
      if self.read_s is None:
        self.log(f"{self.what}: reading, {self._read_text()} so far, {self.elapsed():.0f}s")
      else:
        self.log(f"{self.what}: training on {self._read_text()}, {self.elapsed():.0f}s")

  def __enter__(self) -> "Reading":
    self._thread.start()
    return self

  def __exit__(self, exc_type, *_) -> None:
    self._done.set()
    self._thread.join()
    if exc_type is None:
      self.log(f"{self.what}: done in {self.elapsed():.1f}s, {self._read_text()} read")
