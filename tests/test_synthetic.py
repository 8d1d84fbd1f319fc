"""Tests of the synthetic nuclei generator (napari_sam.data.synthetic)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops

from napari_sam.data.synthetic import (
    TRAINING_RANGES,
    SyntheticSettings,
    make_nuclei_2d,
    make_nuclei_3d,
    make_timelapse,
    random_settings,
)

#: No noise, blur, background or illumination: the image is exactly the objects' fluorescence.
CLEAN = dict(
    psf_sigma=0.0, haze=0.0, background=0.0, illumination_gradient=0.0, vignette=0.0,
    photons=1e9, read_noise=0.0, dtype="float32",
)


def _assert_consecutive(labels: np.ndarray) -> None:
    ids = np.unique(labels)
    assert labels.dtype == np.int32
    assert ids[0] == 0
    np.testing.assert_array_equal(ids, np.arange(ids.size))


def _touch_border(region, shape) -> bool:
    bbox = region.bbox
    ndim = len(shape)
    return any(bbox[d] == 0 or bbox[d + ndim] == shape[d] for d in range(ndim))


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: make_nuclei_2d((96, 128), seed=seed),
        lambda seed: make_nuclei_3d((8, 48, 64), seed=seed),
        lambda seed: make_timelapse(3, (64, 64), seed=seed),
    ],
    ids=["2d", "3d", "timelapse"],
)
def test_same_seed_same_arrays_different_seed_different(make):
    image_a, labels_a = make(3)
    image_b, labels_b = make(3)
    image_c, labels_c = make(4)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(labels_a, labels_c)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_shapes_and_dtypes(dtype):
    settings = SyntheticSettings(dtype=dtype)
    black, white = settings.levels
    image, labels = make_nuclei_2d((64, 80), seed=1, settings=settings)
    assert image.shape == labels.shape == (64, 80)
    assert image.dtype == np.dtype(dtype)
    assert image.min() >= 0 and image.max() <= white
    assert np.median(image[labels == 0]) >= black

    stack, stack_labels = make_nuclei_3d((6, 40, 48), seed=1, settings=settings)
    assert stack.shape == stack_labels.shape == (6, 40, 48)
    assert stack.dtype == np.dtype(dtype)

    movie, movie_labels = make_timelapse(4, (40, 48), seed=1, settings=settings)
    assert movie.shape == movie_labels.shape == (4, 40, 48)
    assert movie.dtype == np.dtype(dtype)


def test_uint16_has_a_camera_like_range():
    image, labels = make_nuclei_2d((128, 128), seed=0)
    background = np.median(image[labels == 0])
    assert 100 <= background < 600  # black level 100 plus a little background
    assert 1000 < np.percentile(image[labels > 0], 90) <= 4095


@pytest.mark.parametrize("seed", range(3))
def test_labels_consecutive_and_exactly_where_the_signal_is(seed):
    settings = SyntheticSettings(**CLEAN)
    image, labels = make_nuclei_2d((128, 128), seed=seed, settings=settings)
    _assert_consecutive(labels)
    assert labels.max() > 0
    np.testing.assert_array_equal(image > 0, labels > 0)
    areas = np.bincount(labels.ravel())[1:]
    assert areas.min() >= settings.min_visible_area

    stack, stack_labels = make_nuclei_3d((8, 64, 64), seed=seed, settings=settings)
    _assert_consecutive(stack_labels)
    np.testing.assert_array_equal(stack > 0, stack_labels > 0)


def test_objects_contrast_with_background():
    for seed in range(3):
        image, labels = make_nuclei_2d((128, 128), seed=seed)
        inside = image[labels > 0].astype(float).mean()
        outside = image[labels == 0].astype(float).mean()
        black = SyntheticSettings().levels[0]
        assert inside - black > 3 * (outside - black)


@pytest.mark.parametrize("radius_range", [(4.0, 6.0), (8.0, 14.0), (40.0, 70.0)])
def test_object_sizes_within_radius_range(radius_range):
    settings = SyntheticSettings(radius_range=radius_range, allow_touching=False,
                                 mitotic_fraction=0.0, irregularity=0.08)
    shape = (384, 384) if radius_range[1] > 30 else (192, 192)
    radii = []
    for seed in range(3):
        _, labels = make_nuclei_2d(shape, seed=seed, settings=settings)
        radii += [np.sqrt(r.area / np.pi) for r in regionprops(labels)
                  if not _touch_border(r, labels.shape)]
    assert len(radii) >= 3
    lo, hi = radius_range
    assert min(radii) >= 0.85 * lo - 0.5
    assert max(radii) <= 1.1 * hi + 0.5


def test_touching_objects_partition_and_separated_objects_keep_a_gap():
    dense = dict(coverage=(0.45, 0.5), clustering=0.8)
    _, labels = make_nuclei_2d((192, 192), seed=2, settings=SyntheticSettings(**dense))
    # some pixel of one object has a 4-neighbour in another object
    right = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    down = (labels[:-1] > 0) & (labels[1:] > 0) & (labels[:-1] != labels[1:])
    assert right.any() or down.any()

    settings = SyntheticSettings(allow_touching=False, min_gap=2.0, **dense)
    _, labels = make_nuclei_2d((192, 192), seed=2, settings=settings)
    grown = ndimage.grey_dilation(labels, size=(3, 3))
    assert np.all((grown == labels) | (labels == 0))  # no different id next to an object


def _z_to_x_sharpness(psf_sigma: float) -> float:
    """Gradient energy along z over that along x (mean abs differences would not do: blur
    preserves the total variation of an edge)."""
    settings = SyntheticSettings(**{
        **CLEAN, "psf_sigma": psf_sigma, "texture_strength": 0.0, "spot_count": (0, 0),
        "depth_attenuation": 0.0, "axial_ratio": (1.0, 1.0), "coverage": (0.3, 0.3),
        "radius_range": (6.0, 10.0),
    })
    ratios = []
    for seed in range(2):
        # isotropic voxels and round objects: the geometry is statistically the same along z and
        # x, only the PSF is not
        stack, labels = make_nuclei_3d((32, 64, 64), seed=seed, settings=settings,
                                       z_anisotropy=1.0)
        _assert_consecutive(labels)
        stack = stack.astype(np.float64)
        ratios.append((np.diff(stack, axis=0) ** 2).mean() / (np.diff(stack, axis=2) ** 2).mean())
    return float(np.mean(ratios))


def test_z_blur_is_stronger_than_lateral_blur():
    assert _z_to_x_sharpness(0.0) > 0.7
    assert _z_to_x_sharpness(1.5) < 0.5


def test_3d_objects_are_flattened_by_anisotropy():
    _, labels = make_nuclei_3d((16, 96, 96), seed=1, z_anisotropy=3.0)
    _assert_consecutive(labels)
    for r in regionprops(labels):
        z0, y0, x0, z1, y1, x1 = r.bbox
        if not _touch_border(r, labels.shape):
            assert z1 - z0 < max(y1 - y0, x1 - x0)


def test_timelapse_ids_persist_and_move_little():
    settings = SyntheticSettings(radius_range=(6.0, 10.0))
    movie, labels = make_timelapse(8, (128, 128), seed=5, settings=settings, speed=1.0)
    _assert_consecutive(labels)
    n = labels.max()
    centroids = np.full((labels.shape[0], n + 1, 2), np.nan)
    for t in range(labels.shape[0]):
        for r in regionprops(labels[t]):
            if not _touch_border(r, labels.shape[1:]):
                centroids[t, r.label] = r.centroid
    step = np.linalg.norm(np.diff(centroids, axis=0), axis=-1)
    step = step[np.isfinite(step)]
    assert step.size > 20  # most objects are followed over several frames
    assert step.max() < 4.0
    # an object stays the same object: its area barely changes between frames
    areas = np.stack([np.bincount(lab.ravel(), minlength=n + 1) for lab in labels])
    both = (areas[1:] > 0) & (areas[:-1] > 0)
    ratio = areas[1:][both] / areas[:-1][both]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.1)


def test_held_out_settings_differ_from_training_settings():
    rng = np.random.default_rng(0)
    train = [random_settings(rng) for _ in range(20)]
    held = [random_settings(rng, held_out=True) for _ in range(20)]
    assert {s.psf_kind for s in train} == {"gaussian"}
    assert {s.psf_kind for s in held} == {"defocus"}
    assert {s.texture_kind for s in train} == {"smooth"}
    assert {s.texture_kind for s in held} == {"speckled"}
    # training: dark nucleoli or bright chromocenters; held-out: bright speckled texture
    assert any(s.spot_contrast < 0 for s in train) and any(s.spot_contrast > 0 for s in train)
    assert all(s.spot_contrast > 0 for s in held)
    assert all(s.fixed_pattern_noise == 0 for s in train)
    assert all(s.fixed_pattern_noise > 0 for s in held)
    assert max(s.photons for s in held) < np.median([s.photons for s in train])
    # same seed, same draw
    assert random_settings(np.random.default_rng(3)) == random_settings(np.random.default_rng(3))
    for s in train[:4] + held[:4]:
        image, labels = make_nuclei_2d((96, 96), seed=0, settings=s)
        assert image.dtype == np.dtype(s.dtype)
        _assert_consecutive(labels)


def test_object_count_setting_and_empty_scene():
    settings = SyntheticSettings(n_objects=(5, 5), radius_range=(6.0, 8.0))
    _, labels = make_nuclei_2d((256, 256), seed=0, settings=settings)
    assert 1 <= labels.max() <= 5
    image, labels = make_nuclei_2d((32, 32), seed=0,
                                   settings=SyntheticSettings(n_objects=(0, 0)))
    assert labels.max() == 0 and image.shape == (32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(radius_range=(10.0, 5.0)),
        dict(radius_range=(0.5, 5.0)),
        dict(dtype="int64"),
        dict(elongation=(0.5, 1.0)),
        dict(photons=0.0),
        dict(psf_kind="airy"),
        dict(mitotic_fraction=1.5),
    ],
)
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        SyntheticSettings(**kwargs)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        make_nuclei_2d((16, 16, 16))
    with pytest.raises(ValueError):
        make_nuclei_3d((16, 16), seed=0)
    with pytest.raises(ValueError):
        make_nuclei_3d(seed=0, z_anisotropy=0.0)
    with pytest.raises(ValueError):
        make_timelapse(0)


def test_settings_are_replaceable_and_frozen():
    settings = dataclasses.replace(SyntheticSettings(), dtype=np.uint8)
    assert settings.dtype == "uint8"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.dtype = "uint16"  # type: ignore[misc]


def test_fast_enough():
    make_nuclei_2d((256, 256), seed=0)  # warm-up
    start = time.perf_counter()
    for seed in range(3):
        make_nuclei_2d((256, 256), seed=seed)
    # the target is < 0.1 s per image; the bound is loose for slow, shared CI machines
    assert (time.perf_counter() - start) / 3 < 0.5


def test_training_ranges_by_version():
    old = [random_settings(np.random.default_rng(k), ranges="v0.4") for k in range(60)]
    new = [random_settings(np.random.default_rng(k), ranges="v0.5") for k in range(60)]
    lim = TRAINING_RANGES["v0.4"]
    # v0.4 reproduces the shipped model's data: every draw inside the old bounds
    assert all(lim["radius"][0] <= s.radius_range[0] <= lim["radius"][1] for s in old)
    assert all(lim["photons"][0] <= s.photons <= lim["photons"][1] for s in old)
    assert all(s.psf_sigma <= lim["psf_sigma"][1] for s in old)
    # v0.5 reaches the held-out ranges: smaller nuclei, fewer photons, more blur
    assert any(s.radius_range[0] < 5.0 for s in new)
    assert any(s.photons < 30.0 for s in new)
    assert any(s.psf_sigma > 2.0 for s in new)
    # the same draws in the same order: only the widened values differ
    for a, b in zip(old, new):
        assert (a.dtype, a.texture_kind, a.spot_count, a.allow_touching) == (
            b.dtype, b.texture_kind, b.spot_count, b.allow_touching)
    # held-out draws do not depend on the training ranges
    assert random_settings(np.random.default_rng(5), held_out=True, ranges="v0.4") == \
        random_settings(np.random.default_rng(5), held_out=True)
    with pytest.raises(ValueError, match="ranges"):
        random_settings(0, ranges="v0.3")


def test_mixed_training_ranges():
    mixed = [random_settings(np.random.default_rng(k), ranges="mixed") for k in range(80)]
    lim = TRAINING_RANGES["v0.4"]
    outside = [s.photons < lim["photons"][0] or s.psf_sigma > lim["psf_sigma"][1]
               or s.radius_range[0] < lim["radius"][0] for s in mixed]
    # some images drawn from the wide v0.5 ranges, others (about half) from v0.4's
    assert 0 < sum(outside) < len(mixed) - 20
    # held-out draws take no extra draw for the choice
    for k in range(5):
        assert random_settings(np.random.default_rng(k), held_out=True, ranges="mixed") == \
            random_settings(np.random.default_rng(k), held_out=True)


# --------------------------------------------------------------------------------------------
# Annotation convention: labels drawn at half of the blurred peak (settings.label_edge)

#: One round, flat-textured object on a black, noise-free background: the float32 image is
#: exactly the object's blurred signal divided by ``saturation``.
ISOLATED = dict(
    CLEAN, n_objects=(1, 1), radius_range=(7.0, 7.0), radius_spread=0.0, elongation=(1.0, 1.0),
    irregularity=0.0, mitotic_fraction=0.0, saturated_fraction=0.0, texture_strength=0.0,
    spot_count=(0, 0), dome=0.4, psf_sigma=2.0, depth_attenuation=0.0, axial_ratio=(1.0, 1.0),
)


def _isolated(make, settings):
    """The first seed whose single object lies inside the image: image, half-max and geometric
    labels."""
    for seed in range(20):
        image, labels = make(seed, settings)
        _, geometric = make(seed, dataclasses.replace(settings, label_edge="geometric"))
        inner = geometric[(slice(1, -1),) * geometric.ndim]
        if geometric.max() == 1 and (inner == 1).sum() == (geometric == 1).sum():
            return image.astype(np.float64), labels, geometric
    raise AssertionError("no seed gave an isolated object inside the image")


def _assert_label_is_the_half_max_region(image, labels):
    peak = image.max()
    inside = labels == 1
    assert set(np.unique(labels)) == {0, 1}
    # every labelled pixel is at least half as bright as the peak, every other one dimmer
    assert image[inside].min() >= 0.5 * peak * (1 - 1e-4)
    assert image[~inside].max() < 0.5 * peak * (1 + 1e-4)
    # the outline runs where the signal is near half the peak (one pixel's step of the blur)
    edge = inside & ~ndimage.binary_erosion(inside)
    assert np.all(image[edge] <= 0.75 * peak)
    outside = ndimage.binary_dilation(inside) & ~inside
    assert np.all(image[outside] >= 0.25 * peak)


def test_half_max_label_of_an_isolated_blurred_disc():
    settings = SyntheticSettings(**ISOLATED)
    assert settings.label_edge == "half_max"  # the default
    image, labels, geometric = _isolated(
        lambda seed, s: make_nuclei_2d((48, 48), seed=seed, settings=s), settings)
    _assert_label_is_the_half_max_region(image, labels)
    assert (labels > 0).sum() < (geometric > 0).sum()  # the dome and the blur shrink it
    assert np.all(geometric[labels > 0] == 1)  # inside the nominal outline
    # without blur the flat-ish dome (rim at 0.6 of the peak) keeps its nominal outline
    sharp = dataclasses.replace(settings, psf_sigma=0.0)
    image, labels, geometric = _isolated(
        lambda seed, s: make_nuclei_2d((48, 48), seed=seed, settings=s), sharp)
    np.testing.assert_array_equal(labels, geometric)


def test_half_max_labels_in_3d_per_voxel():
    settings = SyntheticSettings(**ISOLATED)
    stack, labels, geometric = _isolated(
        lambda seed, s: make_nuclei_3d((24, 40, 40), seed=seed, settings=s, z_anisotropy=1.0),
        settings)
    # the axial blur (z_blur_factor times the lateral one) is part of the 3D convention
    _assert_label_is_the_half_max_region(stack, labels)
    assert (labels > 0).sum() < (geometric > 0).sum()
    # as a person sees it: the long axial PSF (6 slices here) stretches the object along z
    # while the label narrows laterally
    z_extent = [np.flatnonzero((lab > 0).any(axis=(1, 2))).size for lab in (labels, geometric)]
    assert z_extent[0] > z_extent[1]
    middle = int(np.argmax((geometric > 0).sum(axis=(1, 2))))
    assert (labels[middle] > 0).sum() < (geometric[middle] > 0).sum()


def test_half_max_keeps_images_and_ids_and_geometric_is_the_old_outline():
    half = SyntheticSettings(coverage=(0.45, 0.5), clustering=0.8)
    geo = dataclasses.replace(half, label_edge="geometric")
    for make in (lambda s: make_nuclei_2d((128, 128), seed=2, settings=s),
                 lambda s: make_nuclei_3d((8, 64, 64), seed=2, settings=s),
                 lambda s: make_timelapse(3, (64, 64), seed=2, settings=s)):
        image_h, labels_h = make(half)
        image_g, labels_g = make(geo)
        np.testing.assert_array_equal(image_h, image_g)  # only the labels differ
        _assert_consecutive(labels_h)
        np.testing.assert_array_equal(np.unique(labels_h), np.unique(labels_g))  # no id lost
        assert not np.array_equal(labels_h, labels_g)
    with pytest.raises(ValueError, match="label_edge"):
        SyntheticSettings(label_edge="outer")


def test_touching_objects_keep_their_own_pixels_and_one_piece():
    settings = SyntheticSettings(coverage=(0.45, 0.5), clustering=0.8)
    _, labels = make_nuclei_2d((192, 192), seed=2, settings=settings)
    _, geometric = make_nuclei_2d((192, 192), seed=2,
                                  settings=dataclasses.replace(settings, label_edge="geometric"))
    # a pixel either stays with its nominal owner, or was background and joins one object
    moved = (labels > 0) & (labels != geometric)
    assert np.all(geometric[moved] == 0)
    for oid in range(1, labels.max() + 1):
        assert ndimage.label(labels == oid)[1] == 1  # one connected piece each
    # touching objects still touch: the contact is bright, the boundary stays where it was
    right = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    assert right.sum() > 0.5 * ((geometric[:, :-1] > 0) & (geometric[:, 1:] > 0)
                                & (geometric[:, :-1] != geometric[:, 1:])).sum()


def test_half_max_between_a_bright_and_a_dim_touching_object():
    from napari_sam.data.synthetic import _half_max_labels

    settings = SyntheticSettings(psf_sigma=1.5, background=0.0)
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30] = 1  # bright square
    labels[10:30, 30:50] = 2  # dim square touching it
    profile = np.where(labels == 1, 1.0, np.where(labels == 2, 0.2, 0.0)).astype(np.float32)
    out = _half_max_labels(labels, profile, settings, None)
    assert set(np.unique(out)) == {0, 1, 2}
    assert np.all(out[labels == 2] != 1)  # the bright object takes none of the dim one's pixels
    assert np.all(out[labels == 1] != 2)
    # the contact stays bright, so the dim object keeps its side of it; far from it, both lose
    # their corners to the blur
    assert np.all(out[12:28, 30] == 2) and np.all(out[12:28, 29] == 1)
    assert out[10, 10] == 0 and out[10, 49] == 0
    # one piece each, and the labels of isolated squares are their half-max regions
    for oid in (1, 2):
        assert ndimage.label(out == oid)[1] == 1
