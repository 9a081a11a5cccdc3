"""Throughput, MFU, the step-time breakdown, the console line, TensorBoard, JSON lines.

MFU conventions (the one place they are stated; README, benchmarks/RESULTS.md and
benchmarks/step_benchmark.py refer here):
  mfu         = F_full * tokens/s / (chips * peak), F_full = 6N + 12*L*H*d_head*T per
                token: N the non-embedding parameters (LM head included), L layers, H
                query heads, T the sequence length; full attention counted, the PaLM
                and TinyLlama convention (`ModelConfig.flops_per_token`).
  mfu_causal  = the same with the attention term halved (6*L*H*d_head*T) for the causal
                mask: MaxText's convention. Both are logged at every report.
  peak        = the chip's datasheet dense bf16 TFLOP/s (`PEAK_TFLOPS`, e.g. 989 for an
                H100 SXM), also for FP8 runs (`config.model.matmul_precision='fp8'`), so
                an FP8 speedup shows as a higher MFU on the same scale.
Remat recomputation is not counted (model FLOPs, not hardware FLOPs). Compare
frameworks by tokens/s. Tokens/s counts training time only: evaluation and
checkpoint stalls are timed and logged apart (`eval_s`, `checkpoint_s`); the training
time per step is split into device wait, data and host (`step_breakdown`).
Only process 0 writes. tensorboardX writes event files
without TensorFlow; `metrics.jsonl` (one object per logged step, appended, so
after a resume the last line of a step wins) is what `growjax speedup` reads.

The workdir may be local or `gs://`: every path goes through `etils.epath`, event
files on `gs://` too. A GCS object cannot be appended to, so there `metrics.jsonl`
and the event file are rewritten whole, at most every `flush_secs` and at close.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Mapping

import jax
from etils import epath

# Datasheet dense bf16 peak per chip, TFLOP/s, matched against `device_kind`.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("TPU v6", 918.0),        # v6e (Trillium)
    ("TPU v5 lite", 197.0),   # v5e
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
)


def peak_tflops(device: jax.Device | None = None, override: float = 0.0) -> float | None:
  """The chip's dense bf16 peak in TFLOP/s, or None when unknown (e.g. CPU)."""
  if override:
    return float(override)
  kind = (device or jax.devices()[0]).device_kind
  for key, tflops in PEAK_TFLOPS:
    if key.lower() in kind.lower():
      return tflops
  return None


def mfu(flops_per_token: float, tokens_per_second: float, num_chips: int,
        peak: float | None) -> float | None:
  if not peak:
    return None
  return flops_per_token * tokens_per_second / (num_chips * peak * 1e12)


def step_breakdown(step_s: float, device_s: float, data_s: float) -> dict[str, float]:
  """Seconds per training step split three ways, each also as a fraction of the step:
  `device` (the host blocked on a step's result: compute the host could not hide),
  `data` (the host loading a batch and placing it on the devices), `host` (the rest:
  dispatch, Python, logging). The parts add up to `step_s`."""
  host_s = max(step_s - device_s - data_s, 0.0)
  total = device_s + data_s + host_s or 1.0
  return {"step_s": device_s + data_s + host_s, "step_device_s": device_s,
          "step_data_s": data_s, "step_host_s": host_s,
          "step_device_frac": device_s / total, "step_data_frac": data_s / total,
          "step_host_frac": host_s / total}


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_progress(step: int, total: int, values: Mapping[str, float], eta_s: float,
                    run_eta_s: float | None = None) -> str:
  parts = [f"step {step}/{total}"]
  for key, fmt in (("loss", "loss {:.4f}"), ("eval_loss", "eval {:.4f}"), ("lr", "lr {:.2e}"),
                   ("grad_norm", "gnorm {:.3f}"), ("tokens_per_second", "{:,.0f} tok/s"),
                   ("mfu", "MFU {:.1%}"), ("tokens_seen", "{:.3g} tok"),
                   ("mask_ramp", "MSG mask {:.2f}")):
    if values.get(key) is not None:
      parts.append(fmt.format(values[key]))
      if key == "mfu" and values.get("mfu_causal") is not None:
        parts[-1] += f" (causal {values['mfu_causal']:.1%})"
  if values.get("step_s"):
    parts.append(f"step {values['step_s']:.3g}s = device {values['step_device_frac']:.0%} "
                 f"+ data {values['step_data_frac']:.0%} + host {values['step_host_frac']:.0%}")
  parts.append(f"ETA {format_duration(eta_s)}" if run_eta_s is None else
               f"ETA {format_duration(run_eta_s)} (this stage {format_duration(eta_s)})")
  return " | ".join(parts)


class _JsonLines:
  """`metrics.jsonl`: appended to locally; on remote storage (no appends) the whole
  object is rewritten, the lines of an earlier run in the same workdir kept."""

  def __init__(self, path: epath.Path, flush_secs: float):
    self._path, self._flush_secs = path, flush_secs
    self._remote = "://" in os.fspath(path)
    self._file = None if self._remote else path.open("a")
    self._text = path.read_text() if self._remote and path.exists() else ""
    self._dirty, self._flushed_at = False, time.monotonic()

  def write(self, line: str) -> None:
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
      return
    self._text += line
    self._dirty = True
    if time.monotonic() - self._flushed_at >= self._flush_secs:
      self.flush()

  def flush(self) -> None:
    if self._dirty:
      self._path.write_text(self._text)
      self._dirty, self._flushed_at = False, time.monotonic()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    else:
      self.flush()


class _EventFile:
  """A tensorboardX event file on `gs://` through epath, rewritten whole on each flush
  that has something new (tensorboardX's own gs:// writer uploads again on garbage
  collection, retrying for minutes if the bucket is gone)."""

  def __init__(self, path: str):
    self._path, self._buf, self._flushed = epath.Path(path), io.BytesIO(), -1

  def write(self, data: bytes) -> None:
    self._buf.write(data)

  def flush(self) -> None:
    if self._buf.tell() != self._flushed:
      self._path.write_bytes(self._buf.getvalue())
      self._flushed = self._buf.tell()

  def close(self) -> None:
    self.flush()


class _EventFiles:
  """tensorboardX writer factory for `gs://` logdirs."""

  def open(self, path: str) -> _EventFile:
    return _EventFile(path)

  def directory_check(self, path: str) -> None:
    """Nothing to make: GCS has no directories."""


WANDB_ID = "wandb_run_id"   # WORKDIR/wandb_run_id: a resumed run logs to the same W&B run


class _Wandb:
  """A Weights & Biases run for one workdir (`config.train.loggers` with 'wandb'): named
  after the workdir, its id kept in WORKDIR/wandb_run_id so a resumed run continues the
  same W&B run; its local files in WORKDIR/wandb (a temp dir for a gs:// workdir).
  WANDB_MODE=offline writes them there and sends nothing (`wandb sync` later). W&B's
  console capture is off: growjax's console routing owns stdout and stderr."""

  def __init__(self, root: epath.Path, project: str, config: dict | None):
    import uuid
    import wandb   # the optional extra; config.loggers checked it is importable
    id_file = root / WANDB_ID
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    if not id_file.exists():
      id_file.write_text(run_id + "\n")
    local = os.fspath(root) if "://" not in os.fspath(root) else None
    name = "/".join(epath.Path(os.fspath(root)).parts[-2:])
    self.run = wandb.init(project=project or "growjax", name=name, id=run_id,
                          resume="allow", dir=local, config=config or {},
                          settings=wandb.Settings(console="off"))

  def log(self, step: int, values: Mapping[str, float | None]) -> None:
    self.run.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

  def close(self) -> None:
    self.run.finish()


class MetricWriter:
  """Console + `WORKDIR/metrics.jsonl` + the loggers asked for: TensorBoard
  (`WORKDIR/tb`), Weights & Biases (`_Wandb`); a no-op writer on processes other than
  0. `workdir` may be local or `gs://`."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True,
               flush_secs: float = 10.0, wandb: bool = False, wandb_project: str = "",
               config: dict | None = None):
    self.enabled, self.workdir = enabled, workdir
    self._tb = self._jsonl = self._wandb = None
    if not enabled:
      return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self._jsonl = _JsonLines(root / "metrics.jsonl", flush_secs)
    if tensorboard:
      from tensorboardX import SummaryWriter  # light, no TensorFlow
      from tensorboardX import record_writer
      record_writer.register_writer_factory("gs", _EventFiles())
      self._tb = SummaryWriter(logdir=os.fspath(root / "tb"), flush_secs=flush_secs)
    if wandb:
      self._wandb = _Wandb(root, wandb_project, config)

  def scalars(self, step: int, values: Mapping[str, float | None]) -> None:
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
    if self._wandb is not None:
      self._wandb.log(step, values)
    if self._tb is None:
      return
    for k, v in values.items():
      if v is not None:
        self._tb.add_scalar(k, float(v), step)

  def text(self, line: str) -> None:
    if self.enabled:
      print(line, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._wandb is not None:
      self._wandb.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


class Throughput:
  """Training tokens/s and ETA over the window since the last report (wall clock,
  less the evaluation and checkpoint time the loop reports as `stalled_s`)."""

  def __init__(self, start_step: int, total_steps: int):
    self.total = total_steps
    self._t, self._step = time.perf_counter(), start_step

  def update(self, step: int, tokens_per_step: int, stalled_s: float = 0.0
             ) -> tuple[float, float]:
    now = time.perf_counter()
    dt, ds = now - self._t - stalled_s, step - self._step
    self._t, self._step = now, step
    if ds <= 0 or dt <= 0:
      return 0.0, 0.0
    tps = ds * tokens_per_step / dt
    eta = (self.total - step) * dt / ds
    return tps, eta
