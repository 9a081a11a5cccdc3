"""`growjax sweep`: a 2 x 2 grid (d x g) end to end through the console entry point, a
rerun that skips finished runs, the analysis on synthetic runs with known answers, the
law fit on synthetic points, and bad grids refused in one line before any compute."""

import importlib.util
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from growjax import cli
from growjax import config as config_lib
from growjax.growth import law
from growjax.growth import speedup
from growjax.growth.study import analysis, grid, jobs, plots, report, runner
from growjax.growth import timing

PNG = b"\x89PNG\r\n\x1a\n"

TINY_CONFIG = '''
from growjax.config import base_config


def get_config(arg=None):
  c = base_config("tiny")
  c.model.update(dtype="float32", num_layers=4, embed_dim=32, num_heads=2, num_kv_heads=2,
                 head_dim=16, mlp_dim=64)
  c.data.seq_len = 32
  c.train.update(steps=8, global_batch_size=8, log_every=4, eval_every=2, eval_batches=1,
                 checkpoint_every=4, async_checkpointing=False, loss_chunk_len=32)
  c.metrics.tensorboard = False
  c.optimizer.update(peak_lr=1e-2, end_lr=1e-3, warmup_steps=2, decay_steps=10)
  c.growth.small_model.update(dtype="float32")
  return c
'''


@pytest.fixture
def tiny_config(tmp_path):
  path = tmp_path / "tiny_sweep.py"
  path.write_text(TINY_CONFIG)
  return str(path)


def sweep_cli(*args):
  return cli.main(["growjax", "sweep", *args])


@pytest.fixture
def quick_compiles():
  """XLA without its expensive passes: these steps run a few times each, their compiles
  are most of the test's time (and the grid shares one decay horizon, decay_steps=10, so
  runs of one model size share one compiled step)."""
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


# ------------------------------------------------------------------------ end to end


def test_sweep_runs_a_2x2_grid_writes_summary_and_plots_and_a_rerun_skips(
    tiny_config, tmp_path, data_dir, capsys, quick_compiles):
  work = tmp_path / "sweep"
  # Target 5.0: every run gets there (the scratch run's final loss is not guaranteed to
  # be reached by grow runs of 8 steps; the saving is what speedup.compare says either way).
  args = [f"--config={tiny_config}", f"--workdir={work}", "--d=2,4", "--g=2,4",
          "--target_loss=5.0"]
  assert sweep_cli(*args) == 0
  out = capsys.readouterr().out
  names = ["scratch", "d2_g2_stack", "d4_g2_stack", "d2_g4_stack", "d4_g4_stack"]
  for i, name in enumerate(names, 1):
    assert f"== sweep run {i}/5: {name}: " in out
  assert "== sweep run 1/5 done in" in out and "sweep ETA" in out
  assert "grid done" in out

  summary = json.loads((work / report.SUMMARY_FILE).read_text())
  rows = {r["name"]: r for r in summary["runs"]}
  assert list(rows) == names
  # Equal FLOPs: the large stage takes what the small stage left, to within one step.
  budget = rows["scratch"]["flops"]
  step_flops = budget / 8
  for name in names[1:]:
    r = rows[name]
    assert budget - step_flops < r["flops"] <= budget
    assert r["steps"] == r["d_steps"] + r["large_steps"]
    assert r["small_layers"] == 4 // r["g"]
    assert r["d_tokens"] == r["d_steps"] * 8 * 32
    # The logged FLOPs are the planned ones (the small stage counted in the large stage's).
    flops, _ = speedup.load_curve(str(work / name))
    assert flops[-1] == pytest.approx(r["flops"], rel=1e-9)
    # Each saving is what `growjax speedup` computes for the pair.
    ref = speedup.compare(str(work / "scratch"), str(work / name), target_loss=5.0)
    assert r["flops_saved"] == pytest.approx(ref["flops_saved"])
    assert r["speedup"] == pytest.approx(ref["speedup"])
  # The best d per g and the best g are the argmax of those savings.
  for g in (2, 4):
    mine = [rows[f"d{d}_g{g}_stack"] for d in (2, 4)]
    best = max(mine, key=lambda r: r["flops_saved"])
    assert summary["best_d_per_g"]["stack"][str(g)]["d_steps"] == best["d_steps"]
    assert summary["best_d_per_g"]["stack"][str(g)]["at_edge"] is True
  best = max(summary["best_d_per_g"]["stack"].items(), key=lambda kv: kv[1]["flops_saved"])
  assert summary["best"]["g"] == int(best[0])
  # One (N, C) point: only c fitted, and the law passes through the measured optimum.
  fit = summary["law"]
  assert fit["fitted"] == ["c"] and "only c fitted" in fit["note"]
  point = summary["law_point"]
  assert law.predict_d(fit["coefficients"], point["params"], point["flops"]) == \
      pytest.approx(point["d_tokens"])
  assert summary["recommendation"]["d_tokens"] == pytest.approx(point["d_tokens"])
  assert "only c fitted, a = 0.88 and b = 163.27 fixed at the paper's" in out
  assert "recommendation at C = " in out and "(this sweep's budget)" in out
  for png in plots.PLOTS:
    assert (work / png).read_bytes()[:8] == PNG

  # A rerun trains only what is unfinished: a run killed before its end (its last
  # checkpoint gone) continues from its checkpoints, every finished run is skipped with
  # its metrics untouched, and the resumed run ends as it did. Another budget moves only
  # the recommendation.
  metrics = lambda n: (work / n).joinpath(
      *(["metrics.jsonl"] if n == "scratch" else ["large", "metrics.jsonl"])).read_text()
  before = {n: metrics(n) for n in names[:-1]}
  shutil.rmtree(work / "d4_g4_stack" / "large" / "checkpoints" / "10")
  assert sweep_cli(*args, "--budget_flops", f"{budget * 100:g}") == 0
  out = capsys.readouterr().out
  assert out.count("done, skipped") == 4 and "== sweep run 5/5: d4_g4_stack: stack x4" in out
  assert "== sweep: 5 runs, 4 done" in out
  assert "steps 8->10" in out and "1-layer model" not in out     # only the large stage
  assert {n: metrics(n) for n in names[:-1]} == before
  again = json.loads((work / report.SUMMARY_FILE).read_text())
  assert {r["name"]: r["final_loss"] for r in again["runs"]} == \
      {r["name"]: r["final_loss"] for r in summary["runs"]}
  assert again["recommendation"]["budget_flops"] == pytest.approx(budget * 100)
  assert again["recommendation"]["d_tokens"] == pytest.approx(law.predict_d(
      fit["coefficients"], point["params"], budget * 100))
  assert "(this sweep's budget)" not in out

  # The same workdir with another target is refused, before any compute.
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={work}", "--d=2", "--g=2",
                   "--config.train.steps=10") == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("growjax sweep: --workdir=") and "holds a sweep of another target" \
      in err and "steps" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------- --jobs, --only


def test_jobs_trains_runs_side_by_side_with_the_sequential_results(
    tiny_config, tmp_path, data_dir, capsys, quick_compiles, monkeypatch):
  """--jobs 2 starts each run as a child process (`growjax sweep --job=NAME`, its log in
  WORKDIR/logs) and ends with the same losses, summary and plots as the sequential sweep;
  --only picks runs of the grid, scratch always."""
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")   # the children's quick compiles
  common = [f"--config={tiny_config}", "--d=2,4", "--g=2,4", "--target_loss=5.0",
            "--only=d4_g2_stack,d2_g4_stack"]
  assert sweep_cli(*common, f"--workdir={tmp_path / 'seq'}") == 0
  capsys.readouterr()
  par = tmp_path / "par"
  assert sweep_cli(*common, f"--workdir={par}", "--jobs=2") == 0
  out = capsys.readouterr().out
  names = ["scratch", "d4_g2_stack", "d2_g4_stack"]
  assert "3 runs, 0 done; " in out and ", 2 at a time -> " in out
  assert "== sweep: data ready for all jobs" in out      # prepared once, not per job
  # The sweep itself does not claim the accelerator's memory; its jobs get 1/2 each of
  # what the user gave (here the CLI's default fraction).
  assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")
  for name in names:
    assert f"== sweep run {name}: started (" in out and f"== sweep run {name} done in " in out
    log = (par / "logs" / f"{name}.log").read_text()
    assert "step 4/" in log and "Traceback" not in log
  assert "grid done" in out and "d2_g2_stack" not in out
  seq = json.loads((tmp_path / "seq" / report.SUMMARY_FILE).read_text())
  got = json.loads((par / report.SUMMARY_FILE).read_text())
  assert [r["name"] for r in got["runs"]] == names
  for a, b in zip(seq["runs"], got["runs"]):
    assert a["name"] == b["name"]
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-5)
    assert b["flops"] == a["flops"]
  for png in plots.PLOTS:
    assert (par / png).read_bytes()[:8] == PNG
  # A rerun finds everything done and trains nothing.
  assert sweep_cli(*common, f"--workdir={par}", "--jobs=2") == 0
  out = capsys.readouterr().out
  assert "3 runs, 3 done; " in out and "started" not in out
  # A name outside the grid is refused in one line, before any compute.
  assert sweep_cli(*common[:-1], "--only=d9_g2_stack", f"--workdir={tmp_path / 'bad'}") == 2
  err = capsys.readouterr().err.strip()
  assert err == ("growjax sweep: --only=d9_g2_stack: d9_g2_stack not in the grid — choose "
                 "from scratch, d2_g2_stack, d4_g2_stack, d2_g4_stack, d4_g4_stack")
  assert not (tmp_path / "bad").exists()


def test_jobs_auto_divides_the_memory_limit_by_the_compiled_step(tiny_config, tmp_path,
                                                                  data_dir, capsys,
                                                                  quick_compiles,
                                                                  monkeypatch):
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")   # restored after the test
  gib = 2 ** 30
  # A 16L x 512 replica job needing 22 GiB under the CLI's 0.94 of an 80 GB H100 (74.4
  # GiB): three fit (each gets 24.8 GiB, 22 under the 0.97 headroom); capped by the runs.
  assert jobs.jobs_that_fit(22 * gib, int(74.4 * gib), most=5) == 3
  assert jobs.jobs_that_fit(22 * gib, int(74.4 * gib), most=2) == 2
  assert jobs.jobs_that_fit(80 * gib, int(74.4 * gib), most=5) == 1
  # CPU reports no memory limit: auto is one run at a time, in this process.
  work = tmp_path / "auto"
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={work}", "--d=2", "--g=2",
                   "--target_loss=5.0", "--jobs=auto") == 0
  out = capsys.readouterr().out
  assert "--jobs auto: the cpu backend reports no memory limit — one run at a time" in out
  assert "== sweep run 2/2: d2_g2_stack: " in out and not (work / "logs").exists()
  assert (work / report.SUMMARY_FILE).exists()
  # Where the backend reports a limit, auto compiles the target's step and divides.
  from growjax.train import memory_probe
  monkeypatch.setattr(memory_probe, "device_limit", lambda devices: 10 * gib)
  lines = []
  assert jobs.auto_jobs(load(tiny_config), most=4, log=lines.append) == (4, True)
  assert lines[0].startswith("== sweep: --jobs auto: the target's train step needs 0.0 GiB "
                             "per device of 10.0 GiB") and lines[0].endswith(": 4 at a time")


def test_jobs_under_jax_distributed_is_refused_before_the_backend(tiny_config, tmp_path,
                                                                   capsys, monkeypatch):
  """Several processes train each run together: --jobs N is refused in one line, and
  nothing is set for a sweep of children (the check reads jax.distributed, which is known
  before JAX's backend starts)."""
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={tmp_path / 'w'}", "--d=2",
                   "--jobs=2") == 2
  err = capsys.readouterr().err.strip()
  assert err == ("growjax sweep: --jobs=2 runs grid runs side by side on one host; this "
                 "sweep runs under jax.distributed across processes — give --jobs=1")
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
  assert not (tmp_path / "w").exists()


def test_a_failed_job_is_one_line_naming_its_log(tiny_config, tmp_path, data_dir):
  import sys
  cfg = load(tiny_config)
  runs = grid.plan(cfg, [2], [2], ["stack"])
  child = [sys.executable, "-c",
           "import sys; print('JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory'); sys.exit(3)"]
  lines = []
  with pytest.raises(runner.JobsFailed) as failed:
    runner.execute_parallel(cfg, str(tmp_path), runs, 2, child, log=lines.append, poll_s=0.05)
  for run in runs:
    assert any(l.startswith(f"== sweep run {run.name} failed (exit 3) after ") and
               l.endswith("RESOURCE_EXHAUSTED: Out of memory — out of accelerator memory at "
                          "1/2 of it: lower --jobs, or set --config.model.remat_policy=full")
               for l in lines), lines
    assert "RESOURCE_EXHAUSTED" in (tmp_path / "logs" / f"{run.name}.log").read_text()
  names, rest = failed.value.one_line.removeprefix("sweep runs ").split(" failed — ")
  assert sorted(names.split(", ")) == ["d2_g2_stack", "scratch"]     # in finishing order
  assert rest == (f"their logs are in {tmp_path / 'logs'}; fix the cause and rerun the same "
                  f"command (finished runs are skipped)")


def test_jobs_pass_sigterm_to_every_child_and_a_rerun_resumes(tiny_config, tmp_path,
                                                              data_dir):
  """SIGTERM to `growjax sweep --jobs 2` reaches both children: each saves a checkpoint
  and exits, no process is left, and the same command resumes both runs to their end."""
  import signal
  import subprocess
  import sys
  import time
  work = tmp_path / "w"
  cmd = [sys.executable, "-m", "growjax", "sweep", f"--config={tiny_config}",
         f"--workdir={work}", "--d=2", "--g=2", "--jobs=2", "--target_loss=5.0",
         "--config.train.steps=400", "--config.train.checkpoint_every=100000"]
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True)
  logs = [work / "logs" / "scratch.log", work / "logs" / "d2_g2_stack.log"]
  deadline = time.time() + 120
  while time.time() < deadline and not all(
      p.exists() and "step 20/" in p.read_text() for p in logs):
    time.sleep(0.5)
  parent.send_signal(signal.SIGTERM)
  out, _ = parent.communicate(timeout=120)
  assert "SIGTERM: passing it on to 2 running job(s)" in out, out
  assert "== sweep run scratch stopped after" in out
  assert "== sweep run d2_g2_stack stopped after" in out
  assert "rerun the same command to resume" in out and "sweep_summary" not in out
  stopped = {}
  for p in logs:
    text = p.read_text()
    assert "checkpoint saved" in text and "stopping at step" in text, text[-500:]
    stopped[p.stem] = int(text.split("stopping at step ")[1].split(":")[0])
  assert all(0 < s < 400 for s in stopped.values())
  ps = subprocess.run(["pgrep", "-f", f"--workdir={work}"], capture_output=True, text=True)
  assert ps.stdout.strip() == "", "a child outlived its sweep"
  assert sorted(os.listdir(work / "scratch" / "checkpoints")) != []
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "2 runs, 0 done" in done.stdout and "grid done" in done.stdout
  for p in logs:   # each resumed where it stopped, not from its start
    assert f"steps {stopped[p.stem]}->400" in p.read_text()
  summary = json.loads((work / report.SUMMARY_FILE).read_text())
  assert [r["total_flops"] for r in summary["runs"]] == pytest.approx(
      [r["flops"] for r in summary["runs"]], rel=1e-9)


# --------------------------------------------------------------------- bad grids


@pytest.mark.parametrize("flags,message", [
    (["--g=3"], "--g=3 does not divide config.model.num_layers=4 into a smaller model — "
                "give factors >= 2 that divide it: 2, 4"),
    (["--g=two"], "--g entry 'two' is not an integer"),
    (["--d=100", "--g=2"], "--d=100 steps (25600 tokens) at g=2: the small stage "
                           "(2 layers"),
    (["--d=1.5"], "--d entry '1.5' is not a whole number of steps"),
    (["--d=0"], "is below one small-stage step"),
    (["--d=2", "--methods=bogus"], "sweep run d2_g2_bogus: "),
    (["--d=2", "--config.train.eval_every=0"], "config.train.eval_every=0: the sweep "
                                               "compares evaluation losses"),
    (["--d=2", "--budget_flops=0"], "--budget_flops=0.0 must be a FLOP count > 1"),
    (["--d=2", "--also=/nonexistent/sweep"], "--also=/nonexistent/sweep: no "
                                              "sweep_summary.json there"),
    (["--d=2", "--jobs=0"], "--jobs=0 must be a whole number >= 1 or auto"),
    (["--d=2", "--jobs=many"], "--jobs=many must be a whole number >= 1 or auto"),
])
def test_bad_grid_is_one_line_before_any_compute(tiny_config, tmp_path, capsys, flags,
                                                 message):
  work = tmp_path / "w"
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={work}", *flags) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert err.startswith("growjax sweep: ") and len(err.splitlines()) == 1
  assert message in err
  assert not work.exists()         # refused before anything is written or trained


def test_d_beyond_the_run_names_the_largest_d(tiny_config, tmp_path, capsys):
  # 8 scratch steps of 4 layers; g=2: a small step costs ~half a large one.
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={tmp_path}/w", "--d=100",
                   "--g=2") == 2
  err = capsys.readouterr().err
  max_d = int(err.split("give d <= ")[1].split()[0])
  cfg = load(tiny_config)
  runs = grid.plan(cfg, [max_d], [2], ["stack"])
  assert runs[1].large_steps == 1                           # the largest d that fits
  with pytest.raises(ValueError, match="leaves no step"):
    grid.plan(cfg, [max_d + 1], [2], ["stack"])


def test_dry_run_prints_the_grid_and_computes_nothing(tiny_config, tmp_path, capsys):
  work = tmp_path / "w"
  assert sweep_cli(f"--config={tiny_config}", f"--workdir={work}", "--d=256,1024",
                   "--d_unit=tokens", "--methods=stack,zero", "--dry_run") == 0
  out = capsys.readouterr().out
  assert not work.exists()
  # 256 and 1024 tokens = 1 and 4 steps of 8 x 32; default g: 2 and 4 divide 4 layers.
  rows = [line.split() for line in out.splitlines()[2:11]]
  assert [r[0] for r in rows] == ["scratch"] + [
      f"d{d}_g{g}_{m}" for m in ("stack", "zero") for g in (2, 4) for d in (1, 4)]
  assert "9 runs" in out and "total: " in out
  # d1_g4: 1 small step of a 1-layer model, then the 4-layer model to the budget.
  cfg = load(tiny_config)
  scratch, d1_g4 = grid.plan(cfg, [1], [4], ["stack"])
  assert rows[3] == ["d1_g4_stack", "4", "1", "1", "256", str(d1_g4.large_steps),
                     str(d1_g4.steps), f"{d1_g4.flops:.4g}",
                     f"{d1_g4.flops / scratch.flops:.4f}"]
  assert d1_g4.steps == 1 + d1_g4.large_steps


def load(path):
  return cli.parse(cli.COMMANDS["sweep"], [f"--config={path}"]).config


# ----------------------------------------------------------- analysis, known answers


def write_curve(path, points):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step, (flops, loss) in enumerate(points, 1):
      f.write(json.dumps({"step": step, "flops": flops, "eval_loss": loss}) + "\n")


def test_analysis_on_synthetic_runs_with_known_savings(tiny_config, tmp_path):
  cfg = load(tiny_config)
  runs = grid.plan(cfg, [1, 2, 4], [2, 4], ["stack"])
  budget = runs[0].flops
  work = str(tmp_path)
  # Scratch falls linearly 4 -> 2 over the budget: it reaches 2.0 at `budget`.
  write_curve(f"{work}/scratch", [(budget * k / 4, 4 - 0.5 * k) for k in range(1, 5)])
  # Each grow run reaches 2.0 at a known fraction of the budget (its saving); g=2 d=4
  # never does.
  reach = {"d1_g2_stack": 0.8, "d2_g2_stack": 0.6, "d4_g2_stack": None,
           "d1_g4_stack": 0.9, "d2_g4_stack": 0.7, "d4_g4_stack": 0.75}
  for name, frac in reach.items():
    write_curve(f"{work}/{name}/small", [(0.05 * budget, 3.5)])
    write_curve(f"{work}/{name}/large", [(0.1 * budget, 3.0), (0.95 * budget, 2.2)]
                if frac is None else
                [(0.1 * budget, 3.0), (frac * budget, 2.0), ((frac + 0.05) * budget, 1.9)])
  s = analysis.analyse(cfg, work, runs)
  rows = {r["name"]: r for r in s["runs"]}
  assert s["target_loss"] == 2.0
  for name, frac in reach.items():
    if frac is None:
      assert rows[name]["flops_saved"] is None and not rows[name]["reached"]
    else:
      assert rows[name]["flops_saved"] == pytest.approx(1 - frac)
  g2, g4 = s["best_d_per_g"]["stack"]["2"], s["best_d_per_g"]["stack"]["4"]
  assert g2["d_steps"] == 2 and g2["how"] == "grid" and not g2["at_edge"]  # d=4 unmeasured
  assert g4["d_steps"] == 2 and g4["flops_saved"] == pytest.approx(0.3)
  # g=4: the parabola through (d 1, 2, 4 steps; saving .1, .3, .25) in log10 d.
  x, y = np.log10([256, 512, 1024]), np.array([0.1, 0.3, 0.25])
  a2, a1, _ = np.polyfit(x, y, 2)
  assert g4["how"] == "parabola" and g4["d_tokens"] == pytest.approx(10 ** (-a1 / (2 * a2)))
  assert s["best"]["g"] == 2 and s["best"]["flops_saved"] == pytest.approx(0.4)
  n = grid.target_params(cfg)
  c = math.log10(512) - 0.88 * math.log10(n) - 163.27 / math.log10(budget)
  assert s["law"]["coefficients"]["c"] == pytest.approx(c)
  assert s["law"]["coefficients"]["a"] == 0.88 and s["law"]["coefficients"]["b"] == 163.27
  rec = s["recommendation"]
  assert rec["g"] == 2 and rec["d_tokens"] == pytest.approx(512) and rec["d_steps"] == 2
  assert rec["paper_d_tokens"] == pytest.approx(timing.growth_tokens(n, budget))
  # Two other sweeps (--also) at other N and C on a known law through this optimum: with
  # three distinct points a, b and c are fitted, and recovered.
  known = {"a": 0.8, "b": 150.0, "c": 0.0}
  known["c"] = math.log10(512) - law.log10_d(known, n, budget)
  for i, (other_n, other_c) in enumerate([(n * 30, budget * 1e3), (n * 3, budget * 1e6)]):
    other = tmp_path / f"other{i}"
    other.mkdir()
    (other / report.SUMMARY_FILE).write_text(json.dumps({"law_point": {
        "params": other_n, "flops": other_c,
        "d_tokens": law.predict_d(known, other_n, other_c)}}))
  three = analysis.analyse(cfg, work, runs, also=[str(tmp_path / "other0"),
                                               str(tmp_path / "other1")])
  assert three["law"]["fitted"] == ["a", "b", "c"]
  for k, v in known.items():
    assert three["law"]["coefficients"][k] == pytest.approx(v, abs=1e-6)
  assert "with 2 point(s) of --also" in report.report(three)
  text = report.report({**s})
  assert "best d for g=2 (stack): 2 steps = 512 tokens, 40.0% saved" in text
  assert "d4_g2_stack" in text and "never" in text
  assert "best g: 2 (stack), 40.0% of FLOPs saved at d = 2 steps" in text


# --------------------------------------------------------------------------- the law


TRUE = {"a": 0.8, "b": 150.0, "c": -5.0}
GRID = [(n, c) for n in (1e7, 1e8, 1e9, 1e10) for c in (1e17, 1e19, 1e21, 1e23)]


def test_law_fit_recovers_known_coefficients_exactly_and_with_noise():
  points = [law.Point(n, c, law.predict_d(TRUE, n, c)) for n, c in GRID]
  fit = law.fit(points)
  assert fit.fitted == ("a", "b", "c") and fit.distinct_points == 16
  for k, v in TRUE.items():
    assert fit.coefficients[k] == pytest.approx(v, rel=1e-9)
  assert fit.residual_rms < 1e-9
  rng = np.random.default_rng(0)
  noisy = [law.Point(p.params, p.flops, p.d_tokens * 10 ** rng.normal(0, 0.01))
           for p in points for _ in range(4)]                    # 64 points, 1% noise in log
  fit = law.fit(noisy)
  assert fit.coefficients["a"] == pytest.approx(0.8, abs=0.01)
  assert fit.coefficients["b"] == pytest.approx(150.0, abs=2.0)
  assert fit.coefficients["c"] == pytest.approx(-5.0, abs=0.1)
  assert 0.005 < fit.residual_rms < 0.015
  for k in TRUE:     # the truth within three standard errors
    assert abs(fit.coefficients[k] - TRUE[k]) < 3 * fit.stderr[k]
  text = law.describe(fit)
  assert "paper" in text and "0.88" in text and "163.3" in text


def test_law_with_too_few_points_fits_what_is_identifiable():
  at = lambda n, c: law.Point(n, c, law.predict_d(TRUE, n, c))
  one = law.fit([at(1e8, 1e19)])
  assert one.fitted == ("c",) and one.coefficients["a"] == 0.88
  assert one.coefficients["b"] == 163.27 and one.stderr == {"c": None}
  assert "1 distinct (N, C) point: only c fitted, a = 0.88 and b = 163.27 fixed" in one.note
  # ... and passes through the point.
  assert law.predict_d(one.coefficients, 1e8, 1e19) == pytest.approx(at(1e8, 1e19).d_tokens)
  same_c = law.fit([at(1e7, 1e19), at(1e9, 1e19), at(1e10, 1e19)])   # N varies only
  assert same_c.fitted == ("a", "c") and same_c.coefficients["a"] == pytest.approx(0.8)
  assert same_c.coefficients["b"] == 163.27 and "b = 163.27 fixed" in same_c.note
  same_n = law.fit([at(1e8, 1e17), at(1e8, 1e21)])                  # C varies only
  assert same_n.fitted == ("b", "c") and same_n.coefficients["b"] == pytest.approx(150.0)
  assert "differing in C only" in same_n.note
  two = law.fit([at(1e7, 1e17), at(1e9, 1e21)])                     # both vary, 2 points
  assert two.fitted == ("a", "c") and two.distinct_points == 2
  repeated = law.fit([at(1e8, 1e19)] * 3)                           # 3 points, 1 distinct
  assert repeated.fitted == ("c",) and repeated.distinct_points == 1
  with pytest.raises(ValueError, match="no law points"):
    law.fit([])
  assert law.predict_d(law.PAPER, 7e9, 8.4e22) == pytest.approx(timing.growth_tokens(7e9, 8.4e22))


def test_repro_sweep_config_plans_the_documented_grid():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "repro", "sweep.py")
  cfg = load(path)
  runs = grid.plan(cfg, [50, 150, 300], [2, 4], ["stack"])
  assert len(runs) == 7 and sum(r.steps for r in runs) == 4816
  assert sum(r.d_steps for r in runs) == 1000
  assert sum(r.flops for r in runs) == pytest.approx(1.644e15, rel=1e-3)
  grid.check(cfg, runs, 8)
  assert config_lib.validate(cfg, 8)["fsdp"] == 8
  # d = 150 at g = 4 is the operator table's G_stack run: the same equal-FLOPs steps.
  ops = importlib.util.spec_from_file_location(
      "ops_cfg", os.path.join(os.path.dirname(path), "operators.py"))
  module = importlib.util.module_from_spec(ops)
  ops.loader.exec_module(module)
  assert {r.name: r.steps for r in runs}["d150_g4_stack"] == \
      module.get_config("depth,direct").train.steps == 711


def test_best_d_at_the_edge_suggests_the_next_d_on_the_grids_spacing(tiny_config, tmp_path):
  """The replica's sweeps both peaked at their largest d: the report names the d to add,
  on the grid's own spacing and within the budget (plan() accepts them)."""
  cfg = load(tiny_config)
  assert analysis.widen_d(cfg, [1, 2], 2, 4, "stack") == [4, 8]      # ratio 2 past the top
  assert analysis.widen_d(cfg, [2, 4], 2, 4, "stack") == [1]         # below the bottom: >= 1
  assert analysis.widen_d(cfg, [4, 8], 8, 2, "stack") == []          # the budget stops it:
  with pytest.raises(ValueError, match="leaves no step"):
    grid.plan(cfg, [16], [2], ["stack"])
  runs = grid.plan(cfg, [1, 2], [4], ["stack"])
  budget = runs[0].flops
  write_curve(f"{tmp_path}/scratch", [(budget * k / 4, 4 - 0.5 * k) for k in range(1, 5)])
  for name, frac in {"d1_g4_stack": 0.9, "d2_g4_stack": 0.7}.items():
    write_curve(f"{tmp_path}/{name}/small", [(0.05 * budget, 3.5)])
    write_curve(f"{tmp_path}/{name}/large", [(0.1 * budget, 3.0), (frac * budget, 2.0)])
  s = analysis.analyse(cfg, str(tmp_path), runs)
  assert s["best_d_per_g"]["stack"]["4"]["widen_d_steps"] == [4, 8]
  assert "widen --d, e.g. --d=1,2,4,8" in report.report(s)
