"""Model growth: map a trained small model's params into a larger model's.

    grown = grow(params, small_cfg, large_cfg, "stack")

`grow` is a pure function on plain (unboxed) params trees; it reads the one
declared table `growjax.model.PARAMS` for each leaf's axes (`layers`, `embed`,
`mlp`, `heads`, `kv_heads`) and its role (reads, writes or scales the residual
stream), never guessing either from names or axis order. Width grows first (at
the small depth, the cheaper order), then depth. Growing several times in a
row (2 -> 4 -> 8 layers, gradual stacking) is calling `grow` again.

Depthwise `method`s (see `depth` for exact layer placement): the `direct`
family `stack` (G_stack), `interpolate`, `stack_bottom`, `stack_middle`,
`stack_top`, `llama_pro` (copies with zero writers: function kept), `solar`,
`middle`, `direct` with an explicit `layer_map`; `zero` (new layers add
exactly zero); `random` (new layers from the initialiser); `learn` (LiGO).
Widthwise `width_method`s (see `width`): `direct`, `split` (direct with zero-sum
noise on the copies, `width_noise` relative to a copy's RMS: the function is kept
and the copies' symmetry broken), `zero`, `random`, `learn`; by default the
family of `method` (`zero` for zero, `direct` for the stacks).
`spec.resolve` is the one place that checks a growth; an operator that cannot
keep the function (width `direct` to a non-whole embed factor) is refused unless
`allow_inexact=True`, and `offline` then measures and prints the logit change.

Every operator except `learn` runs under `jax.jit` (configs, methods and a
tuple `layer_map` static; `rng` traced), also with `out_shardings`. Given a
mesh and logical-axis rules (`mesh=`/`rules=`, or `jax.set_mesh` and
`nn.logical_axis_rules` in context) each jitted operator enters them and
constrains every intermediate leaf to its sharding (`placement`), so a large
model is grown sharded, with per-device memory that falls as devices are
added; `learn`'s Adam steps run sharded on that mesh too. Without a mesh the
same code runs unconstrained, with identical results. Optimizer state:
`grow_opt_state`.

The package holds the pure operators (`operators`, `depth`, `width`, `learn`,
`optimizer_state`, `spec`, `layout`, `placement`), importable without the
trainer, and the growth workflow built on them, imported by name:
`offline` (grow a saved checkpoint), `stages` (a whole small -> grow -> large
run), `timing` (the paper's d and g), `speedup` (did growth pay), `budget`
(equal FLOPs: a grow run's steps at a scratch run's budget), `law` (the d law fit)
and `sweep` with its rooms in `study` (`growjax sweep`: the d and g study).
"""

from growjax.growth import depth, layout, learn, placement, width
from growjax.growth.operators import grow
from growjax.growth.optimizer_state import grow_opt_state
from growjax.growth.spec import DEPTH_METHODS, WIDTH_METHODS, GrowthSpec, resolve

__all__ = ["grow", "grow_opt_state", "resolve", "GrowthSpec", "DEPTH_METHODS",
           "WIDTH_METHODS", "depth", "width", "learn", "layout", "placement"]
