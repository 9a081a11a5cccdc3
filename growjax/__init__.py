"""growjax: LLM pretraining with model growth (Du et al., NeurIPS 2024) on JAX / Flax.

Train a small LLaMA-style model, grow it with a pure function (`growjax.growth`),
and keep training the large one. See README.md.
"""

__version__ = "0.1.0"
