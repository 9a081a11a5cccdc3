"""`growjax eval`: a checkpoint evaluated as papers report it — held-out perplexity
(per token, and bits per byte) on the configured dataset's validation windows, and
zero-shot multiple-choice accuracy by log-likelihood on local JSONL tasks.

Task files hold one object per line, `{"context": str, "choices": [str, ...], "gold":
int}` (`growjax convert-mc` writes them from HellaSwag's, ARC's, PIQA's and Winogrande's
public files), with an optional `"contexts"`, one per choice, where each choice has a
context of its own (Winogrande's partial scoring). Each choice is scored as
lm-evaluation-harness 0.4 does: the sum of the log-probabilities of the continuation's
tokens after the context (`whole = encode(context + choice)`, the continuation being
what follows `encode(context)`, all trailing whitespace of the context moved to the
continuation first); `acc` takes the best sum, `acc_norm` the best sum divided by the
choice's length in characters (lm-evaluation-harness's `len(choice)`; `acc_bytes`
divides by UTF-8 bytes). Scoring is batched, rows sharded over the mesh's data axes;
the lm-evaluation-harness adapter (`growjax.interop.lm_eval_adapter`) calls the same
scorer. This module does not generate text (`growjax.interop.sample`) or train.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from growjax.train import mask_ramp
from growjax.interop import params_io
from growjax import sharding
from growjax.model import ModelConfig, Transformer, head_kernel

LENGTH_BUCKET = 32   # padded lengths are multiples of this: few compilations


class Progress:
  """One progress line, rewritten in place on a terminal, every ~10% otherwise."""

  def __init__(self, what: str, total: int, stream=None):
    self.what, self.total, self.done = what, max(total, 1), 0
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.t0 = time.perf_counter()
    self.next_report = 0

  def add(self, n: int) -> None:
    if jax.process_index() != 0:
      return
    self.done += n
    if not self.tty and self.done < self.total and self.done < self.next_report:
      return
    self.next_report = self.done + self.total // 10
    rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
    end = "\r" if self.tty and self.done < self.total else "\n"
    print(f"{self.what}: {self.done}/{self.total} ({rate:.1f}/s)", end=end,
          file=self.stream, flush=True)


# -------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class Scorer:
  """Log-likelihoods of continuations under one model's params, batched on a mesh."""
  model_cfg: ModelConfig
  params: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  batch_size: int = 16
  max_len: int = 2048

  def __post_init__(self):
    self.row_sharding = sharding.batch_sharding(self.mesh, self.rules)
    axes = self.row_sharding.spec[0] or ()
    dp = 1
    for axis in ((axes,) if isinstance(axes, str) else axes):
      dp *= self.mesh.shape[axis]
    # Rows are split over the data axes: a whole number of rows per shard.
    self.batch_size = max(dp, -(-self.batch_size // dp) * dp)
    cfg = self.model_cfg.for_inference()

    def score(params, tokens_BxT, targets_BxT, mask_BxT):
      with sharding.activation_sharding(self.mesh, self.rules):
        hidden = Transformer(cfg).apply({"params": params}, tokens_BxT, return_hidden=True)
      logits = jnp.einsum("bte,ev->btv", hidden, head_kernel(params, cfg).astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
      logp = jax.nn.log_softmax(logits, axis=-1)
      tok_logp = jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
      greedy = jnp.argmax(logits, axis=-1) == targets_BxT
      total = jnp.sum(jnp.where(mask_BxT, tok_logp, 0.0), axis=-1)
      all_greedy = jnp.all(greedy | ~mask_BxT, axis=-1)
      return total, all_greedy

    self._score = jax.jit(score)

  def _global(self, x: np.ndarray) -> jax.Array:
    return jax.make_array_from_callback(x.shape, self.row_sharding, lambda i: x[i])

  def loglikelihoods(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                     progress: Progress | None = None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding gives the
    continuation) for each (context ids, continuation ids); the sequence is cut from
    the left to `max_len` + 1 tokens as lm-evaluation-harness does."""
    rows = []
    for ctx, cont in pairs:
      if not cont:
        raise ValueError("a continuation encodes to no token — give non-empty choices")
      seq = (list(ctx) + list(cont))[-(self.max_len + 1):]
      rows.append((seq, min(len(cont), len(seq) - 1)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths
    out: list[Any] = [None] * len(rows)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      width = max(len(rows[i][0]) - 1 for i in chunk)
      width = min(-(-width // LENGTH_BUCKET) * LENGTH_BUCKET, self.max_len)
      tokens = np.zeros((self.batch_size, width), np.int32)
      targets = np.zeros((self.batch_size, width), np.int32)
      mask = np.zeros((self.batch_size, width), bool)
      for r, i in enumerate(chunk):
        seq, n_cont = rows[i]
        n = len(seq) - 1
        tokens[r, :n], targets[r, :n] = seq[:-1], seq[1:]
        mask[r, n - n_cont:n] = True
      with jax.set_mesh(self.mesh):
        total, greedy = self._score(self.params, self._global(tokens), self._global(targets),
                                    self._global(mask))
      total, greedy = _replicated_host(total), _replicated_host(greedy)
      for r, i in enumerate(chunk):
        out[i] = (float(total[r]), bool(greedy[r]))
      if progress:
        progress.add(len(chunk))
    return out


def _replicated_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def encode_pair(tokenizer, context: str, continuation: str, bos: bool = True
                ) -> tuple[list[int], list[int]]:
  """lm-evaluation-harness 0.4's split (`TemplateLM._encode_pair`, causal): all trailing
  whitespace of the context (spaces, tabs, newlines) moves to the continuation, and the
  continuation is `encode(context + continuation)[len(encode(context)):]` — taken by
  position even where a merge crosses the boundary, as lm-eval does, so scores agree
  choice by choice. BOS, when the tokenizer has one, starts the context."""
  n_space = len(context) - len(context.rstrip())
  if n_space:
    context, continuation = context[:-n_space], context[-n_space:] + continuation
  ctx = [int(i) for i in tokenizer.encode(context)]
  whole = [int(i) for i in tokenizer.encode(context + continuation)]
  cont = whole[len(ctx):]
  bos_id = getattr(tokenizer, "bos_id", -1)
  if bos and bos_id is not None and bos_id >= 0 and (not ctx or ctx[0] != bos_id):
    ctx = [bos_id] + ctx
  return ctx, cont


# ----------------------------------------------------------------------------- tasks


def read_task(path: str) -> list[dict]:
  """A JSONL task file -> its examples; a bad line is an error naming the file and line."""
  if not os.path.isfile(path):
    raise ValueError(f"--tasks: {path} does not exist — give JSONL files of "
                     f'{{"context", "choices", "gold"}} objects')
  examples = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        ex = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{where}: not JSON ({e}) — one JSON object per line") from None
      if not isinstance(ex, dict) or not {"context", "choices", "gold"} <= set(ex):
        raise ValueError(f"{where}: needs the keys context, choices, gold — e.g. "
                         f'{{"context": "The sky is", "choices": [" blue", " green"], '
                         f'"gold": 0}}')
      choices = ex["choices"]
      if (not isinstance(choices, list) or len(choices) < 2
          or not all(isinstance(c, str) and c for c in choices)):
        raise ValueError(f"{where}: choices must be a list of at least 2 non-empty strings")
      contexts = ex.get("contexts")
      if contexts is not None and (not isinstance(contexts, list) or len(contexts) != len(
          choices) or not all(isinstance(c, str) for c in contexts)):
        raise ValueError(f"{where}: contexts must be a list of strings, one per choice")
      if not isinstance(ex["gold"], int) or not 0 <= ex["gold"] < len(choices):
        raise ValueError(f"{where}: gold={ex['gold']!r} is not an index into its "
                         f"{len(choices)} choices")
      examples.append(ex)
  if not examples:
    raise ValueError(f"--tasks: {path} holds no example")
  return examples


def multiple_choice(scorer: Scorer, tokenizer, examples: Sequence[dict], name: str = "task"
                    ) -> dict:
  """acc and acc_norm (with their standard errors) of `examples`, zero-shot."""
  pairs, owners = [], []
  for k, ex in enumerate(examples):
    contexts = ex.get("contexts") or [ex["context"]] * len(ex["choices"])
    for context, choice in zip(contexts, ex["choices"]):
      pairs.append(encode_pair(tokenizer, context, choice))
      owners.append(k)
  scores = scorer.loglikelihoods(pairs, Progress(f"{name}: choices scored", len(pairs)))
  correct = correct_norm = correct_bytes = 0
  predictions = []
  at = 0
  for ex in examples:
    n = len(ex["choices"])
    lls = np.array([s for s, _ in scores[at:at + n]])
    at += n
    chars = np.array([len(c) for c in ex["choices"]], np.float64)
    utf8 = np.array([len(c.encode("utf-8")) for c in ex["choices"]], np.float64)
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / chars))
    pred_bytes = int(np.argmax(lls / utf8))
    correct += pred == ex["gold"]
    correct_norm += pred_norm == ex["gold"]
    correct_bytes += pred_bytes == ex["gold"]
    predictions.append({"pred": pred, "pred_norm": pred_norm, "pred_bytes": pred_bytes,
                        "loglik": lls.tolist()})
  n = len(examples)
  acc, acc_norm = correct / n, correct_norm / n
  return {"examples": n, "acc": acc, "acc_stderr": math.sqrt(acc * (1 - acc) / max(n - 1, 1)),
          "acc_norm": acc_norm,
          "acc_norm_stderr": math.sqrt(acc_norm * (1 - acc_norm) / max(n - 1, 1)),
          "acc_bytes": correct_bytes / n, "predictions": predictions}


# ------------------------------------------------------------------------ perplexity


def perplexity(cfg: ml_collections.ConfigDict, setup, params, tokenizer, batches: int) -> dict:
  """Mean next-token loss over the validation windows (the trainer's eval step, the
  loss mask counted), perplexity, and bits per byte: total nats / ln 2 / the UTF-8
  bytes the counted target tokens decode to."""
  from growjax import data as data_lib
  from growjax import train as train_lib
  host = train_lib.HostBatches.of(setup.batch_sharding, cfg.train.global_batch_size)
  eval_step = train_lib.make_eval_step(setup)
  host_batches = data_lib.eval_batches(cfg.data, global_batch_size=cfg.train.global_batch_size,
                                       num_batches=batches, rows=host.rows)
  progress = Progress("validation batches", len(host_batches))
  nats = tokens = byte_count = 0.0
  with jax.set_mesh(setup.mesh):
    for b in host_batches:
      mask = np.asarray(b.get("loss_mask", np.ones_like(b["targets"], bool))).astype(bool)
      loss = float(_replicated_host(eval_step(params, host.to_global(b))))
      count = int(mask.sum())   # this process's rows: equal to the global count on one
      count = _global_sum(count)
      nats += loss * count
      tokens += count
      byte_count += _global_sum(sum(
          len(tokenizer.decode(np.asarray(t)[m]).encode("utf-8"))
          for t, m in zip(b["targets"], mask)))
      progress.add(1)
  loss = nats / max(tokens, 1)
  return {"batches": len(host_batches), "tokens": int(tokens), "bytes": int(byte_count),
          "loss": loss, "perplexity": math.exp(loss),
          "bits_per_byte": nats / math.log(2) / max(byte_count, 1)}


def _global_sum(x: int) -> int:
  if jax.process_count() == 1:
    return int(x)
  from jax.experimental import multihost_utils
  return int(np.sum(multihost_utils.process_allgather(np.asarray([x]))))


# ----------------------------------------------------------------------------- run


def run(cfg: ml_collections.ConfigDict, checkpoint: str, *, step: int | None = None,
        batches: int = 0, tasks: Sequence[str] = (), batch_size: int = 16,
        mesh_spec: str = "", out: str = "", log=print) -> dict:
  """`growjax eval`: the config's data and mesh, the checkpoint's model and params."""
  from growjax import checkpoint as ckpt_lib
  from growjax import config as config_lib
  from growjax import data as data_lib
  from growjax.interop import sample
  from growjax.train import state as state_lib
  examples = {t: read_task(t) for t in tasks}   # bad task files fail before any compute
  directory, step = ckpt_lib.resolve(checkpoint, step, field="--checkpoint")
  meta = ckpt_lib.read_meta(directory, step)
  mask_ramp.check_params_alone(meta, step, f"--checkpoint={checkpoint!r}")
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  for key, value in (meta.get("model") or {}).items():
    cfg.model[key] = value
  if mesh_spec:
    cfg.mesh = params_io.parse_mesh(mesh_spec)
  n_batches = int(batches or cfg.train.eval_batches)
  # The checkpoint's tokenizer scores the tasks and tokenizes an inline data source.
  spec, record = sample.checkpoint_tokenizer_record(directory, meta)
  if spec and data_lib.reading_plan(cfg.data) is None:
    cfg.data.tokenizer = spec
  tokenizer = sample.make_tokenizer(spec or cfg.data.tokenizer)
  if n_batches > 0:
    config_lib.validate_data(cfg)
    data_record, data_spec, where = data_lib.dataset_tokenizer(cfg.data)
    if record.get("identity") and data_record.get("identity") != record["identity"]:
      raise ValueError(
          f"the data ({where}) is tokenized by {data_record.get('spec')!r}, but "
          f"{directory}/{step} "
          f"was trained with {record.get('spec')!r} — evaluate on data prepared with the "
          f"checkpoint's tokenizer")
    data_tokenizer = sample.make_tokenizer(data_spec or cfg.data.tokenizer)
  setup = state_lib.build(cfg)
  params = params_io.restore_params(directory, step, setup.model_cfg, setup.mesh, setup.rules)
  results: dict[str, Any] = {"checkpoint": f"{directory}/{step}", "tasks": {}}
  if n_batches > 0:
    if jax.process_index() == 0:   # said first: an inline source is prepared on first use
      log(f"perplexity on {validation_source(cfg.data)}: {n_batches} batches of "
          f"{cfg.data.seq_len} tokens, tokenizer {data_spec or cfg.data.tokenizer} "
          f"(--batches=-1 skips it)")
    results["validation"] = perplexity(cfg, setup, params, data_tokenizer, n_batches)
  scorer = Scorer(setup.model_cfg, params, setup.mesh, setup.rules, batch_size=batch_size,
                  max_len=int(cfg.data.seq_len))
  for path, exs in examples.items():
    results["tasks"][path] = multiple_choice(scorer, tokenizer, exs,
                                             os.path.basename(path))
  if jax.process_index() == 0:
    log(format_results(results))
    if out:
      with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
  return results


def validation_source(data_cfg: ml_collections.ConfigDict) -> str:
  """What `config.data` evaluates on, in words: a prepared dir, a mixture's datasets, or a
  source prepared inline (the embedded Shakespeare plays unless config.data.name says)."""
  if data_cfg.prepared_dir:
    return f"the validation split of {data_cfg.prepared_dir}"
  if data_cfg.datasets:
    return f"the validation splits of {data_cfg.eval_dataset or data_cfg.datasets}"
  what = {"shakespeare": "the embedded Shakespeare plays (config.data.name='shakespeare')",
          "text_files": f"config.data.validation_files={data_cfg.validation_files!r}",
          "tfds": f"tfds {data_cfg.tfds_name}"}.get(data_cfg.name, data_cfg.name)
  return f"{what}, prepared inline on first use"


def format_results(results: dict) -> str:
  lines = [f"checkpoint {results['checkpoint']}"]
  v = results.get("validation")
  if v:
    lines.append(f"validation  loss {v['loss']:.4f}  perplexity {v['perplexity']:.3f}  "
                 f"bits/byte {v['bits_per_byte']:.4f}  ({v['tokens']} tokens, "
                 f"{v['bytes']} bytes, {v['batches']} batches)")
  for path, r in results["tasks"].items():
    lines.append(f"{os.path.basename(path):<24} acc {r['acc']:.4f} ± {r['acc_stderr']:.4f}  "
                 f"acc_norm {r['acc_norm']:.4f} ± {r['acc_norm_stderr']:.4f}  "
                 f"({r['examples']} examples)")
  return "\n".join(lines)
