"""Smoothing of inputs noisier than the model was trained on (SamConfig.max_input_noise)."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.models.configs import DEFAULT_CONFIG, build_sam, tiny_config
from napari_sam.engine.preprocess import denoise_input, input_noise


def _image(noise: float, seed: int = 0) -> torch.Tensor:
    """(1, 3, 96, 128) 0..255: a smooth disc plus white noise of std ``noise`` x 255."""
    yy, xx = np.mgrid[:96, :128]
    base = 60 + 120 * (((yy - 48) ** 2 + (xx - 60) ** 2) < 30**2)
    rng = np.random.default_rng(seed)
    img = base + rng.normal(0, noise * 255, base.shape)
    return torch.from_numpy(np.repeat(img[None, None], 3, axis=1).astype(np.float32))


@pytest.mark.parametrize("noise", [0.01, 0.05, 0.1])
def test_input_noise_measures_white_noise(noise):
    # the disc's edge barely moves the robust estimate
    assert input_noise(_image(noise)) == pytest.approx(noise, rel=0.15)


def test_quiet_images_are_unchanged_and_noisy_ones_smoothed():
    quiet = _image(0.02)
    out, sigma = denoise_input(quiet, 0.04)
    assert sigma == 0.0 and out is quiet
    noisy = _image(0.08)
    out, sigma = denoise_input(noisy, 0.04)
    assert out.shape == noisy.shape
    assert sigma == pytest.approx(2.0, abs=0.3)  # noise / max_noise, at most 2
    assert input_noise(out) < 0.5 * input_noise(noisy)
    # the mean level of flat regions is kept
    assert float(out[0, 0, 40:56, 50:70].mean()) == pytest.approx(180, abs=3)
    very = _image(0.3)
    assert denoise_input(very, 0.04)[1] == 2.0  # capped
    assert denoise_input(noisy, None) == (noisy, 0.0)  # official models: never


def test_default_model_smooths_noisy_slices_and_official_configs_do_not():
    assert DEFAULT_CONFIG.max_input_noise == 0.04
    assert build_model("default").max_input_noise == 0.04
    assert tiny_config().max_input_noise is None
    torch.manual_seed(0)
    plain = build_sam(tiny_config())
    smoothing = build_sam(dataclasses.replace(tiny_config(), max_input_noise=0.04))
    smoothing.load_state_dict(plain.state_dict())
    rng = np.random.default_rng(1)
    quiet = 100 + rng.normal(0, 1.0, (64, 64))  # 0.004 of the 0..255 range
    noisy = 100 + rng.normal(0, 30.0, (64, 64))
    rng_ = (0.0, 255.0)
    a, b = SamPredictor(plain), SamPredictor(smoothing)
    torch.testing.assert_close(a.compute_embedding(quiet, rng_).features,
                               b.compute_embedding(quiet, rng_).features)
    assert not torch.allclose(a.compute_embedding(noisy, rng_).features,
                              b.compute_embedding(noisy, rng_).features)
