"""The profiler switch (`config.train.profile_steps`) and the step-time breakdown in the
logs: a tiny run writes a jax.profiler trace of the asked steps into WORKDIR/profile,
and every logged step carries device / data / host seconds per step that add up to the
step time; a malformed range is a one-line error before any compute."""

import glob
import json
import os

import jax
import pytest

from growjax import cli
from growjax.train import metrics as metrics_lib
from growjax import train
from tiny import tiny_base


def _cfg(**train_fields):
  c = tiny_base()
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.train.async_checkpointing = False
  c.metrics.tensorboard = False
  c.mesh.fsdp = 1
  for k, v in train_fields.items():
    c.train[k] = v
  return c


def test_profile_steps_write_a_trace_and_the_log_splits_the_step_time(tmp_path, data_dir,
                                                                      capsys):
  train.train(_cfg(profile_steps="3,4"), str(tmp_path), devices=jax.devices()[:1])
  traces = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  out = capsys.readouterr().out
  assert f"profile of steps 3..4 written to {tmp_path / 'profile'}" in out
  assert "= device " in out and "+ data " in out and "+ host " in out

  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    parts = r["step_device_s"] + r["step_data_s"] + r["step_host_s"]
    assert r["step_s"] == pytest.approx(parts, rel=1e-6)
    # tokens/s counts the same training time the breakdown splits
    assert r["step_s"] == pytest.approx(8 * 32 / r["tokens_per_second"], rel=1e-6)
    assert r["step_device_frac"] + r["step_data_frac"] + r["step_host_frac"] == \
        pytest.approx(1.0)
    assert min(r["step_device_s"], r["step_data_s"], r["step_host_s"]) >= 0


def test_no_profile_by_default(tmp_path, data_dir):
  train.train(_cfg(steps=2), str(tmp_path), devices=jax.devices()[:1])
  assert not (tmp_path / "profile").exists()


def test_step_breakdown_parts_add_up():
  b = metrics_lib.step_breakdown(0.5, 0.3, 0.05)
  assert b["step_host_s"] == pytest.approx(0.15)
  assert b["step_device_frac"] == pytest.approx(0.6)
  assert metrics_lib.step_breakdown(0.1, 0.2, 0.0)["step_host_s"] == 0.0   # clock jitter


@pytest.mark.parametrize("value", ["5", "5,3", "0,2", "a,b"])
def test_a_bad_profile_range_is_refused_before_any_compute(value, tmp_path, capsys):
  try:
    code = cli.main(["growjax", "train", "--config", "configs/tiny.py",
                     f"--config.train.profile_steps={value}", "--workdir", str(tmp_path / "w")])
  except SystemExit as e:
    code = e.code
  assert code != 0
  err = capsys.readouterr().err
  assert "config.train.profile_steps" in err and "FIRST,LAST" in err, err
  assert len(err.strip().splitlines()) == 1
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_profile_step_explains_a_fusion_from_the_optimized_hlo():
  """benchmarks/profile_step.py --explain: a kernel named after an XLA fusion is traced to
  its result shape, the ops it fuses and the JAX op its root came from."""
  import importlib.util
  import jax.numpy as jnp
  import re
  spec = importlib.util.spec_from_file_location(
      "profile_step", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks",
                                   "profile_step.py"))
  profile_step = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(profile_step)
  f = jax.jit(lambda x: (x * 2).astype(jnp.bfloat16))
  hlo = f.lower(jnp.ones((64, 128))).compile().as_text()
  name = re.search(r"^\s*(?:ROOT )?%?(\w*fusion[\w.]*) = ", hlo, re.M).group(1)
  explained = profile_step.fusion_of(name, hlo)
  assert explained.startswith("bf16[64,128]"), explained
  assert "multiply" in explained and "convert" in explained, explained
  assert "root from: jit(<lambda>)/convert_element_type" in explained, explained
  assert profile_step.fusion_of("not_a_kernel_of_this_step", hlo) is None
  # The trace names the kernel of instruction `fusion.7` `fusion_7` (unrolled layers).
  numbered = re.sub(rf"%{re.escape(name)}\b", f"%{name}.7", hlo) if "%" in hlo else \
      re.sub(rf"\b{re.escape(name)} = ", f"{name}.7 = ", hlo)
  assert profile_step.fusion_of(f"{name}_7", numbered).startswith("bf16[64,128]")


def test_attention_kernels_benchmark_checks_each_kernel_and_reports_what_cannot_run(
    tmp_path, monkeypatch, capsys):
  import importlib.util
  import sys
  spec = importlib.util.spec_from_file_location(
      "attention_kernels", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                        "attention_kernels.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "attention.json"
  monkeypatch.setattr(sys, "argv", ["attention_kernels.py", "--shape", "tiny", "--batch",
                                    "2", "--seq", "64", "--steps", "1", "--json", str(out)])
  bench.main()
  rows = {r["kernel"]: r for r in json.loads(out.read_text())["rows"]}
  assert set(rows) == set(bench.KERNELS)
  assert rows["xla"]["rel_error"] == 0 and rows["xla"]["forward_backward_ms"] > 0
  # On the CPU the GPU kernels cannot run: each is a row with its reason, not a crash.
  assert all(rows[k]["error"].startswith("forward: ") for k in ("cudnn", "pallas_mosaic"))
  assert "| xla |" in capsys.readouterr().out
