"""Text data: prepared ArrayRecord datasets -> grain batches (with document masking).

`config.data` names prepared datasets (`growjax prepare-data` output, local or gs://;
several mixed by weight) or a small source prepared inline on first use (the Shakespeare
default). `loader` opens them (index.json only) and checks them against the config and
the model; `reader` reads shards by window id; `pipeline` shuffles deterministically by
seed, reshuffles each epoch, mixes, and hands each process only the rows of the global
batch its devices hold; `packing` adds segment ids, per-document positions and the loss
mask.
"""

from growjax.data.config import (DATASET_NAMES, check_data_config, default_data_config,
                                 reading_plan)
from growjax.data.loader import (check_against_model, dataset_tokenizer, eval_batches,
                                 inline_dir,
                                 loader_tokens_per_second, open_datasets, prepare_inline,
                                 train_iterator)
from growjax.data.packing import BATCH_KEYS, batch_from_windows, segments_and_positions
from growjax.data.tokenizers import Tokenizer, make_tokenizer, train_sentencepiece

__all__ = ["default_data_config", "check_data_config", "check_against_model",
           "make_tokenizer", "train_iterator", "eval_batches", "loader_tokens_per_second",
           "open_datasets", "prepare_inline", "inline_dir", "train_sentencepiece",
           "Tokenizer", "DATASET_NAMES", "BATCH_KEYS", "batch_from_windows",
           "segments_and_positions", "dataset_tokenizer", "reading_plan"]
