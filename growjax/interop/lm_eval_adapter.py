"""growjax as an lm-evaluation-harness model: `--model growjax`.

Importing this module registers `GrowjaxLM` under the name `growjax`
(`lm_eval.api.registry.register_model`). lm-eval's own command does not import
growjax, so run it through this module, which registers and then hands over to
lm-eval's command line:

  python -m growjax.interop.lm_eval_adapter --model growjax \
      --model_args checkpoint=runs/tiny,batch_size=16 --tasks my_task --include_path tasks/

or, in Python, `lm_eval.simple_evaluate(model=GrowjaxLM(checkpoint=...), tasks=[...])`.
Log-likelihoods come from `growjax.interop.evaluate.Scorer` (batched, sharded on the mesh);
generation from `growjax.interop.sample` (KV cache, greedy unless the task asks to sample).
Needs the `lm-eval` package (the `test` extra installs it; no torch needed).
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from growjax.interop import evaluate, params_io, sample


@register_model("growjax")
class GrowjaxLM(LM):
  """A growjax checkpoint behind lm-eval's `LM` interface."""

  def __init__(self, checkpoint: str, step: int | None = None, mesh: str = "",
               batch_size: int | str = 16, max_length: int | None = None, tokenizer: str = "",
               add_bos: bool = True, **unused: Any):
    super().__init__()
    self.loaded = params_io.load(checkpoint, step=None if step is None else int(step),
                                 mesh_spec=mesh, field="model_args checkpoint")
    meta = self.loaded.meta
    seq = ((meta.get("config") or {}).get("data") or {}).get("seq_len") or 2048
    self.max_length = int(max_length or seq)
    self.tokenizer_spec = tokenizer or sample.checkpoint_tokenizer(self.loaded.directory, meta)
    self.tok = sample.make_tokenizer(self.tokenizer_spec)
    self.add_bos = add_bos in (True, "True", "true", "1", 1)
    size = 16 if str(batch_size).startswith("auto") else int(batch_size)
    self.scorer = evaluate.Scorer(self.loaded.model_cfg, self.loaded.params, self.loaded.mesh,
                                  self.loaded.rules, batch_size=size, max_len=self.max_length)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    """lm-eval's command passes --batch_size (and device) besides --model_args: what
    --model_args names wins instead of a duplicate-argument error."""
    extra = {k: v for k, v in (additional_config or {}).items()
             if v is not None and k not in arg_dict}
    return cls(**arg_dict, **extra)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    from lm_eval import utils
    return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string),
                                   additional_config)

  # ---------------------------------------------------------------- log-likelihood

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    pairs = [evaluate.encode_pair(self.tok, ctx, cont, bos=self.add_bos)
             for ctx, cont in (r.args for r in requests)]
    return self.scorer.loglikelihoods(pairs)

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    from lm_eval import utils
    prefix = self.tok.bos_id if getattr(self.tok, "bos_id", -1) >= 0 else (
        getattr(self.tok, "eos_id", 0))
    out = []
    for (text,) in (r.args for r in requests):
      ids = [int(i) for i in self.tok.encode(text)]
      windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
          token_list=ids, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)]
      scores = self.scorer.loglikelihoods([(list(c), list(t)) for c, t in windows])
      out.append(sum(s for s, _ in scores))
    return out

  # -------------------------------------------------------------------- generation

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    out = []
    for context, kwargs in (r.args for r in requests):
      kwargs = dict(kwargs or {})
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      sampled = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0)) > 0
      [text], _ = sample.generate_text(
          self.loaded.model_cfg, self.loaded.params, self.tok, [context],
          max_new_tokens=int(kwargs.get("max_gen_toks", 256)),
          temperature=float(kwargs.get("temperature", 0.0)) if sampled else 0.0,
          top_k=int(kwargs.get("top_k", 0) or 0), top_p=float(kwargs.get("top_p", 1.0) or 1.0),
          mesh=self.loaded.mesh)
      for stop in until:
        if stop and stop in text:
          text = text[:text.index(stop)]
      out.append(text)
    return out


def main() -> None:
  """`python -m growjax.interop.lm_eval_adapter ...`: lm-eval's command with growjax registered."""
  from lm_eval.__main__ import cli_evaluate
  cli_evaluate()


if __name__ == "__main__":
  main()
