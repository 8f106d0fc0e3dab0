#!/usr/bin/env bash
# The GPU checks of the fast-OT work, in one run (at most 7 min 20 s: the timeouts below), for a session
# that has a GPU: 1024 pairs of 28 x 28 maps (the default model's layer1, projected to 128 channels
# as a stand-in for the paper's 28 x 28 x 128) forward + backward to tau = 1e-3 / 1e-4, ours (batched
# kernel domain and fused flex_attention) against the oracle plain count, and POT where installed and
# plain reaches tau within 1000 iterations (on the CPU, 1024 pairs at 1e-3 did not: POT's row then says so);
# then the OTFace step (OT contract: tol 1e-3, omega 1.6) against the ArcFace step at IResNet-100, batch 512,
# both measured in one run by benchmarks/train_step.py.
#   bash benchmarks/gpu_checks_ot.sh OUT_DIR CHECKPOINT     (CHECKPOINT: the default run's last.pt)
# Figures go to OUT_DIR/*.txt and *.json; copy them into benchmarks/RESULTS.md with date and device.
set -uo pipefail
out=${1:?output folder}
ckpt=${2:?the default run last.pt}
mkdir -p "$out"
export OTFACE_CACHE="$out/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt"
timeout 240 python benchmarks/sinkhorn_time_to_accuracy.py "$ckpt" --device cuda --pairs 1024 --stages layer1 \
    --project-channels 128 --fused --repeats 5 > "$out/ot_time_to_tau.txt" 2>&1
recipe=(--classes 85742 model.backbone=iresnet100 model.input_size=112 "model.params={}" optim.batch_size=512
        train.amp=bf16 data.num_workers=4)
timeout 200 python benchmarks/train_step.py --steps 15 --warmup 3 --json "$out/step_ot_contract.json" \
    "${recipe[@]}" ot.tol=1e-3 ot.omega=1.6 ot.iters=300 > "$out/step_ot_contract.txt" 2>&1
tail -n 12 "$out"/*.txt
