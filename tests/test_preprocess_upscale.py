"""The model's cap on magnifying small slices (SamConfig.max_input_upscale)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.segmentation import clear_border

from napari_sam import SamPredictor, build_model
from napari_sam.engine.embedding_store import StackEmbedder
from napari_sam.engine.masks import farthest_point, mask_iou
from napari_sam.engine.preprocess import ResizeGeometry
from napari_sam.engine.zoom import ZoomPredictor
from napari_sam.models.configs import (
    DEFAULT_CONFIG,
    MODEL_CONFIGS,
    SamConfig,
    build_sam,
    tiny_config,
)

DATA = Path(__file__).parent / "data"


def test_geometry_magnifies_a_small_slice_only_up_to_the_cap():
    capped = ResizeGeometry((61, 57), 512, 2.0)
    assert capped.scale == 2.0 and capped.input_size == (122, 114)
    np.testing.assert_allclose(capped.points_to_xy([[10, 20]]), [[40, 20]])
    np.testing.assert_allclose(capped.boxes_to_xyxy([[1, 2, 3, 4]]), [[4, 2, 8, 6]])
    sam = ResizeGeometry((61, 57), 512)  # SAM's rule: the longest side fills the input
    assert sam.scale == pytest.approx(512 / 61) and sam.input_size == (512, 478)
    # slices large enough to fill the input within the cap are resized as before
    for size in ((256, 200), (600, 400)):
        assert ResizeGeometry(size, 512, 2.0).input_size == ResizeGeometry(size, 512).input_size


def test_only_the_default_model_caps_and_bad_caps_are_refused():
    assert DEFAULT_CONFIG.max_input_upscale == 2.0
    assert build_model("default").max_input_upscale == 2.0
    assert tiny_config().max_input_upscale is None
    assert all(MODEL_CONFIGS[k].max_input_upscale is None for k in ("vit_b", "vit_t"))
    for bad in (0.5, 0, True, "2", float("nan")):
        with pytest.raises(ValueError, match="max_input_upscale"):
            dataclasses.replace(tiny_config(), max_input_upscale=bad)
    assert isinstance(dataclasses.replace(tiny_config(), max_input_upscale=1), SamConfig)


@pytest.fixture(scope="module")
def capped():
    torch.manual_seed(0)
    return build_sam(dataclasses.replace(tiny_config(), max_input_upscale=2.0))  # 64 px input


def test_a_small_slice_sits_in_the_corner_of_the_input_and_masks_come_back_whole(capped):
    image = np.random.default_rng(0).normal(100, 20, (20, 24)).astype(np.float32)
    predictor = SamPredictor(capped)
    x, geometry = predictor.model_input(image, (0.0, 200.0))
    assert geometry.input_size == (40, 48) and x.shape[-2:] == (64, 64)
    assert x[..., :40, :48].abs().sum() > 0 and not x[..., 40:, :].any()
    assert not x[..., 48:].any()  # the rest is the model's zero padding
    emb = predictor.compute_embedding(image, (0.0, 200.0))
    assert emb.max_upscale == 2.0 and emb.geometry == geometry
    predictor.set_image(image, (0.0, 200.0))
    masks, scores, logits = predictor.predict(np.array([[10.0, 12.0]]), np.array([1]))
    assert masks.shape == (3, 20, 24) and scores.shape == (3,) and logits.shape[0] == 3
    # fill=True (a crop magnified on purpose) stretches it to the input as SAM does
    filled = predictor.compute_embedding(image, (0.0, 200.0), fill=True)
    assert filled.geometry.input_size == (53, 64)
    assert not torch.equal(filled.features, emb.features)


def test_stored_embeddings_keep_the_cap(capped, tmp_path):
    image = np.random.default_rng(1).normal(100, 20, (3, 20, 24)).astype(np.float32)
    first = StackEmbedder(capped, image, store=tmp_path / "s.zarr")
    ref = first.get((1,))
    again = StackEmbedder(capped, image, store=tmp_path / "s.zarr")
    assert again.store.status == "reused"
    got = again.get((1,))
    assert got.max_upscale == 2.0 and got.geometry == ref.geometry
    assert first.signature()["max_input_upscale"] == 2.0
    assert "max_input_upscale" not in StackEmbedder(build_sam(tiny_config()), image).signature()


def _crops(side: int = 128):
    """Every whole nucleus of >= 30 px in the side x side tiles of the real validation image."""
    image = tifffile.imread(DATA / "bbbc039_val_image.tif")
    labels = tifffile.imread(DATA / "bbbc039_val_labels.tif")
    for r in range(0, image.shape[0] - side + 1, side):
        for c in range(0, image.shape[1] - side + 1, side):
            lab = labels[r:r + side, c:c + side]
            whole = clear_border(lab)  # the nuclei the tile cuts are left out
            ids = [o for o in np.unique(whole) if o and (whole == o).sum() >= 30]
            if ids:
                yield image[r:r + side, c:c + side], lab, ids


def test_the_default_model_segments_nuclei_of_small_real_crops():
    """128 px crops of a real image the model never saw: stretched 4x to its 512 px input the
    nuclei are larger than anything it learnt; magnified 2x they are segmented."""
    model = build_model("default")
    ious = {}
    for cap in (2.0, None):
        model.max_input_upscale = cap
        predictor = SamPredictor(model)
        found = []
        for image, lab, ids in _crops():
            predictor.set_image(image, (float(image.min()), float(np.percentile(image, 99.9))))
            for oid in ids:
                truth = lab == oid
                mask = predictor.segment(points=[farthest_point(truth)], labels=[1])[0]
                found.append(mask_iou(mask, truth))
        ious[cap] = float(np.mean(found))
    assert len(found) >= 15
    assert ious[2.0] > 0.8 and ious[2.0] > ious[None] + 0.05, ious


def test_zoomed_crops_are_not_capped():
    """A crop ZoomPredictor magnifies for a speck is magnified fully: the cap is for slices."""
    model = build_model("default")
    image = tifffile.imread(DATA / "bbbc039_val_image.tif")
    predictor = ZoomPredictor(model, small_objects=True)
    predictor.set_image(image)
    seen = []
    original = predictor._predictor.compute_embedding

    def spy(img, rng=None, *, fill=False):
        seen.append((img.shape[:2], fill))
        return original(img, rng, fill=fill)

    predictor._predictor.compute_embedding = spy
    labels = tifffile.imread(DATA / "bbbc039_val_labels.tif")
    predictor.segment(np.array([farthest_point(labels == 106)], float), np.array([1]))
    assert seen and all(fill for shape, fill in seen if max(shape) < 256), seen
