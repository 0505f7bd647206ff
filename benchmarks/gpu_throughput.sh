#!/usr/bin/env bash
# ResNet50 and VGG16 training throughput on one GPU (issue 18), as one prepared call.
#
# The GPU machine has JAX but neither TensorFlow nor Keras, and no network, so Keras
# travels as wheels (`.whl/`, ignored by git) and the benchmark runs on Keras + JAX:
#
#   bash benchmarks/gpu_throughput.sh fetch        # here, once: downloads .whl/ (~2 MB)
#   # then, with the device tool:  run(command="bash benchmarks/gpu_throughput.sh",
#   #                                  carry=[".whl"], timeout_s=540)
#
# Each measurement is one JSON line (device, backbone, image_size, phase, precision,
# batch_size, images_per_second, fraction_of_peak) in $OUT/train_throughput_gpu.jsonl
# ($OUT is the device tool's folder; benchmarks/results/ elsewhere); commit it under
# benchmarks/results/. Every step has its own timeout, so a slow compile costs one
# row, not the whole call. A CPU smoke test of the script itself:
#   OUT=/tmp/gpu EXTRA="--image-size 32 --steps 1 --warmup 1" bash benchmarks/gpu_throughput.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "fetch" ]]; then
    version() { python3 -c "import importlib.metadata as m; print(m.version('$1'))"; }
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        "keras==$(version keras)" "namex==$(version namex)" "optree==$(version optree)"
    exit
fi

if ! python3 -c "import keras" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
json="$out/train_throughput_gpu.jsonl"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"

bench() {  # seconds, then train_throughput.py arguments
    local limit=$1; shift
    timeout "$limit" python3 benchmarks/train_throughput.py --backend jax \
        --precision mixed_bfloat16 --steps 30 --warmup 3 --json "$json" "$@" ${EXTRA:-} 2>&1 \
        | grep -v -E "^(WARNING|I0000|E0000)" | tee -a "$out/log.txt"
}
bench 200 --backbone resnet50 --batch-size 128 256 512
bench 180 --backbone vgg16 --batch-size 64 128 256
bench 90 --backbone resnet50 --phase 2 --batch-size 256 --precision float32
echo "records: $(wc -l < "$json") in $json"
