"""Hugging Face LLaMA-family checkpoints in and out: `growjax import-hf` / `export-hf`.

The face of four modules, one concern each: `hf_layout` (the HF <-> growjax tensor
names, shapes and config.json, shared by both directions), `hf_import` (safetensors
streamed into the target sharding), `hf_export` (safetensors sharded with an index,
tokenizer side files) and `hf_records` (the record that makes a rerun "nothing to do",
the staging directory renamed into place). Callers use the names below; a test that
patches a module constant patches it where it is read (e.g. `hf_import.PIECE_BYTES`).
"""

from growjax.interop.hf_export import export_hf
from growjax.interop.hf_import import Tensors, check_tensors, import_config, import_hf
from growjax.interop.hf_layout import (ARCHITECTURES, CONFIG, DTYPES, HF_DIR, INDEX,
                                       MAPPINGS, SINGLE, TOKENIZER_FILES, Mapping,
                                       hf_config, hf_side_files, model_fields)
from growjax.interop.hf_records import EXPORT_MARKER, MARKER

__all__ = ["ARCHITECTURES", "CONFIG", "DTYPES", "EXPORT_MARKER", "HF_DIR", "INDEX",
           "MAPPINGS", "MARKER", "Mapping", "SINGLE", "TOKENIZER_FILES", "Tensors",
           "check_tensors", "export_hf", "hf_config", "hf_side_files", "import_config",
           "import_hf", "model_fields"]
