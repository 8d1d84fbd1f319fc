#!/bin/bash
cd /work/main
STEPS=${STEPS:-1500}
OUT=${OUT:-training-runs/real-v0.15/real9.pt}
exec napari-sam train --images ../shared/data/bbbc039/images --labels ../shared/data/bbbc039/labels \
  --holdout-every 4 --synthetic --real-fraction 0.5 --init default \
  --train-only prompt_encoder mask_decoder \
  --crop 1024 --real-crop-range 300 1024 --size-range 80 1024 --size-log --stack-fraction 0.3 --ranges mixed \
  --steps $STEPS --lr 5e-5 --warmup 20 --focal-ramp 0 --objects-per-image 8 --small-object-bias 0.5 \
  --refine-rounds 3 --maskonly-rounds 1 --threads 1 --seed 91 \
  --iou-rank-weight 0.5 --interior-clicks 0.5 --window-fraction 0.5 --window-tokens 8 32 \
  --out $OUT --log ${OUT%.pt}.log.jsonl
