"""The tiny configs and the helpers that several test files share (issue 27): one place
for the small model every test trains, and for driving `python -m growjax` the way users
run it. A plain module on sys.path (`from tiny import tiny_config`), as tests/ is for the
test files and, through `subprocess_env`, for the `python -m growjax` processes they start
(config files those processes load may import it too)."""

import json
import os
import socket

import numpy as np

from growjax import config as config_lib
from growjax.growth import stages
from growjax import train

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# --- configs ---------------------------------------------------------------------------

def tiny_base(num_layers=2):
  """configs/tiny.py's model in float32 with `num_layers` layers, 32-token windows and
  batches of 8; every other field as base_config("tiny") has it."""
  c = config_lib.base_config("tiny")
  c.model.dtype = "float32"
  c.model.num_layers = num_layers
  c.data.seq_len = 32
  c.train.global_batch_size = 8
  return c


def tiny_config(**mesh):
  """A 2-layer run of 8 steps: a log line each step, eval and a synchronous checkpoint
  every 4, on a data=fsdp=tensor=1 mesh unless `mesh` says otherwise."""
  c = tiny_base()
  c.train.steps = 8
  c.train.log_every = 1
  c.train.eval_every = 4
  c.train.eval_batches = 1
  c.train.checkpoint_every = 4
  c.train.async_checkpointing = False
  c.metrics.tensorboard = False
  c.optimizer.warmup_steps = 2
  c.optimizer.peak_lr = 1e-3
  shape = dict(data=1, fsdp=1, tensor=1)
  shape.update(mesh)
  for k, v in shape.items():
    c.mesh[k] = v
  return c


def console_config():
  """tiny_config on all 8 devices (the console entry point takes every device)."""
  return tiny_config(fsdp=-1)


def grow_config(method="stack"):
  """A grow run: 2 layers for 4 steps on a 4 x 2 mesh, grown by `method` to 4 layers
  trained to step 10 on 2 x 4."""
  c = tiny_base(num_layers=4)
  c.train.steps = 10
  c.train.log_every = 1
  c.train.eval_every = 0
  c.train.eval_batches = 1
  c.train.checkpoint_every = 2
  c.train.async_checkpointing = False
  c.metrics.tensorboard = False
  c.optimizer.warmup_steps = 2
  c.optimizer.peak_lr = 1e-3
  c.mesh.data, c.mesh.fsdp = 2, -1           # large stage: 2 x 4 on 8 devices
  c.growth.enabled = True
  c.growth.small_model = config_lib.model_config("tiny", dtype="float32", num_layers=2)
  c.growth.small_steps = 4
  c.growth.small_mesh.fsdp = -1              # small stage: its own mesh, 4 x 2
  c.growth.small_mesh.data = 4
  c.growth.method = method
  return c


def train_small_stage(workdir):
  """The small stage of `grow_config` trained one step into `workdir`; its config."""
  small_cfg = stages.small_stage_config(grow_config())
  small_cfg.train.steps = 1
  train.train(small_cfg, str(workdir))
  return small_cfg


# --- batches ---------------------------------------------------------------------------

def random_batches(n, b=8, t=32, vocab=259):
  """`n` batches of uniform random tokens (the same ones every call)."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    x = rng.integers(0, vocab, (b, t + 1), dtype=np.int32)
    out.append({"inputs": x[:, :-1], "targets": x[:, 1:]})
  return out


# --- `python -m growjax` in a subprocess -----------------------------------------------

CONSOLE_CONFIG = """from tiny import console_config
def get_config(arg=None):
  c = console_config()
  c.train.update({updates})
  return c
"""


def subprocess_env(data_dir):
  """The environment of a `python -m growjax` subprocess: this session's data dir,
  unbuffered output, and tests/ on PYTHONPATH for the config files tests write."""
  return dict(os.environ, GROWJAX_DATA_DIR=data_dir, PYTHONUNBUFFERED="1",
              PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))


def write_console_config(tmp_path, name, **updates):
  """A config file TMP_PATH/NAME.py: console_config with `updates` to its train fields."""
  path = tmp_path / f"{name}.py"
  path.write_text(CONSOLE_CONFIG.format(updates=updates))
  return str(path)


def logged_losses(workdir):
  """{step: loss} from WORKDIR/metrics.jsonl; a step logged again (a resume) keeps its
  last record."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        out[record["step"]] = record["loss"]
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- checkpoints -----------------------------------------------------------------------

def damage_checkpoint(step_dir, kind):
  """Damages checkpoint STEP_DIR one way (`kind`); returns the file damaged."""
  data = step_dir / "state" / "ocdbt.process_0" / "d"
  biggest = max(data.iterdir(), key=lambda p: p.stat().st_size)
  if kind == "truncated_array":
    with open(biggest, "r+b") as f:
      f.truncate(biggest.stat().st_size // 2)
    return biggest
  if kind == "empty_array":
    open(biggest, "w").close()
    return biggest
  if kind == "missing_array":
    biggest.unlink()
    return biggest
  if kind == "truncated_data":
    f = step_dir / "data" / "metadata"
    f.write_text(f.read_text()[:5])
    return f
  raise ValueError(kind)
