"""gs:// workdirs end to end, against a GCS emulator on 127.0.0.1 (nothing leaves the
machine): `growjax train --workdir gs://...` writes checkpoints, TensorBoard event files
and metrics.jsonl to the bucket, and a second invocation resumes from the gs://
checkpoint with the losses of an uninterrupted local run; `resolve`, `read_meta`,
`latest_complete_step`, MetricWriter and the `init_from` check work on gs:// as on
local paths, and local relative paths still resolve as before.

How each client reaches the emulator (gcp-storage-emulator, run in-process here):
gcsfs (etils.epath's gs:// backend without TensorFlow) and google-cloud-storage
(orbax's bucket checks when it deletes old checkpoints) through STORAGE_EMULATOR_HOST,
with anonymous credentials; tensorstore (orbax's array data) through
TENSORSTORE_GCS_HTTP_URL, with GOOGLE_AUTH_TOKEN_FOR_TESTING as a fixed bearer token so
it never looks for credentials.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from http import HTTPStatus

# gcsfs reads this when first imported: off, it does not ask the storage-control gRPC API
# (which the emulator does not serve; each try waits out a 60 s timeout) for bucket types.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
import gcsfs  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from etils import epath  # noqa: E402
from gcp_storage_emulator import server as emulator_server  # noqa: E402
from gcp_storage_emulator.handlers import objects as emulator_objects  # noqa: E402

from growjax import checkpoint as ckpt_lib  # noqa: E402
from growjax import config as config_lib  # noqa: E402
from growjax.train import metrics as metrics_lib  # noqa: E402
from growjax import train  # noqa: E402
from tiny import free_port, tiny_base  # noqa: E402

BUCKET = "growjax-test"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_generation_headers(download):
  """The emulator's media download leaves out `x-goog-generation`, which tensorstore reads
  (OCDBT manifests are read back while a checkpoint is written); real GCS sends it."""
  def wrapped(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = obj["generation"]
      response["x-goog-metageneration"] = obj["metageneration"]
  return wrapped


@pytest.fixture(scope="module")
def gcs():
  """A bucket on an in-process emulator; the env that points clients at it is set in this
  process and returned for subprocesses."""
  assert gcsfs.GCSFileSystem is gcsfs.core.GCSFileSystem, (
      "gcsfs was imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set")
  url = f"http://127.0.0.1:{free_port()}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "NO_GCE_CHECK": "true",
         "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  with pytest.MonkeyPatch.context() as mp:
    download = emulator_objects.download
    patched = _with_generation_headers(download)
    mp.setattr(emulator_objects, "download", patched)
    for _, handlers in emulator_server.HANDLERS:
      for method, fn in list(handlers.items()):
        if fn is download:
          mp.setitem(handlers, method, patched)
    for k, v in env.items():
      mp.setenv(k, v)
    mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # FSSPEC_GCS_TOKEN, read late
    host, port = url.removeprefix("http://").split(":")
    server = emulator_server.create_server(host, int(port), in_memory=True,
                                           default_bucket=BUCKET)
    server.start()
    try:
      yield env
    finally:
      server.stop()


def _objects(prefix: str) -> list[str]:
  """Object names under gs://BUCKET/prefix, listed by a fresh client (no cached listing)."""
  fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
  return sorted(p.removeprefix(f"{BUCKET}/{prefix}/") for p in fs.find(f"{BUCKET}/{prefix}"))


def _state(x: float):
  return {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3) * x, "step": jnp.int32(x)}


def _save(directory: str, steps) -> None:
  ck = ckpt_lib.Checkpoints(directory, use_async=False)
  for s in steps:
    ck.save(s, _state(s), {"pos": s}, {"model": {"layers": 2}, "step": s}, force=True)
  ck.wait()
  ck.close()


def test_checkpoint_paths_on_gcs(gcs):
  root = f"gs://{BUCKET}/unit"
  ck = ckpt_lib.Checkpoints(f"{root}/checkpoints/", use_async=False)
  assert ck.directory == f"{root}/checkpoints"         # kept as a gs:// str, not ./gs:/...
  ck.close()
  _save(f"{root}/checkpoints", (2, 4))
  assert "4/commit_success.txt" in _objects("unit/checkpoints")

  assert ckpt_lib.latest_complete_step(root) == 4
  assert ckpt_lib.latest_complete_step(f"{root}/checkpoints") == 4
  assert ckpt_lib.latest_complete_step(f"gs://{BUCKET}/nothing") is None
  assert ckpt_lib.resolve(root) == (f"{root}/checkpoints", 4)
  assert ckpt_lib.resolve(f"{root}/checkpoints/", step=2) == (f"{root}/checkpoints", 2)
  assert ckpt_lib.resolve(f"{root}/checkpoints/2") == (f"{root}/checkpoints", 2)
  assert ckpt_lib.read_meta(f"{root}/checkpoints", 4) == {"model": {"layers": 2}, "step": 4}
  with pytest.raises(ValueError, match="does not exist"):
    ckpt_lib.resolve(f"gs://{BUCKET}/nothing")

  # A save cut off on GCS: data written in place, but no commit_success.txt.
  (epath.Path(root) / "checkpoints" / "6" / "state" / "manifest.ocdbt").write_text("partial")
  assert ckpt_lib.latest_complete_step(root) == 4
  with pytest.raises(ValueError, match="incomplete"):
    ckpt_lib.resolve(f"{root}/checkpoints/6")
  with pytest.raises(ValueError, match="no step 6"):
    ckpt_lib.resolve(root, step=6)

  ck = ckpt_lib.Checkpoints(f"{root}/checkpoints", use_async=False)
  state, data, meta = ck.restore(4, _state(0))
  ck.close()
  np.testing.assert_array_equal(state["w"], _state(4)["w"])
  assert data == {"pos": 4} and meta["step"] == 4


def test_local_relative_paths_resolve_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ck = ckpt_lib.Checkpoints("run/checkpoints", use_async=False)
  assert ck.directory == str(tmp_path / "run" / "checkpoints")
  ck.close()
  _save("run/checkpoints", (3,))
  (tmp_path / "run" / "checkpoints" / "5.orbax-checkpoint-tmp-1" / "state").mkdir(parents=True)
  expected = (str(tmp_path / "run" / "checkpoints"), 3)
  assert ckpt_lib.resolve("run") == expected
  assert ckpt_lib.resolve("run/checkpoints/") == expected
  assert ckpt_lib.resolve("run/checkpoints/3") == expected
  monkeypatch.setenv("HOME", str(tmp_path))
  assert ckpt_lib.resolve("~/run") == expected
  assert ckpt_lib.latest_complete_step("run") == 3
  assert ckpt_lib.latest_complete_step("missing") is None
  assert ckpt_lib.read_meta("run/checkpoints", 3)["step"] == 3


def test_metric_writer_on_gcs(gcs, tmp_path):
  for root, prefix in ((f"gs://{BUCKET}/mw", "mw"), (str(tmp_path / "mw"), None)):
    steps = lambda: [json.loads(l)["step"] for l in
                     (epath.Path(root) / "metrics.jsonl").read_text().splitlines()]
    for step in (1, 2):                                 # the second: a resumed run
      w = metrics_lib.MetricWriter(root, tensorboard=True)
      w.scalars(step, {"loss": 2.0 / step, "mfu": None})
      w.close()
    assert steps() == [1, 2]
    w = metrics_lib.MetricWriter(root, tensorboard=False, flush_secs=0)
    w.scalars(3, {"loss": 0.5})
    assert steps() == [1, 2, 3]                         # flushed before close
    w.close()
    if prefix:
      names = _objects(prefix)
      assert "metrics.jsonl" in names
      assert any(n.startswith("tb/events.out.tfevents.") for n in names)


def _tiny(**overrides):
  c = tiny_base()
  c.mesh.fsdp = 1
  for k, v in overrides.items():
    setattr(c.train, k, v)
  return c


def test_init_from_check_on_gcs(gcs, data_dir):
  (epath.Path(f"gs://{BUCKET}/grown") / "1" / "state" / "x").write_text("x")
  config_lib.validate(_tiny(init_from=f"gs://{BUCKET}/grown"), 1)
  with pytest.raises(ValueError, match="init_from"):
    config_lib.validate(_tiny(init_from=f"gs://{BUCKET}/no-such-run"), 1)


# `growjax train` overrides on configs/tiny.py: a 2-layer model, 2 checkpoints per 4
# steps, a decay horizon fixed at 8 so a 4-step run continued to 8 matches an 8-step run.
OVERRIDES = {"model.num_layers": 2, "data.seq_len": 32, "train.global_batch_size": 8,
             "train.log_every": 1, "train.eval_every": 0, "train.eval_batches": 1,
             "train.checkpoint_every": 2, "metrics.tensorboard": True,
             "optimizer.warmup_steps": 2, "optimizer.decay_steps": 8}


def _cli_train(env: dict, workdir: str, steps: int) -> str:
  argv = [sys.executable, "-m", "growjax", "train",
          f"--config={os.path.join(REPO, 'configs', 'tiny.py')}", f"--workdir={workdir}",
          f"--config.train.steps={steps}"]
  argv += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     os.environ.get("XLA_FLAGS", ""))   # the session's others (conftest.py)
  full_env = dict(os.environ, **env, JAX_PLATFORMS="cpu",
                  XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count=1")
  full_env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
  out = subprocess.run(argv, env=full_env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout


def _reference_losses(workdir: str, steps: int) -> dict[int, float]:
  """The same run, uninterrupted, on a local workdir, in this process on one device."""
  spec = importlib.util.spec_from_file_location("tiny_cfg", os.path.join(REPO, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  for key, value in {**OVERRIDES, "train.steps": steps}.items():
    section, name = key.split(".")
    setattr(cfg[section], name, value)
  return train.train(cfg, workdir, devices=jax.devices()[:1])["loss"]


def test_train_on_gcs_writes_and_resumes(gcs, data_dir, tmp_path):
  t0 = time.perf_counter()
  workdir = f"gs://{BUCKET}/run"
  first = _cli_train(gcs, workdir, steps=4)
  assert "resumed" not in first
  names = _objects("run")
  for step in (2, 4):
    assert f"checkpoints/{step}/commit_success.txt" in names
    assert f"checkpoints/{step}/state/manifest.ocdbt" in names   # tensorstore's array data
    assert f"checkpoints/{step}/meta/metadata" in names
  assert any(n.startswith("tb/events.out.tfevents.") for n in names)
  jsonl = epath.Path(workdir) / "metrics.jsonl"
  assert [json.loads(l)["step"] for l in jsonl.read_text().splitlines()] == [1, 2, 3, 4]

  second = _cli_train(gcs, workdir, steps=8)
  assert f"resumed from {workdir}/checkpoints/4" in second
  assert "steps 4->8" in second
  assert ckpt_lib.latest_complete_step(workdir) == 8
  losses = {}
  for line in jsonl.read_text().splitlines():   # a step's last line wins
    losses[json.loads(line)["step"]] = json.loads(line)["loss"]
  assert sorted(losses) == list(range(1, 9))
  names = _objects("run")
  assert sum(n.startswith("tb/events.out.tfevents.") for n in names) == 2
  assert {n.split("/")[1] for n in names if n.startswith("checkpoints/")} == {"4", "6", "8"}

  reference = _reference_losses(str(tmp_path / "local"), steps=8)
  np.testing.assert_allclose([losses[s] for s in range(1, 9)],
                             [reference[s] for s in range(1, 9)], rtol=1e-6)
  print(f"gs:// train + resume + local reference: {time.perf_counter() - t0:.1f}s")
