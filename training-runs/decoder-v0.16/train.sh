#!/bin/bash
# The instance decoder of the default model, trained longer (4000 steps instead of v0.13's
# 1500) on the shipped model's frozen encoder; same data and defaults otherwise. Resumable:
# rerun to continue from d4000.pt.state.pt.
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 napari-sam train-decoder --images ../shared/data/bbbc039/images \
    --labels ../shared/data/bbbc039/labels --holdout-every 4 --model default \
    --out training-runs/decoder-v0.16/d4000.pt --steps 4000 --threads 1 \
    --log training-runs/decoder-v0.16/log.jsonl
