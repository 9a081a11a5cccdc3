"""Reading prepared datasets: batch packing (segment ids, positions, loss mask) exact on
hand-made windows; start-up reading index.json only; two processes (8 fake devices)
reading disjoint rows whose union is the global batch; resume across a process-count
change; gs:// through the local GCS emulator; damaged shards and a missing index through
`growjax train`."""

import os

# Before gcsfs is first imported (tests/test_gcs.py's emulator fixture needs it off).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import numpy as np
import pytest

from growjax.data import packing

BOS, EOS, PAD = 1, 2, 0


def test_segments_positions_and_loss_mask_on_hand_made_windows():
  windows = np.array([
      [5, 6, EOS, BOS, 7, 8, EOS, BOS, 9],        # continues a document, then two start
      [BOS, 5, EOS, BOS, 6, EOS, PAD, PAD, PAD],  # padded tail
      [BOS, 3, 4, 5, 6, 7, 8, 9, 10],             # one document filling the window
  ], dtype=np.uint16)
  b = packing.batch_from_windows(windows, bos_id=BOS, pad_id=PAD, eos_id=EOS)
  assert set(b) == set(packing.BATCH_KEYS)
  assert all(v.dtype == np.int32 and v.shape == (3, 8) for v in b.values())
  np.testing.assert_array_equal(b["inputs"], windows[:, :-1])
  np.testing.assert_array_equal(b["targets"], windows[:, 1:])
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 3],
                                                   [1, 1, 1, 2, 2, 2, 0, 0],
                                                   [1, 1, 1, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 0, 1, 2, 3, 0],
                                                 [0, 1, 2, 0, 1, 2, 0, 0],
                                                 [0, 1, 2, 3, 4, 5, 6, 7]])
  np.testing.assert_array_equal(b["loss_mask"], [[1] * 8,
                                                 [1, 1, 1, 1, 1, 0, 0, 0],
                                                 [1] * 8])


@pytest.mark.parametrize("pad_id", [EOS, -1, None])
def test_a_pad_id_that_is_eos_or_absent_marks_no_padding(pad_id):
  windows = np.array([[BOS, 5, EOS, EOS, BOS, 6, EOS]])
  b = packing.batch_from_windows(windows, bos_id=BOS, pad_id=pad_id, eos_id=EOS)
  np.testing.assert_array_equal(b["segment_ids"], [[1, 1, 1, 1, 2, 2]])
  np.testing.assert_array_equal(b["positions"], [[0, 1, 2, 3, 0, 1]])
  np.testing.assert_array_equal(b["loss_mask"], [[1] * 6])


# ------------------------------------------------------------------ prepared datasets

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from growjax import cli  # noqa: E402
from growjax import data  # noqa: E402
from growjax.data import reader  # noqa: E402
from prepared_data import all_windows, tagged_docs, write_prepared  # noqa: E402
from test_gcs import BUCKET, gcs  # noqa: E402,F401  (the emulator fixture)

SEQ = 16
TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A dataset of 5 shards (10 windows each, the last 1) and a validation split."""
  d = str(tmp_path_factory.mktemp("prepared"))
  write_prepared(d, {"train": tagged_docs(10, 30, 20), "validation": tagged_docs(10, 6, 20)},
                 SEQ, shard_windows=10)
  return d


def cfg_for(directory, seq_len=SEQ):
  c = data.default_data_config()
  c.prepared_dir, c.seq_len = directory, seq_len
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def windows_of(batch):
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def fake_process_rows(sharding, global_batch, devices):
  """`sharding.process_rows` as a process holding `devices` would compute it."""
  rows = set()
  for d, index in sharding.devices_indices_map((global_batch, 1)).items():
    if d in devices:
      rows.update(range(*index[0].indices(global_batch)))
  return np.array(sorted(rows))


def two_process_rows(global_batch):
  """8 fake CPU devices as two 'processes' (devices 0-3, 4-7), the mesh interleaving
  them along fsdp so each process holds non-contiguous rows."""
  devs = jax.devices()[:8]
  order = [devs[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]
  mesh = Mesh(np.array(order).reshape(1, 8, 1), ("data", "fsdp", "tensor"))
  sh = NamedSharding(mesh, P(("data", "fsdp")))
  return [fake_process_rows(sh, global_batch, set(devs[:4])),
          fake_process_rows(sh, global_batch, set(devs[4:]))]


def test_start_up_reads_only_the_index(tmp_path):
  """An index listing 100,000 shards that do not exist opens instantly: nothing but
  index.json is read until a window is."""
  shards = [{"file": f"train-{i:05d}.array_record", "windows": 1000} for i in range(100_000)]
  index = {"format": reader.FORMAT, "seq_len": SEQ, "dtype": "uint16",
           "tokenizer": {"identity": "byte", "vocab_size": 259, "bos_id": 1},
           "splits": {"train": {"windows": 10**8, "shards": shards}}}
  (tmp_path / "index.json").write_text(json.dumps(index))
  src = data.open_datasets(cfg_for(str(tmp_path)))[0].source("train")
  assert len(src) == 10**8 and src.locate(12_345_678) == (12_345, 678)
  with pytest.raises(ValueError, match=r"train-12345.array_record is missing.*prepare-data"):
    src[12_345_678]


def test_window_ids_map_across_shards(prepared):
  src = data.open_datasets(cfg_for(prepared))[0].source("train")
  stored = all_windows(prepared, "train", SEQ)
  assert len(src) == len(stored) == 41 and src.locate(25) == (2, 5)
  got = np.stack([np.frombuffer(r, np.uint16) for r in src.__getitems__([40, 0, 25, 9, 10])])
  np.testing.assert_array_equal(got, stored[[40, 0, 25, 9, 10]])


def test_two_processes_read_disjoint_rows_whose_union_is_the_global_batch(prepared):
  cfg = cfg_for(prepared)
  rows = two_process_rows(8)
  assert rows[0].tolist() == [0, 2, 4, 6] and rows[1].tolist() == [1, 3, 5, 7]
  whole = take(data.train_iterator(cfg, global_batch_size=8, seed=5), 6)
  parts = [take(data.train_iterator(cfg, global_batch_size=8, seed=5, rows=r), 6)
           for r in rows]
  stored = {w.tobytes() for w in all_windows(prepared, "train", SEQ)}
  for step in range(6):
    for r, part in zip(rows, parts):
      for k in data.BATCH_KEYS:
        np.testing.assert_array_equal(part[step][k], whole[step][k][r])
    # The global batch is 8 distinct stored windows (an epoch is a permutation).
    batch = [w.tobytes() for w in windows_of(whole[step])]
    assert len(set(batch)) == 8 and set(batch) <= stored


def test_reads_only_the_shards_of_its_own_rows(prepared):
  """Each process opens only shards that its rows' windows live in."""
  cfg = cfg_for(prepared)
  rows = two_process_rows(8)[0]
  it = data.train_iterator(cfg, global_batch_size=8, seed=1, rows=rows)
  src = it._gather.sources[0]
  ids = np.array([it._ids[i][1] for i in range(8)])
  opened = {i for i, r in enumerate(src._readers) if r is not None}
  assert opened == {src.locate(int(g))[0] for g in ids[rows]}


def test_resume_equals_an_uninterrupted_run_across_a_process_count_change(prepared):
  """One process for 3 steps, then two processes from the saved state: the union of their
  rows is the uninterrupted run's batches, step for step (through an epoch boundary)."""
  cfg = cfg_for(prepared)
  straight = take(data.train_iterator(cfg, global_batch_size=8, seed=2), 9)
  one = data.train_iterator(cfg, global_batch_size=8, seed=2)
  take(one, 3)
  state = json.loads(json.dumps(one.get_state()))
  rows = two_process_rows(8)
  resumed = []
  for r in rows:
    it = data.train_iterator(cfg, global_batch_size=8, seed=2, rows=r)
    it.set_state(state)
    resumed.append(take(it, 6))
  for step in range(6):
    joined = np.zeros((8, SEQ + 1), np.int32)
    for r, part in zip(rows, resumed):
      joined[r] = windows_of(part[step])
    np.testing.assert_array_equal(joined, windows_of(straight[3 + step]))


def test_worker_processes_give_the_same_batches(prepared):
  cfg = cfg_for(prepared)
  plain = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3)
  cfg.num_workers = 2
  workers = take(data.train_iterator(cfg, global_batch_size=8, seed=0), 3)
  for a, b in zip(plain, workers):
    for k in data.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def test_index_checked_against_config_and_model(prepared):
  with pytest.raises(ValueError, match=r"prepared with seq_len=16, but "
                                       r"config.data.seq_len=32 — set config.data.seq_len=16"):
    data.open_datasets(cfg_for(prepared, seq_len=32))
  with pytest.raises(ValueError, match=r"config.model.vocab_size=200 is smaller than the "
                                       r"tokenizer's vocabulary \(259.*index.json"):
    data.check_against_model(cfg_for(prepared), 200)
  data.check_against_model(cfg_for(prepared), 259)


def run_train(monkeypatch, capsys, workdir, *overrides):
  monkeypatch.setattr(sys, "argv", ["growjax", "train", f"--config={TINY}",
                                    f"--workdir={workdir}", *overrides])
  code = cli.main()
  return code, capsys.readouterr().err



def test_missing_index_through_growjax_train(tmp_path, monkeypatch, capsys):
  empty = tmp_path / "not_prepared"
  empty.mkdir()
  code, err = run_train(monkeypatch, capsys, tmp_path / "w",
                        f"--config.data.prepared_dir={empty}", "--config.data.seq_len=16")
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, err
  assert lines[0].startswith(f"growjax train: config.data.prepared_dir='{empty}' has no "
                             f"index.json") and "growjax prepare-data" in lines[0]
  assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(
      tmp_path / "w" / "checkpoints")


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_damaged_shard_through_growjax_train(tmp_path, monkeypatch, capsys, damage):
  """Every train shard damaged the same way: the first batch (read when the data is
  opened, before any step) names the shard and the fix."""
  d = tmp_path / "ds"
  write_prepared(str(d), {"train": tagged_docs(10, 30, 20), "validation": tagged_docs(10, 6, 20)},
                 SEQ, shard_windows=10)
  for shard in sorted(d.glob("train-*.array_record")):
    if damage == "corrupt":
      shard.write_bytes(os.urandom(shard.stat().st_size))
    elif damage == "truncate":
      shard.write_bytes(shard.read_bytes()[:40])
    else:
      shard.unlink()
  code, err = run_train(monkeypatch, capsys, tmp_path / "w", f"--config.data.prepared_dir={d}",
                        "--config.data.seq_len=16", "--config.train.eval_every=0")
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1, err
  assert lines[0].startswith(f"growjax train: prepared shard {d}/train-0000"), lines[0]
  assert "prepare-data" in lines[0]
  assert ("is missing" if damage == "delete" else "delete it and rerun") in lines[0]
  assert not (tmp_path / "w" / "metrics.jsonl").exists() or "step" not in (
      tmp_path / "w" / "metrics.jsonl").read_text()


def test_reads_gs_through_the_emulator(prepared, gcs, monkeypatch):
  """The same batches from a gs:// copy as from the local dataset (ArrayRecord's own GCS
  client reads the shards; epath reads index.json)."""
  from etils import epath
  monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", gcs["STORAGE_EMULATOR_HOST"])
  remote = f"gs://{BUCKET}/prepared/ds"
  for f in os.listdir(prepared):
    (epath.Path(remote) / f).write_bytes((epath.Path(prepared) / f).read_bytes())
  local = take(data.train_iterator(cfg_for(prepared), global_batch_size=8, seed=0), 3)
  rows = two_process_rows(8)[1]
  it = data.train_iterator(cfg_for(remote), global_batch_size=8, seed=0, rows=rows)
  for want, got in zip(local, take(it, 3)):
    for k in data.BATCH_KEYS:
      np.testing.assert_array_equal(got[k], want[k][rows])
  ev = data.eval_batches(cfg_for(remote), global_batch_size=8, num_batches=1)
  np.testing.assert_array_equal(ev[0]["inputs"], all_windows(prepared, "validation",
                                                             SEQ)[:8, :-1])
  with pytest.raises(ValueError, match=f"config.data.prepared_dir='gs://{BUCKET}/nothing' "
                                       f"has no index.json"):
    data.open_datasets(cfg_for(f"gs://{BUCKET}/nothing"))
