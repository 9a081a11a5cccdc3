"""Text data: tfds-built corpora -> cached token streams -> grain batches.

`config.data` picks a corpus (`sources`), a tokenizer (`tokenizers`) and a
sequence length. The first use of a split tokenizes it once into a memory-mapped
stream (`stream`); documents are packed back to back as `BOS doc EOS`, cut into
windows of `seq_len + 1` tokens, and served by a grain pipeline (`pipeline`)
that shuffles deterministically by seed, reshuffles each epoch, and hands each
process only the rows of the global batch that its devices hold.
"""

from growjax.data.config import DATASET_NAMES, check_data_config, default_data_config
from growjax.data.loader import (eval_batches, loader_tokens_per_second, token_stream,
                                 train_iterator)
from growjax.data.tokenizers import Tokenizer, make_tokenizer, train_sentencepiece

__all__ = ["default_data_config", "check_data_config", "make_tokenizer", "train_iterator",
           "eval_batches", "loader_tokens_per_second", "token_stream", "train_sentencepiece",
           "Tokenizer", "DATASET_NAMES"]
