"""Layer <-> prompt conversion: which 2D plane is on screen, which prompts lie on it, and writing
a mask back into a Labels layer.

Everything here works with napari layers but without Qt, so it can be tested without a window.
Coordinates are mapped between layers through their world transforms (``data_to_world`` and
``world_to_data``: scale, translate, rotate, shear, affine), never by raw indices, so a Points
layer with another scale than the image, or an anisotropic z-stack, still lands on the right
pixels.

The plane of an image layer is given by its two *displayed* data axes (in ascending order) and
integer indices along all the other axes. Inside a plane, coordinates are ``(row, col)`` along
those two axes, the order :class:`napari_sam.engine.predictor.SamPredictor` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover
    from napari.components import Dims
    from napari.layers import Image, Labels, Layer, Points, Shapes

from ._label_ids import set_labels

__all__ = [
    "MAX_PLANE_PIXELS",
    "MIN_PLANE_SIDE",
    "Plane",
    "PlanePrompts",
    "PromptError",
    "ShapePrompt",
    "affine_between",
    "assemble_objects",
    "current_plane",
    "image_level0",
    "image_spatial_shape",
    "mask_prompts_from_labels",
    "paint_mask",
    "plane_layer_translate",
    "points_on_plane",
    "sample_labels_on_plane",
    "shapes_on_plane",
    "transform_kwargs",
]

#: Planes with a side below this many pixels are refused (nothing to segment).
MIN_PLANE_SIDE = 2
#: Planes above this many pixels are refused: SAM resizes to 1024 px anyway, and the float32 RGB
#: copy the encoder needs would take 12 bytes per pixel.
MAX_PLANE_PIXELS = 64 * 2**20

#: Point tolerance (in pixels of the plane's non-displayed axes) for "on this plane".
_ON_PLANE_TOL = 0.5
#: Vertices of the polygon an ellipse is drawn as before rasterising it.
_ELLIPSE_VERTICES = 64


class PromptError(ValueError):
    """A user-facing problem with the current view or prompts (shown as one notification).

    Attributes
    ----------
    kind : str
        ``"3d"`` (3D display), ``"axes"`` (the image is not on the displayed axes),
        ``"outside"`` (the position is outside the image) or ``"size"`` (plane too small/large).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- image geometry -------------------------------------------------------------------------


def image_level0(layer: Image) -> Any:
    """The full-resolution data of an image layer (level 0 of a multiscale image)."""
    return layer.data[0] if layer.multiscale else layer.data


def image_spatial_shape(layer: Image) -> tuple[int, ...]:
    """Shape of the image layer without its RGB(A) axis, e.g. ``(Z, Y, X)``."""
    shape = tuple(int(s) for s in np.shape(image_level0(layer)))
    return shape[:-1] if layer.rgb else shape


@dataclass(frozen=True)
class Plane:
    """The 2D plane of an image layer that is on screen.

    Attributes
    ----------
    axes : (int, int)
        The two displayed data axes of the image, ascending: ``(row axis, col axis)``.
    index : tuple of int
        Integer position along every spatial data axis; the entries of ``axes`` are unused (0).
    spatial_shape : tuple of int
        The image's shape without RGB.
    world_point : tuple of float
        The viewer's world position the plane was taken at (fills axes a layer does not have).
    """

    axes: tuple[int, int]
    index: tuple[int, ...]
    spatial_shape: tuple[int, ...]
    world_point: tuple[float, ...] = field(compare=False)

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the plane."""
        return (self.spatial_shape[self.axes[0]], self.spatial_shape[self.axes[1]])

    @property
    def not_displayed(self) -> tuple[int, ...]:
        return tuple(a for a in range(self.ndim) if a not in self.axes)

    @property
    def key(self) -> tuple[tuple[int, int], ...]:
        """Hashable ``((axis, index), ...)`` of the non-displayed axes plus the plane's axes."""
        return tuple((a, self.index[a]) for a in self.not_displayed) + (("axes", self.axes),)

    def indexer(self) -> tuple[int | slice, ...]:
        """Index into the image's (spatial) data giving this plane, ``(H, W)`` or ``(H, W, C)``."""
        return tuple(slice(None) if a in self.axes else self.index[a] for a in range(self.ndim))

    def label(self) -> str:
        """Human-readable position, e.g. ``"axis 0 = 5"``, for status messages."""
        parts = [f"axis {a} = {self.index[a]}" for a in self.not_displayed]
        return ", ".join(parts) if parts else "2D image"

    def on_plane(self, coords: npt.NDArray, tol: float = _ON_PLANE_TOL) -> npt.NDArray[np.bool_]:
        """Which of the ``(N, ndim)`` image data coordinates lie on this plane."""
        coords = np.asarray(coords, dtype=float).reshape(-1, self.ndim)
        ok = np.ones(len(coords), dtype=bool)
        for a in self.not_displayed:
            ok &= np.abs(coords[:, a] - self.index[a]) <= tol
        return ok

    def to_plane(self, coords: npt.NDArray) -> npt.NDArray[np.float64]:
        """``(N, ndim)`` image data coordinates -> ``(N, 2)`` ``(row, col)`` in the plane."""
        coords = np.asarray(coords, dtype=float).reshape(-1, self.ndim)
        return coords[:, list(self.axes)]

    def to_nd(self, rc: npt.NDArray) -> npt.NDArray[np.float64]:
        """``(N, 2)`` plane ``(row, col)`` -> ``(N, ndim)`` image data coordinates."""
        rc = np.asarray(rc, dtype=float).reshape(-1, 2)
        out = np.tile(np.asarray(self.index, dtype=float), (len(rc), 1))
        out[:, self.axes[0]] = rc[:, 0]
        out[:, self.axes[1]] = rc[:, 1]
        return out

    def inside(self, rc: npt.NDArray) -> npt.NDArray[np.bool_]:
        """Which ``(N, 2)`` plane coordinates fall on a pixel of the plane."""
        rc = np.asarray(rc, dtype=float).reshape(-1, 2)
        h, w = self.shape
        return (rc[:, 0] >= -0.5) & (rc[:, 0] < h - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] < w - 0.5)


def current_plane(image: Image, dims: Dims) -> Plane:
    """The plane of ``image`` the viewer shows at ``dims``' current position.

    Raises
    ------
    PromptError
        3D display, the image not spanning the displayed axes, the position outside the image,
        or a plane too small or too large for SAM.
    """
    if dims.ndisplay != 2:
        raise PromptError(
            "Segment Anything works on 2D slices: switch the viewer to 2D display "
            "(the 2D/3D button at the bottom left, or Ctrl+Y).",
            "3d",
        )
    spatial = image_spatial_shape(image)
    ndim = len(spatial)
    world_point = tuple(float(v) for v in dims.point)
    offset = len(world_point) - ndim
    axes = sorted(d - offset for d in dims.displayed if d - offset >= 0)
    if len(axes) != 2:
        raise PromptError(
            f"The displayed axes do not cross image '{image.name}': show two of its axes.",
            "axes",
        )
    data_point = np.asarray(image.world_to_data(world_point), dtype=float)
    index = [0] * ndim
    for a in range(ndim):
        if a in axes:
            continue
        i = int(np.round(data_point[a]))
        if not 0 <= i < spatial[a]:
            raise PromptError(
                f"The current position is outside image '{image.name}' along axis {a} "
                f"(index {i} of {spatial[a]}): move the slider back into the image.",
                "outside",
            )
        index[a] = i
    plane = Plane((axes[0], axes[1]), tuple(index), spatial, world_point)
    h, w = plane.shape
    if min(h, w) < MIN_PLANE_SIDE:
        raise PromptError(
            f"Image '{image.name}' is {h} x {w} pixels in the displayed plane: too small to "
            "segment.",
            "size",
        )
    if h * w > MAX_PLANE_PIXELS:
        raise PromptError(
            f"Image '{image.name}' is {h} x {w} pixels in the displayed plane, more than "
            f"{MAX_PLANE_PIXELS // 2**20} megapixels: crop or downsample it first (SAM works "
            "at 1024 pixels anyway).",
            "size",
        )
    return plane


# -- mapping between layers -----------------------------------------------------------------


def affine_between(
    src: Layer, dst: Layer, world_point: Sequence[float]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The affine map from ``src``'s data coordinates to ``dst``'s: ``dst = A @ src + b``.

    Built from the layers' public ``data_to_world``/``world_to_data`` by probing the origin and
    the unit vectors (a composition of affine maps is affine). World axes ``src`` does not have
    are taken from ``world_point``.

    Returns
    -------
    A : numpy.ndarray, shape (dst.ndim, src.ndim)
    b : numpy.ndarray, shape (dst.ndim,)
    """
    k = src.ndim
    base = np.asarray(world_point, dtype=float)
    if len(base) < k:
        base = np.concatenate([np.zeros(k - len(base)), base])
    n = len(base)

    def forward(x: npt.NDArray) -> npt.NDArray:
        w = base.copy()
        w[n - k :] = np.asarray(src.data_to_world(x), dtype=float)
        return np.asarray(dst.world_to_data(w), dtype=float)

    b = forward(np.zeros(k))
    a = np.stack([forward(e) - b for e in np.eye(k)], axis=1)
    return a, b


def _apply(a: npt.NDArray, b: npt.NDArray, coords: npt.NDArray) -> npt.NDArray[np.float64]:
    return np.asarray(coords, dtype=float) @ a.T + b


def _same_grid(a: npt.NDArray, b: npt.NDArray) -> bool:
    return a.shape[0] == a.shape[1] and np.allclose(a, np.eye(len(a))) and np.allclose(b, 0)


def transform_kwargs(layer: Layer) -> dict[str, Any]:
    """Keyword arguments that give a new layer the same data -> world transform as ``layer``."""
    kwargs: dict[str, Any] = {
        "scale": np.asarray(layer.scale),
        "translate": np.asarray(layer.translate),
        "rotate": np.asarray(layer.rotate),
        "shear": np.asarray(layer.shear),
        "affine": np.asarray(layer.affine.affine_matrix),
    }
    for name in ("units", "axis_labels"):  # napari >= 0.6
        value = getattr(layer, name, None)
        if value is not None:
            kwargs[name] = tuple(value)
    return kwargs


def plane_layer_translate(image: Image, plane: Plane) -> npt.NDArray[np.float64]:
    """Translate for a layer with ``image``'s transform whose data holds only ``plane``.

    A layer of shape 1 along the non-displayed axes, with this translate (and ``image``'s
    scale, rotate, shear and affine), sits exactly on the plane.
    """
    ndim = plane.ndim
    offset = np.zeros(ndim)
    for a in plane.not_displayed:
        offset[a] = plane.index[a]

    def physical(x: npt.NDArray) -> npt.NDArray:
        return np.asarray(image.affine.inverse(np.asarray(image.data_to_world(x))), dtype=float)

    return np.asarray(image.translate, dtype=float) + physical(offset) - physical(np.zeros(ndim))


# -- prompts --------------------------------------------------------------------------------


@dataclass
class ShapePrompt:
    """One shape of the Shapes layer on the plane, as SAM prompts.

    Attributes
    ----------
    index : int
        Index of the shape in its layer.
    kind : str
        ``"rectangle"`` (a box prompt) or ``"polygon"``/``"ellipse"`` (box + mask prompt).
    box : numpy.ndarray, shape (4,)
        ``(row0, col0, row1, col1)`` in plane pixels, clipped to the plane.
    mask : numpy.ndarray of bool, shape (H, W), optional
        The filled shape (``None`` for rectangles).
    """

    index: int
    kind: str
    box: npt.NDArray[np.float64]
    mask: npt.NDArray[np.bool_] | None = None


@dataclass
class PlanePrompts:
    """All prompts on one plane, in plane ``(row, col)`` pixels.

    Attributes
    ----------
    points : numpy.ndarray, shape (N, 2)
    labels : numpy.ndarray of int, shape (N,)
        1 positive, 0 negative.
    point_indices : numpy.ndarray of int, shape (N,)
        Their indices in the Points layer.
    shapes : list of ShapePrompt
    masks : list of (int, ShapePrompt)
        Objects of the mask-prompt Labels layer: label value and box + mask.
    mask_digests : dict
        ``{label value: digest}`` of those objects (to skip them once committed).
    problems : list of str
        User-facing reasons why some prompts were ignored (outside the image, ...).
    """

    points: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2)))
    labels: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    point_indices: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    shapes: list[ShapePrompt] = field(default_factory=list)
    masks: list[tuple[int, ShapePrompt]] = field(default_factory=list)
    mask_digests: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and not self.shapes and not self.masks


def points_on_plane(
    points: Points, image: Image, plane: Plane, positive_feature: str = "positive"
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64], list[str]]:
    """The points of ``points`` that lie on ``plane``, mapped to plane pixels.

    Returns
    -------
    rc : numpy.ndarray, shape (N, 2)
        ``(row, col)`` in plane pixels.
    labels : numpy.ndarray, shape (N,)
        1 where the point's ``positive`` feature is true (or missing), else 0.
    indices : numpy.ndarray, shape (N,)
        Indices into the layer.
    problems : list of str
        One message if some points on the plane lie outside the image.
    """
    data = np.asarray(points.data, dtype=float)
    empty = (np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    if len(data) == 0:
        return empty
    a, b = affine_between(points, image, plane.world_point)
    coords = _apply(a, b, data)
    on = plane.on_plane(coords)
    rc = plane.to_plane(coords[on])
    idx = np.flatnonzero(on)
    if positive_feature in points.features:
        positive = np.asarray(points.features[positive_feature], dtype=bool)[idx]
    else:
        positive = np.ones(len(idx), dtype=bool)
    inside = plane.inside(rc)
    problems = []
    if not inside.all():
        bad = rc[~inside][0]
        h, w = plane.shape
        problems.append(
            f"{int((~inside).sum())} point(s) outside the {h} x {w} image were ignored "
            f"(e.g. at row {bad[0]:.0f}, col {bad[1]:.0f})."
        )
    return rc[inside], positive[inside].astype(np.int64), idx[inside], problems


def _polygon_mask(rc: npt.NDArray, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    from skimage.draw import polygon

    mask = np.zeros(shape, dtype=bool)
    rr, cc = polygon(rc[:, 0], rc[:, 1], shape)
    mask[rr, cc] = True
    if not mask.any():  # thinner than a pixel: keep its vertices
        r = np.clip(np.round(rc[:, 0]).astype(int), 0, shape[0] - 1)
        c = np.clip(np.round(rc[:, 1]).astype(int), 0, shape[1] - 1)
        mask[r, c] = True
    return mask


def _ellipse_outline(corners: npt.NDArray) -> npt.NDArray:
    """The ellipse inscribed in the parallelogram of napari's 4 ellipse corners, as a polygon."""
    c = corners.mean(axis=0)
    p = (corners[1] - corners[0]) / 2.0
    q = (corners[3] - corners[0]) / 2.0
    t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
    return c + np.cos(t)[:, None] * p + np.sin(t)[:, None] * q


def _clip_box(rc: npt.NDArray, shape: tuple[int, int]) -> npt.NDArray[np.float64] | None:
    """Bounding box ``(r0, c0, r1, c1)`` of ``rc`` clipped to the plane, None if outside."""
    h, w = shape
    r0, c0 = rc.min(axis=0)
    r1, c1 = rc.max(axis=0)
    if r1 < -0.5 or c1 < -0.5 or r0 > h - 0.5 or c0 > w - 0.5:
        return None
    return np.array(
        [np.clip(r0, 0, h - 1), np.clip(c0, 0, w - 1), np.clip(r1, 0, h - 1), np.clip(c1, 0, w - 1)]
    )


def shapes_on_plane(
    shapes: Shapes, image: Image, plane: Plane
) -> tuple[list[ShapePrompt], list[str]]:
    """Rectangles (box prompts), polygons and ellipses (box + mask prompts) on ``plane``.

    Lines and paths carry no area and are ignored (reported once in ``problems``).
    """
    if len(shapes.data) == 0:
        return [], []
    a, b = affine_between(shapes, image, plane.world_point)
    out: list[ShapePrompt] = []
    outside = ignored = 0
    for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        coords = _apply(a, b, verts)
        if not plane.on_plane(coords).all():
            continue
        rc = plane.to_plane(coords)
        if kind not in ("rectangle", "polygon", "ellipse"):
            ignored += 1
            continue
        if kind == "ellipse":
            rc = _ellipse_outline(rc)
        box = _clip_box(rc, plane.shape)
        if box is None:
            outside += 1
            continue
        mask = None if kind == "rectangle" else _polygon_mask(rc, plane.shape)
        out.append(ShapePrompt(i, kind, box, mask))
    problems = []
    if outside:
        problems.append(f"{outside} shape(s) outside the image were ignored.")
    if ignored:
        problems.append(
            f"{ignored} line/path shape(s) were ignored: draw rectangles (box prompts), or "
            "polygons and ellipses (mask prompts)."
        )
    return out, problems


def _gather(data: Any, idx: Sequence[npt.NDArray]) -> npt.NDArray:
    """``data[idx]`` for integer index arrays, reading only their bounding region."""
    if len(idx[0]) == 0:
        return np.zeros(0, dtype=getattr(data, "dtype", np.int64))
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    region = np.asarray(data[tuple(slice(l, h) for l, h in zip(lo, hi))])
    return region[tuple(i - l for i, l in zip(idx, lo))]


def sample_labels_on_plane(labels: Labels, image: Image, plane: Plane) -> npt.NDArray:
    """The values of ``labels`` at the pixels of ``image``'s ``plane`` (nearest neighbour), (H, W).

    Pixels that fall outside ``labels`` are 0.
    """
    a, b = affine_between(image, labels, plane.world_point)
    shape = tuple(int(s) for s in np.shape(labels.data))
    if _same_grid(a, b) and shape == plane.spatial_shape:
        return np.asarray(labels.data[plane.indexer()])
    h, w = plane.shape
    rr, cc = np.mgrid[0:h, 0:w]
    coords = _apply(a, b, plane.to_nd(np.stack([rr.ravel(), cc.ravel()], axis=1)))
    idx = np.round(coords).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
    out = np.zeros(h * w, dtype=np.asarray(labels.data[(0,) * len(shape)]).dtype)
    out[ok] = _gather(labels.data, tuple(idx[ok].T))
    return out.reshape(h, w)


def mask_prompts_from_labels(
    labels: Labels,
    image: Image,
    plane: Plane,
    skip: dict[int, str] | None = None,
) -> list[tuple[int, ShapePrompt, str]]:
    """Each object of a rough-mask Labels layer on ``plane`` as a box + mask prompt.

    Parameters
    ----------
    skip : dict, optional
        ``{label value: digest}`` of objects already committed; an object is skipped while its
        mask still has that digest (it is used again once it is repainted).

    Returns
    -------
    list of (label value, ShapePrompt, digest)
    """
    values = sample_labels_on_plane(labels, image, plane)
    out = []
    for value in np.unique(values):
        if value == 0:
            continue
        mask = values == value
        digest = _digest(mask)
        if skip and skip.get(int(value)) == digest:
            continue
        rr, cc = np.nonzero(mask)
        box = np.array([rr.min(), cc.min(), rr.max(), cc.max()], dtype=float)
        out.append((int(value), ShapePrompt(-1, "mask", box, mask), digest))
    return out


def _digest(mask: npt.NDArray[np.bool_]) -> str:
    import hashlib

    return hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).hexdigest()


def assemble_objects(prompts: PlanePrompts) -> list[dict[str, Any]]:
    """Group the prompts of a plane into objects, each decoded as one SAM mask.

    Every rectangle, polygon, ellipse and mask-layer object is one object. A point belongs to
    the smallest such box that contains it (so points refine a box); the points inside no box
    form one more object if at least one of them is positive.

    Returns
    -------
    list of dict
        Keyword arguments for :meth:`SamPredictor.segment`: ``points`` ``(N, 2)``, ``labels``
        ``(N,)``, ``box`` ``(4,)``, ``mask_input`` ``(H, W)`` (absent keys are ``None``).
    """
    regions = [s for s in prompts.shapes] + [s for _, s in prompts.masks]
    assigned: list[list[int]] = [[] for _ in regions]
    free: list[int] = []
    areas = [max(s.box[2] - s.box[0], 0.5) * max(s.box[3] - s.box[1], 0.5) for s in regions]
    for i, (r, c) in enumerate(prompts.points):
        best = None
        for j, s in enumerate(regions):
            r0, c0, r1, c1 = s.box
            inside = r0 - 0.5 <= r <= r1 + 0.5 and c0 - 0.5 <= c <= c1 + 0.5
            if inside and (best is None or areas[j] < areas[best]):
                best = j
        (free if best is None else assigned[best]).append(i)

    objects: list[dict[str, Any]] = []
    for s, idx in zip(regions, assigned):
        obj: dict[str, Any] = {"box": s.box, "mask_input": s.mask, "points": None, "labels": None}
        if idx:
            obj["points"] = prompts.points[idx]
            obj["labels"] = prompts.labels[idx]
        objects.append(obj)
    if free and prompts.labels[free].any():
        objects.append(
            {
                "points": prompts.points[free],
                "labels": prompts.labels[free],
                "box": None,
                "mask_input": None,
            }
        )
    return objects


# -- writing --------------------------------------------------------------------------------


def paint_mask(
    target: Labels,
    image: Image,
    plane: Plane,
    mask: npt.NDArray[np.bool_],
    value: int,
    overwrite: bool = False,
) -> int:
    """Write ``value`` into ``target`` where ``mask`` (a plane of ``image``) is set.

    Goes through ``target.data_setitem`` so the edit is on the layer's undo history (wrap
    several calls in ``target.block_history()`` for one undo step). The target may have another
    grid than the image (scale, translate, its own shape): its voxels are mapped back to the
    image plane (nearest neighbour) through the world transforms.

    Parameters
    ----------
    overwrite : bool
        Also write over pixels that already belong to another object (off: they are kept).

    Returns
    -------
    int
        Number of voxels written.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != plane.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the plane {plane.shape}")
    if not mask.any():
        return 0
    shape = np.asarray(np.shape(target.data))
    a, b = affine_between(image, target, plane.world_point)
    if _same_grid(a, b) and tuple(shape) == plane.spatial_shape:
        rr, cc = np.nonzero(mask)
        idx = tuple(np.round(plane.to_nd(np.stack([rr, cc], axis=1))).astype(np.intp).T)
    else:
        idx = _pull_indices(target, image, plane, mask, a, b, shape)
    if len(idx[0]) == 0:
        return 0
    if not overwrite:
        free = _gather(target.data, idx) == 0
        idx = tuple(i[free] for i in idx)
        if len(idx[0]) == 0:
            return 0
    set_labels(target, idx, value)
    return len(idx[0])


def _pull_indices(target, image, plane, mask, a, b, shape) -> tuple[npt.NDArray, ...]:
    """Indices of the target voxels whose centres fall on a set pixel of ``mask``."""
    rr, cc = np.nonzero(mask)
    r0, r1, c0, c1 = rr.min() - 0.5, rr.max() + 0.5, cc.min() - 0.5, cc.max() + 0.5
    # Corners of the mask's bounding voxel box, +-0.5 along the plane's other axes too.
    lo = np.asarray(plane.index, dtype=float) - 0.5
    hi = np.asarray(plane.index, dtype=float) + 0.5
    lo[plane.axes[0]], hi[plane.axes[0]] = r0, r1
    lo[plane.axes[1]], hi[plane.axes[1]] = c0, c1
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(len(lo), -1).T
    mapped = _apply(a, b, corners)
    tlo = np.clip(np.floor(mapped.min(axis=0)).astype(int), 0, shape - 1)
    thi = np.clip(np.ceil(mapped.max(axis=0)).astype(int), 0, shape - 1)
    grid = np.stack(
        np.meshgrid(*[np.arange(l, h + 1) for l, h in zip(tlo, thi)], indexing="ij"), axis=-1
    ).reshape(-1, len(shape))
    back_a, back_b = affine_between(target, image, plane.world_point)
    src = np.round(_apply(back_a, back_b, grid)).astype(np.int64)
    ok = np.ones(len(src), dtype=bool)
    for ax in plane.not_displayed:
        ok &= src[:, ax] == plane.index[ax]
    h, w = plane.shape
    r = src[:, plane.axes[0]]
    c = src[:, plane.axes[1]]
    ok &= (r >= 0) & (r < h) & (c >= 0) & (c < w)
    ok[ok] = mask[r[ok], c[ok]]
    return tuple(np.asarray(grid[ok].T, dtype=np.intp))
