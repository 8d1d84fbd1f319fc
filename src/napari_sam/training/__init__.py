"""SAM's promptable training scheme (:mod:`.promptable`, with its losses in :mod:`.losses` and its
simulated prompts in :mod:`.simulation`), its data sources (:mod:`.data`), the mask refiner's
training (:mod:`.refiner`) and the instance decoder's (:mod:`.instance_decoder`).
"""

from .data import (
    folder_examples,
    holdout_split,
    mixed_examples,
    prepare_example,
    synthetic_examples,
)
from .losses import dice_loss, focal_loss, image_resolution_iou, iou_ranking_loss, mask_iou
from .promptable import (
    TrainConfig,
    object_windows,
    save_atomic,
    train,
    train_step,
    with_input_size,
)
from .simulation import noisy_boxes, sample_error_points, sample_points_in_masks

__all__ = [
    "TrainConfig",
    "dice_loss",
    "focal_loss",
    "folder_examples",
    "holdout_split",
    "image_resolution_iou",
    "iou_ranking_loss",
    "mask_iou",
    "mixed_examples",
    "noisy_boxes",
    "object_windows",
    "prepare_example",
    "sample_error_points",
    "sample_points_in_masks",
    "save_atomic",
    "synthetic_examples",
    "train",
    "train_step",
    "with_input_size",
]
