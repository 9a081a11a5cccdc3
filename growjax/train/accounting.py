"""FLOPs, MFU (both conventions), tokens/s without stalls, and where the time went
between two reports (eval, checkpoints, the device, the data)."""

from __future__ import annotations

import time

import jax

from growjax.train import metrics as metrics_lib
from growjax.train.state import (Setup, to_host)


class Stalls:
  """Where the time since the last report went, apart from the steps themselves:
  evaluation and checkpoints (`eval_s`, `checkpoint_s`: stalls, left out of tokens/s),
  and within the training steps the host blocked on the device (`device_s`: waiting for
  a step's result, or in a step's dispatch held back until the previous step frees the
  donated state) and the host loading a batch and placing it on the devices (`data_s`).

  The device is drained first (`block_until_ready`) before a stall is timed, so queued
  training steps are not booked as a stall: the drain counts as device time."""

  KINDS = ("eval_s", "checkpoint_s", "device_s", "data_s")

  def __init__(self):
    for k in self.KINDS:
      setattr(self, k, 0.0)

  def add(self, kind: str, seconds: float) -> None:
    setattr(self, kind, getattr(self, kind) + seconds)

  def timed(self, kind: str, state, fn):
    t0 = time.perf_counter()
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    out = fn()
    self.add("device_s", t1 - t0)
    self.add(kind, time.perf_counter() - t1)
    return out

  def take(self) -> dict[str, float]:
    out = {k: getattr(self, k) for k in self.KINDS}
    self.__init__()
    return out


class Accounting:
  """FLOPs, MFU (both conventions), tokens/s without stalls, and the progress line."""

  def __init__(self, setup: Setup, start_step: int, restored_meta: dict):
    cfg = setup.cfg
    self.setup, self.start_step = setup, start_step
    self.flops_per_token = setup.model_cfg.flops_per_token(cfg.data.seq_len)
    self.causal_flops_per_token = setup.model_cfg.flops_per_token(cfg.data.seq_len,
                                                                  causal=True)
    self.peak = metrics_lib.peak_tflops(setup.mesh.devices.flat[0],
                                        cfg.metrics.peak_tflops_per_chip)
    # Training FLOPs of the whole run so far, a grown model's small stage included
    # (carried in checkpoint metadata), so loss-vs-compute curves compare fairly.
    self.base_flops = float(restored_meta.get("flops_seen", 0.0))
    self.throughput = metrics_lib.Throughput(start_step, cfg.train.steps)
    self.stalls = Stalls()
    self._last_report_step = start_step
    self.later_flops = 0.0   # training FLOPs of a grow run's stages after this one

  def run_eta(self, values: dict, stage_eta: float) -> float | None:
    """Seconds to the end of a grow run: this stage's ETA plus the later stages' FLOPs at
    this stage's FLOP rate (a smaller model runs at a lower MFU, so this errs long);
    None outside a grow run or before a rate is known."""
    tps = values.get("tokens_per_second")
    if not self.later_flops or not tps:
      return None
    return stage_eta + self.later_flops / (tps * self.flops_per_token)

  def flops_seen(self, step: int) -> float:
    return self.base_flops + ((step - self.start_step) * self.setup.tokens_per_step *
                              self.flops_per_token)

  def values(self, step: int, device_metrics: dict, eval_loss: float | None
             ) -> tuple[dict, float]:
    t0 = time.perf_counter()
    values = {k: float(v) for k, v in to_host(device_metrics).items()}
    self.stalls.add("device_s", time.perf_counter() - t0)
    spent = self.stalls.take()
    eval_s, checkpoint_s = spent["eval_s"], spent["checkpoint_s"]
    tokens = self.setup.tokens_per_step
    tps, eta = self.throughput.update(step, tokens, eval_s + checkpoint_s)
    steps, self._last_report_step = step - self._last_report_step, step
    chips = self.setup.mesh.size
    values.update(tokens_per_second=tps or None, eval_loss=eval_loss,
                  tokens_seen=step * tokens, flops=self.flops_seen(step),
                  mfu=metrics_lib.mfu(self.flops_per_token, tps, chips, self.peak),
                  mfu_causal=metrics_lib.mfu(self.causal_flops_per_token, tps, chips,
                                             self.peak),
                  eval_s=eval_s, checkpoint_s=checkpoint_s)
    if tps and steps > 0:
      values.update(metrics_lib.step_breakdown(tokens / tps, spent["device_s"] / steps,
                                               spent["data_s"] / steps))
    return values, eta
