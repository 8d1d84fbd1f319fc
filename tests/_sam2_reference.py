"""Meta's SAM 2.1 (the ``sam2`` package) built to any of our Sam2Configs: the tests' oracle.

Meta's own yaml for sam2.1_hiera_t is loaded and instantiated (hydra's ``instantiate``, no global
config search), with the trunk, input size and memory depth overridden by ours.
"""

from pathlib import Path

import pytest

sam2 = pytest.importorskip("sam2")

from hydra.utils import instantiate
from omegaconf import OmegaConf

YAML = Path(sam2.__file__).parent / "configs" / "sam2.1" / "sam2.1_hiera_t.yaml"

#: What Meta's builders add for inference (build_sam2 / build_sam2_video_predictor).
IMAGE_OVERRIDES = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    },
}
VIDEO_OVERRIDES = {
    **IMAGE_OVERRIDES,
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 0,  # needs Meta's CUDA extension; not part of our tracker
}


def reference_sam2(config, video: bool = False):
    """Meta's SAM2Base (or SAM2VideoPredictor) with the hyperparameters of ``config``."""
    cfg = OmegaConf.load(YAML).model
    trunk = cfg.image_encoder.trunk
    trunk.embed_dim = config.embed_dim
    trunk.num_heads = config.num_heads
    trunk.stages = list(config.stages)
    trunk.global_att_blocks = list(config.global_att_blocks)
    trunk.window_pos_embed_bkg_spatial_size = list(config.window_pos_embed_bkg_spatial_size)
    trunk.window_spec = list(config.window_spec)
    cfg.image_encoder.neck.backbone_channel_list = config.channel_list
    cfg.image_size = config.image_size
    cfg.num_maskmem = config.num_maskmem
    cfg.memory_attention.num_layers = config.memory_attention_layers
    cfg = OmegaConf.merge(cfg, VIDEO_OVERRIDES if video else IMAGE_OVERRIDES)
    return instantiate(cfg, _recursive_=True).eval()
