"""SAM's promptable training scheme (:mod:`.promptable`), its data sources (:mod:`.data`) and the
mask refiner's training (:mod:`.refiner`).
"""

from .data import folder_examples, holdout_split, mixed_examples, synthetic_examples
from .promptable import (
    TrainConfig,
    dice_loss,
    focal_loss,
    image_resolution_iou,
    mask_iou,
    noisy_boxes,
    prepare_example,
    sample_error_points,
    sample_points_in_masks,
    save_atomic,
    train,
    train_step,
    with_input_size,
)

__all__ = [
    "TrainConfig",
    "dice_loss",
    "focal_loss",
    "folder_examples",
    "holdout_split",
    "image_resolution_iou",
    "mask_iou",
    "mixed_examples",
    "noisy_boxes",
    "prepare_example",
    "sample_error_points",
    "sample_points_in_masks",
    "save_atomic",
    "synthetic_examples",
    "train",
    "train_step",
    "with_input_size",
]
