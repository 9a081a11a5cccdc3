"""FP8 against bf16 over 2,000 steps on real text: the loss curves, side by side.

  python benchmarks/fp8_loss_curve.py --workdir runs/fp8_curve [--steps 2000]

Trains the same model twice through `growjax train`, once with
`config.model.matmul_precision='bf16'` and once with `'fp8'` (every block projection
through FP8 GEMMs, `growjax/model/fp8.py`), same seed, data order and schedule: a
12L x 768 LLaMA (85M parameters, byte vocabulary) on the stdlib + Shakespeare
corpus (`growjax.data.corpora.stdlib_and_plays`, ~35M byte tokens; 2,000 steps of
32 x 1024 tokens are under two passes), evaluated every 100 steps on the held-out
packages and plays. Prints both curves, the relative gap of each evaluation, and
writes `fp8_vs_bf16.png` and `fp8_vs_bf16.json` into the workdir. Both runs go
concurrently on one GPU (each 45% of its memory, `--mem_fraction`): the curves are what is
measured here, not the speed (benchmarks/step_benchmark.py --precision fp8 is).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME, TITLE = "fp8_vs_bf16", "FP8 (current scaling) vs bf16"   # outputs and plot title
MODEL = ("--config.model.num_layers=12 --config.model.embed_dim=768 "
         "--config.model.num_heads=12 --config.model.num_kv_heads=12 "
         "--config.model.mlp_dim=2048 --config.model.dtype=bfloat16")


def command(precision: str, workdir: str, steps: int, batch: int = 32,
            scaling: str = "current") -> list[str]:
  return ([sys.executable, "-m", "growjax", "train",
           f"--config={ROOT}/configs/repro/replica.py:run=scratch,steps={steps}",
           f"--workdir={workdir}", f"--config.model.matmul_precision={precision}",
           f"--config.model.fp8_scaling={scaling}",
           f"--config.train.global_batch_size={batch}", "--config.train.eval_every=100",
           "--config.train.log_every=50", "--config.train.checkpoint_every=1000",
           f"--config.optimizer.warmup_steps={max(steps // 20, 1)}"] + MODEL.split())


def read(path: str) -> tuple[dict[int, float], dict[int, float]]:
  train, evals = {}, {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row.get("loss") is not None:
        train[row["step"]] = row["loss"]
      if row.get("eval_loss") is not None:
        evals[row["step"]] = row["eval_loss"]
  return train, evals


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--batch", type=int, default=32, help="sequences of 1024 tokens per step")
  p.add_argument("--fp8_scaling", default="current", choices=("current", "delayed"),
                 help="config.model.fp8_scaling of the fp8 run (delayed: outputs named "
                      "fp8_delayed_vs_bf16.*)")
  p.add_argument("--mem_fraction", type=float, default=0.45,
                 help="GPU memory fraction of each of the two concurrent runs")
  p.add_argument("--plot_only", action="store_true",
                 help="redraw fp8_vs_bf16.png from the workdir's fp8_vs_bf16.json")
  a = p.parse_args()
  global NAME, TITLE
  if a.fp8_scaling == "delayed":
    NAME, TITLE = "fp8_delayed_vs_bf16", "FP8 (delayed scaling) vs bf16"
  if a.plot_only:
    saved = json.load(open(f"{a.workdir}/{NAME}.json"))
    curves = {k: tuple({int(s): v for s, v in saved[k][part].items()}
                       for part in ("train", "eval")) for k in ("bf16", "fp8")}
    be, fe = curves["bf16"][1], curves["fp8"][1]
    steps = sorted(set(be) & set(fe))
    plot(curves, steps, {s: (fe[s] - be[s]) / be[s] for s in steps}, a.workdir)
    return 0
  # Two processes share the GPU: each gets its own fraction, whatever the environment
  # says (0.94 there, for one process, ran the second out of memory).
  env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION=str(a.mem_fraction))
  os.makedirs(a.workdir, exist_ok=True)
  procs = {}
  for prec in ("bf16", "fp8"):
    log = open(f"{a.workdir}/{prec}.log", "w")
    procs[prec] = subprocess.Popen(command(prec, f"{a.workdir}/{prec}", a.steps, a.batch,
                                           a.fp8_scaling), env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
  codes = {k: p.wait() for k, p in procs.items()}
  if any(codes.values()):
    for prec in procs:
      print(open(f"{a.workdir}/{prec}.log").read()[-3000:])
    return 1
  curves = {prec: read(f"{a.workdir}/{prec}/metrics.jsonl") for prec in procs}
  (bt, be), (ft, fe) = curves["bf16"], curves["fp8"]
  steps = sorted(set(be) & set(fe))
  gaps = {s: (fe[s] - be[s]) / be[s] for s in steps}
  print("step | bf16 eval | fp8 eval | gap")
  for s in steps:
    print(f"{s} | {be[s]:.4f} | {fe[s]:.4f} | {100 * gaps[s]:+.2f}%")
  late = [s for s in steps if s >= a.steps // 4]
  summary = {"final_step": steps[-1], "bf16_final_eval": be[steps[-1]],
             "fp8_final_eval": fe[steps[-1]], "final_gap": gaps[steps[-1]],
             "max_abs_gap_after_quarter": max(abs(gaps[s]) for s in late),
             "bf16_train_last": bt[max(bt)], "fp8_train_last": ft[max(ft)]}
  print(json.dumps(summary))
  with open(f"{a.workdir}/{NAME}.json", "w") as f:
    json.dump({"summary": summary, "bf16": {"train": bt, "eval": be},
               "fp8": {"train": ft, "eval": fe}}, f)
  plot(curves, steps, gaps, a.workdir)
  return 0


def plot(curves, steps, gaps, workdir):
  try:
    import matplotlib
  except ImportError:
    print("matplotlib missing: plot skipped (run --plot_only where it is installed)")
    return
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
  for name, (t, e), col in (("bf16", curves["bf16"], "C0"), ("fp8", curves["fp8"], "C3")):
    ax.plot(sorted(t), [t[s] for s in sorted(t)], col, alpha=0.5, label=f"{name} train")
    ax.plot(sorted(e), [e[s] for s in sorted(e)], col, marker="o", ms=3, label=f"{name} eval")
  ax.set_xlabel("step"), ax.set_ylabel("loss (nats/byte)"), ax.set_ylim(top=3.0), ax.legend()
  bx.plot(steps, [100 * gaps[s] for s in steps], "k.-")
  bx.axhline(1, color="r", ls=":"), bx.axhline(-1, color="r", ls=":")
  bx.set_xlabel("step"), bx.set_ylabel("fp8 - bf16 eval loss (%)")
  fig.suptitle(f"{TITLE}, 12L x 768, byte tokens, 1024 per sequence")
  fig.tight_layout()
  fig.savefig(f"{workdir}/{NAME}.png", dpi=110)


if __name__ == "__main__":
  sys.exit(main())
