#!/usr/bin/env bash
# Issue 14 §5: the GPU numbers, as one script for a GPU machine's short device time (~10 min).
# Not run yet: the session that wrote it had no GPU. Writes JSON files under ${OUT:-.}/issue14/.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD RAY_USAGE_STATS_ENABLED=0
out=${OUT:-.}/issue14; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv | tee "$out/gpu.txt"
# ViT-B/16 @ 224, upper half trainable, bf16: goal >= 0.9 of the model-only loop
timeout 240 python benchmarks/throughput.py --backbone vit_base_patch16_224 --image-size 224 --unfreeze 0.5 \
    --batch 128 --steps 60 --device cuda --json "$out/vit_b16_224.json"
# ResNet-18 @ 112 from the decoded cache (loader), then device-resident: goal >= 0.7
timeout 120 python benchmarks/throughput.py --backbone resnet18 --image-size 112 --batch 256 --steps 60 \
    --data cache --device cuda --json "$out/resnet18_112_cache.json"
timeout 120 python benchmarks/throughput.py --backbone resnet18 --image-size 112 --batch 256 --steps 60 \
    --data cache --data-on-device on --device cuda --json "$out/resnet18_112_device.json"
# packed K=4 (one process, CUDA streams) vs 4 unpacked at gpu: 0.25
timeout 180 python benchmarks/packed.py --k 4 --device cuda --gpu 0.25 --json "$out/packed_k4_gpu.json"
