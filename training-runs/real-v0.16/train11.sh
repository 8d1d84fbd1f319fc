#!/bin/bash
# real11: real8's prompt decoder (training-runs/real-v0.14) trained further with a stronger
# small-object bias (1.0 instead of 0.5), for use with "snap to objects": the instance decoder
# then draws large nuclei, so the prompt decoder can favour small ones. Image encoder, instance
# decoder and refiner frozen. Resumable: rerun to continue from real11.pt.state.pt.
cd "$(dirname "$0")/../.."
OMP_NUM_THREADS=1 napari-sam train --images ../shared/data/bbbc039/images --labels ../shared/data/bbbc039/labels \
  --holdout-every 4 --synthetic --real-fraction 0.7 --init training-runs/real-v0.14/real8_step1500.pt \
  --train-only prompt_encoder mask_decoder \
  --crop 1024 --real-crop-range 300 1024 --size-range 80 1024 --size-log --stack-fraction 0.3 \
  --ranges mixed --steps 1000 --lr 4e-5 --warmup 20 --focal-ramp 0 --objects-per-image 12 \
  --small-object-bias 1.0 --refine-rounds 5 --maskonly-rounds 1 --threads 1 --seed 111 \
  --iou-rank-weight 0.5 --interior-clicks 0.5 --window-fraction 0.5 --window-tokens 8 32 \
  --out training-runs/real-v0.16/real11.pt --log training-runs/real-v0.16/real11.log.jsonl
