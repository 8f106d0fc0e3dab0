#!/usr/bin/env bash
# The GPU checks of the training-at-scale work, in one run (at most 9 min 20 s: the timeouts below):
# the training step at the paper's scale (IResNet-100, 112 px, batch 512, 85,742 classes, bf16,
# with and without torch.compile, ArcFace alone and OTFace), the head's memory against classes on
# CUDA, and a short fp16 run of the synthetic default (the gradient scaler on CUDA).
#   bash benchmarks/gpu_checks.sh OUT_DIR
# Figures go to OUT_DIR/*.json and *.txt; copy them into benchmarks/RESULTS.md with date and device.
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export OTFACE_CACHE="$out/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt"
recipe=(--classes 85742 model.backbone=iresnet100 model.input_size=112 "model.params={}" optim.batch_size=512
        train.amp=bf16 data.num_workers=4)
timeout 180 python benchmarks/train_step.py --steps 20 --warmup 3 --json "$out/train_step_bf16.json" \
    "${recipe[@]}" > "$out/train_step_bf16.txt" 2>&1
timeout 240 python benchmarks/train_step.py --steps 20 --warmup 5 --json "$out/train_step_bf16_compile.json" \
    "${recipe[@]}" train.compile=true > "$out/train_step_bf16_compile.txt" 2>&1
timeout 70 python benchmarks/head_memory.py --device cuda --repeats 3 --json "$out/head_memory_cuda.json" \
    > "$out/head_memory_cuda.txt" 2>&1
timeout 70 otface train --out "$out/fp16" train.amp=fp16 optim.epochs=1 train.progress=false \
    > "$out/fp16.txt" 2>&1
tail -n 5 "$out"/*.txt
