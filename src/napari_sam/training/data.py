"""Where training images come from: the synthetic generator, a user's annotated folder, both mixed.

Every source is an endless iterator of ``(image, labels)`` pairs: ``image`` ``(H, W)`` or
``(H, W, 3)``, ``labels`` ``(H, W)`` int with 0 as background, one id per object.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data import synthetic
from ..engine.preprocess import ResizeGeometry, to_rgb_uint8_range

__all__ = ["folder_examples", "holdout_split", "mixed_examples", "prepare_example",
           "synthetic_examples"]


def synthetic_examples(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    held_out: bool = False,
    size_range: tuple[int, int] | None = None,
    stack_fraction: float = 0.0,
    size_log: bool = False,
    ranges: str = "v0.5",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless synthetic 2D nuclei images with labels, each with freshly drawn settings.

    Parameters
    ----------
    seed : int
        Seeds the stream; the same seed gives the same images.
    shape : (int, int)
        ``(H, W)`` of each image.
    held_out : bool
        Draw generator settings from the held-out distribution (for evaluation, not training).
    size_range : (int, int), optional
        Draw ``H`` and ``W`` independently and uniformly from this range instead of ``shape``.
        SAM resizes every image's longest side to its input size, so varied image sizes teach
        the model the range of apparent object sizes it meets on users' images.
    stack_fraction : float
        This fraction of the images are a z slice of a 3D stack (:func:`make_nuclei_3d`, z step
        twice the pixel size, sides at most 512 px) instead of a 2D image, so that the model
        also learns the out-of-focus light of nuclei above and below the slice that
        propagation meets. Objects cut at less than half of their largest cross-section are
        left out of the slice's labels (their dim caps are not prompted).
    size_log : bool
        Draw the sides of ``size_range`` log-uniformly (as many images between 100 and 200 px
        as between 500 and 1000 px): small images, magnified several times by the resize to
        the model's input, are then common enough for the model to learn how objects look
        magnified (crops a user opens, zoomed decoding).
    ranges : {"v0.5", "v0.4", "mixed"}
        The generator's training ranges (:data:`napari_sam.data.synthetic.TRAINING_RANGES`); "v0.4"
        reproduces the data of the shipped default model's phases 4-6; "mixed" draws v0.4 or
        v0.5 per image (:func:`napari_sam.data.synthetic.random_settings`).
    """
    if not 0.0 <= stack_fraction <= 1.0:
        raise ValueError(f"stack_fraction must be in [0, 1], got {stack_fraction!r}")
    rng = np.random.default_rng(seed)
    while True:
        settings = synthetic.random_settings(rng, held_out=held_out, ranges=ranges)
        if size_range is not None:
            if size_log:
                lo, hi = np.log(size_range[0]), np.log(size_range[1] + 1)
                shape = tuple(int(v) for v in np.exp(rng.uniform(lo, hi, 2)))
            else:
                shape = tuple(int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        if stack_fraction and rng.random() < stack_fraction:
            yield _stack_slice(rng, tuple(min(int(v), 512) for v in shape), settings)
            continue
        image, labels = synthetic.make_nuclei_2d(shape, seed=int(rng.integers(2**31)),
                                                 settings=settings)
        yield image, labels


def _stack_slice(rng: np.random.Generator, shape: tuple[int, int], settings
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One z slice of a synthetic 3D stack and the labels of the objects well cut by it."""
    n_z = int(rng.integers(8, 17))
    image, labels = synthetic.make_nuclei_3d((n_z, *shape), seed=int(rng.integers(2**31)),
                                   settings=settings, z_anisotropy=2.0)
    z = int(rng.integers(n_z))
    plane = labels[z].copy()
    n = int(labels.max()) + 1
    largest = np.zeros(n, np.int64)
    for zz in range(n_z):
        np.maximum(largest, np.bincount(labels[zz].ravel(), minlength=n), out=largest)
    here = np.bincount(plane.ravel(), minlength=n)
    faint = np.flatnonzero(here < 0.5 * largest)
    plane[np.isin(plane, faint)] = 0
    return image[z], plane


def folder_examples(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    crop: int,
    seed: int = 0,
    crop_range: tuple[int, int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless random 2D crops of a user's annotated images (for fine-tuning).

    Parameters
    ----------
    images : list of numpy.ndarray
        2D ``(H, W)`` / ``(H, W, 3)`` images or 3D ``(Z, H, W)`` stacks.
    labels : list of numpy.ndarray
        Instance labels with the images' spatial shapes.
    crop : int
        Crops are at most ``crop`` x ``crop`` pixels; planes without objects are skipped.
        Each crop is resized to the model's input (longest side), so the crop side sets the
        scale at which the model sees the data.
    crop_range : (int, int), optional
        Draw each crop's side log-uniformly in this range instead (``crop`` is then unused):
        the objects are seen at several scales, e.g. at the scale of the whole image and at
        that of the magnified crops of ``zoom='auto'``.
    """
    rng = np.random.default_rng(seed)
    planes = []
    for img, lab in zip(images, labels):
        if lab.ndim == 2:
            planes.append((img, lab))
        else:
            planes.extend((img[z], lab[z]) for z in range(lab.shape[0]))
    planes = [(i, lab) for i, lab in planes if lab.any()]
    if not planes:
        raise ValueError("the label images contain no objects")
    while True:
        img, lab = planes[int(rng.integers(len(planes)))]
        h, w = lab.shape
        if crop_range is not None:
            lo, hi = np.log(crop_range[0]), np.log(crop_range[1])
            crop = int(round(float(np.exp(rng.uniform(lo, hi)))))
        r0 = int(rng.integers(0, max(1, h - crop + 1)))
        c0 = int(rng.integers(0, max(1, w - crop + 1)))
        sub = lab[r0 : r0 + crop, c0 : c0 + crop]
        if not sub.any():
            continue
        yield img[r0 : r0 + crop, c0 : c0 + crop], sub


def holdout_split(names: list[str], every: int) -> tuple[list[int], list[int]]:
    """Split images into training and validation parts by sorted name, reproducibly.

    Parameters
    ----------
    names : list of str
        File names (any order).
    every : int
        Every ``every``-th name in sorted order (the 1st, the ``every + 1``-th, ...) is held out
        for validation; 0 holds out nothing.

    Returns
    -------
    train, validation : list of int
        Indices into ``names``.
    """
    if every < 0:
        raise ValueError(f"every must be >= 0, got {every}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    held = {i for rank, i in enumerate(order) if every and rank % every == 0}
    return [i for i in order if i not in held], [i for i in order if i in held]


def mixed_examples(
    sources: list[Iterator[tuple[np.ndarray, np.ndarray]]],
    weights: list[float],
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Draw each example from one of ``sources``, chosen at random with probability ``weights``.

    Used to train on a user's (or a public) annotated folder mixed with the synthetic generator:
    the real images teach the look of real nuclei, the generator keeps 3D slices, time-lapse
    looks and object sizes one real set does not have.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(sources) != len(w) or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need one non-negative weight per source, got {weights}")
    rng = np.random.default_rng(seed)
    p = w / w.sum()
    while True:
        yield next(sources[int(rng.choice(len(sources), p=p))])


def prepare_example(
    image: np.ndarray,
    labels: np.ndarray,
    img_size: int,
    min_object_pixels: int = 4,
    max_objects: int | None = None,
    rng: np.random.Generator | None = None,
    small_object_bias: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring a 2D image and its instance labels into the model-input frame.

    Parameters
    ----------
    image : numpy.ndarray, shape (H, W) or (H, W, 3)
    labels : numpy.ndarray, shape (H, W), int
        0 background, other values instances.
    img_size : int
        The model's input side ``S``.
    min_object_pixels : int
        Instances with fewer pixels after resizing are dropped.
    max_objects : int, optional
        Keep at most this many instances, drawn with ``rng`` (in label order). Only the kept
        instances' masks are made: a crowded crop of thousands of objects costs no more memory
        than the few the step trains on.
    rng : numpy.random.Generator, optional
        Required with ``max_objects``.
    small_object_bias : float
        With ``max_objects``: draw each instance with probability proportional to its area
        (after resizing) to the power ``-small_object_bias`` (0: uniformly; 0.5: a 4x smaller
        object twice as often). Small objects are few but are where a model fails most (a
        micronucleus beside its nucleus).

    Returns
    -------
    pixels : torch.Tensor, shape (3, h, w), float32 in [0, 255]
        The image resized so that its longest side is ``S`` (not yet normalised or padded).
    masks : torch.Tensor, shape (M, S, S), bool
        One mask per kept instance, padded.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    geometry = ResizeGeometry(labels.shape, img_size)
    rgb = torch.from_numpy(to_rgb_uint8_range(image)).permute(2, 0, 1)[None]
    pixels = F.interpolate(rgb, size=geometry.input_size, mode="bilinear",
                           align_corners=False, antialias=True)[0]
    lab = torch.from_numpy(labels.astype(np.int64))[None, None].float()
    lab = F.interpolate(lab, size=geometry.input_size, mode="nearest")[0, 0].long()
    ids, counts = torch.unique(lab, return_counts=True)
    keep = (ids != 0) & (counts >= min_object_pixels)
    ids, counts = ids[keep], counts[keep]
    if max_objects is not None and len(ids) > max_objects:
        if rng is None:
            raise ValueError("prepare_example: max_objects needs rng")
        p = None  # uniform (as before the bias existed: the same draws for the same seed)
        if small_object_bias:
            p = counts.double().pow(-float(small_object_bias)).numpy()
            p = p / p.sum()
        chosen = rng.choice(len(ids), max_objects, replace=False, p=p)
        ids = ids[torch.from_numpy(np.sort(chosen))]
    h, w = geometry.input_size
    masks = torch.zeros((len(ids), img_size, img_size), dtype=torch.bool)
    for i, value in enumerate(ids):
        masks[i, :h, :w] = lab == value
    return pixels, masks
