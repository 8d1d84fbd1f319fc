"""Large 2D images: embed overlapping tiles, decode a prompt where its object is whole.

An image larger than the model input (whole slides, mosaics, 8k x 8k) would lose detail if
shrunk to the input; instead it is cut into overlapping tiles of the model's input size (or a
multiple of it) that are embedded separately, lazily, and stored like the planes of a stack.

A prompt is decoded in the tile where it is most central. If the mask then touches an inner tile
edge, the object continues outside that tile, and:

1. it is decoded again in the tile where the mask (and the prompt) are most central; an object
   smaller than the overlap always fits entirely in one tile of the grid, so this gives it whole;
2. an object too large for any tile is followed into the neighbouring tiles: each is prompted with
   a point deep inside the part already found, the candidate mask that agrees best with that
   part in the shared area is kept, and the pieces are merged.

Coordinates are napari ``(row, col)`` of the whole image throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .embedding_store import StackEmbedder

__all__ = ["TILE_ABOVE_INPUTS", "TILE_ABOVE_PIXELS", "TileGrid", "TiledPredictor", "is_large",
           "tile_grid"]

#: A plane longer than this many model inputs (and than TILE_ABOVE_PIXELS) is decoded in
#: overlapping tiles, by the viewer and by ``napari-sam segment`` alike: shrunk whole to the
#: model input its small objects would vanish, and decoding it whole takes memory many times
#: the plane's.
TILE_ABOVE_INPUTS = 2
TILE_ABOVE_PIXELS = 1024


def is_large(shape_hw: tuple[int, ...], img_size: int) -> bool:
    """Whether a plane of ``shape_hw`` is decoded in tiles (see :data:`TILE_ABOVE_INPUTS`)."""
    return max(shape_hw[:2]) > max(TILE_ABOVE_INPUTS * img_size, TILE_ABOVE_PIXELS)

#: Pixels from a tile edge within which a mask "touches" the edge.
EDGE_BAND = 2


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering an image.

    Attributes
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    tile_shape : (int, int)
        Size of every tile (the image's size along an axis shorter than the tile).
    row_starts, col_starts : tuple of int
        First row / column of the tiles; tile ``(i, j)`` is
        ``[row_starts[i], row_starts[i] + tile_shape[0]) x [col_starts[j], ...)``.
    """

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles along rows and columns."""
        return (len(self.row_starts), len(self.col_starts))

    def tiles(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.shape[0]) for j in range(self.shape[1])]

    def bounds(self, tile: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(row0, col0, row1, col1)`` of a tile, end exclusive."""
        i, j = tile
        r0, c0 = self.row_starts[i], self.col_starts[j]
        return (r0, c0, r0 + self.tile_shape[0], c0 + self.tile_shape[1])

    def inner_edges(self, tile: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """Whether the tile's (top, left, bottom, right) edge lies inside the image."""
        r0, c0, r1, c1 = self.bounds(tile)
        h, w = self.image_shape
        return (r0 > 0, c0 > 0, r1 < h, c1 < w)

    def margin(self, tile: tuple[int, int], extent: Sequence[float]) -> float:
        """Distance from ``extent`` ``(r0, c0, r1, c1)`` to the tile's inner edges (negative
        when it sticks out; ``inf`` for a tile without inner edges)."""
        r0, c0, r1, c1 = self.bounds(tile)
        er0, ec0, er1, ec1 = extent
        top, left, bottom, right = self.inner_edges(tile)
        d = [math.inf]
        if top:
            d.append(er0 - r0)
        if left:
            d.append(ec0 - c0)
        if bottom:
            d.append(r1 - 1 - er1)
        if right:
            d.append(c1 - 1 - ec1)
        # also outside the image-border sides, an extent must lie in the tile
        if er0 < r0 or ec0 < c0 or er1 > r1 - 1 or ec1 > c1 - 1:
            d.append(min(er0 - r0, ec0 - c0, r1 - 1 - er1, c1 - 1 - ec1))
        return float(min(d))


def _starts(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    if size <= tile:
        return (0,)
    n = math.ceil((size - overlap) / (tile - overlap))
    return tuple(int(round(v)) for v in np.linspace(0, size - tile, n))


def tile_grid(
    image_shape: Sequence[int], tile_shape: int | Sequence[int], overlap: int | Sequence[int]
) -> TileGrid:
    """The grid of tiles of ``tile_shape`` covering ``image_shape`` with at least ``overlap``.

    Tiles are spread evenly so that the last one ends at the image border; neighbours overlap
    by at least ``overlap`` pixels, so any object no larger than the overlap lies entirely in one
    tile.
    """
    h, w = (int(v) for v in image_shape[:2])
    th, tw = (int(tile_shape),) * 2 if np.ndim(tile_shape) == 0 else (int(v) for v in tile_shape)
    oh, ow = (int(overlap),) * 2 if np.ndim(overlap) == 0 else (int(v) for v in overlap)
    if min(h, w) < 1:
        raise ValueError(f"empty image of shape {(h, w)}")
    if min(th, tw) < 1:
        raise ValueError(f"tile_shape must be positive, got {(th, tw)}")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise ValueError(f"overlap {(oh, ow)} must be non-negative and smaller than the tile")
    return TileGrid((h, w), (min(th, h), min(tw, w)), _starts(h, th, oh), _starts(w, tw, ow))


class _TileEmbedder(StackEmbedder):
    """A StackEmbedder whose "planes" are the tiles of one 2D image."""

    def __init__(self, model, image, grid: TileGrid, **kwargs) -> None:
        super().__init__(model, image, **kwargs)
        self.grid = grid
        self.plane_shape = grid.shape
        self.original_size = grid.tile_shape

    def plane_image(self, index):
        r0, c0, r1, c1 = self.grid.bounds(self._check_index(index))
        return np.asarray(self.image[r0:r1, c0:c1])

    def signature(self) -> dict:
        sig = super().signature()
        sig["tiles"] = {
            "tile_shape": list(self.grid.tile_shape),
            "row_starts": list(self.grid.row_starts),
            "col_starts": list(self.grid.col_starts),
        }
        return sig


class TiledPredictor:
    """Prompted segmentation of a 2D image of any size from embeddings of overlapping tiles.

    Parameters
    ----------
    model : Sam
    image : array-like, shape (H, W) or (H, W, 3)
        numpy, dask or zarr; tiles are read when first needed.
    tile_shape : int or (int, int), optional
        Tile size in image pixels; default the model input (``model.img_size``), so pixels are
        embedded at full resolution. A multiple of the input embeds a larger field, downscaled.
    overlap : int or (int, int), optional
        Minimum overlap of neighbouring tiles; default a quarter of the tile. Objects up to this
        size are always decoded within a single tile.
    rgb : bool
        The last axis is RGB.
    intensity_range : (float, float), optional
        One range for the whole image (estimated once by default).
    store : path, "auto" or None
        Persistent tile embeddings, as for :class:`~napari_sam.engine.embedding_store.StackEmbedder`.
    model_name : str, optional
    memory_mb : float
        Bound of the in-memory LRU of tile embeddings.
    max_tiles : int
        At most this many tiles are decoded for one prompt (large objects).
    precision : {"float32", "bfloat16", "float16"}
        Arithmetic of the image encoder.
    refine : bool
        Redraw masks with the model's mask refiner (as :class:`~napari_sam.SamPredictor`).

    Examples
    --------
    >>> tp = TiledPredictor(model, slide, store="auto")  # doctest: +SKIP
    >>> mask, score = tp.segment(points=[[5120, 3001]], labels=[1])  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        image: npt.ArrayLike,
        *,
        tile_shape: int | Sequence[int] | None = None,
        overlap: int | Sequence[int] | None = None,
        rgb: bool = False,
        intensity_range: tuple[float, float] | None = None,
        store=None,
        model_name: str | None = None,
        memory_mb: float = 256,
        max_tiles: int = 16,
        precision: str = "float32",
        refine: bool = True,
    ) -> None:
        from .predictor import SamPredictor

        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        ndim = len(image.shape) - (1 if rgb else 0)
        if ndim != 2:
            raise ValueError(f"TiledPredictor takes one 2D image, got shape {tuple(image.shape)}")
        if tile_shape is None:
            tile_shape = int(model.img_size)
        if overlap is None:
            overlap = tuple(max(1, t // 4) for t in np.broadcast_to(tile_shape, (2,)))
        self.grid = tile_grid(image.shape[:2], tile_shape, overlap)
        self.image_shape = self.grid.image_shape
        self.max_tiles = int(max_tiles)
        self.embedder = _TileEmbedder(
            model, image, self.grid, axes=(0, 1), rgb=rgb, intensity_range=intensity_range,
            store=store, model_name=model_name, memory_mb=memory_mb, precision=precision,
        )
        self._predictor = SamPredictor(model, refine=refine)
        self.last_tiles: list[tuple[int, int]] = []

    def precompute(
        self,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> int:
        """Embed every tile now (see :meth:`StackEmbedder.precompute`)."""
        return self.embedder.precompute(progress=progress, cancelled=cancelled)

    # -- decoding ----------------------------------------------------------------------------

    def segment(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.bool_], float]:
        """Segment one object anywhere in the image.

        Parameters
        ----------
        points : array-like, shape (N, 2), optional
            ``(row, col)`` in image pixels.
        labels : array-like, shape (N,), optional
            1 positive, 0 negative (default all positive).
        box : array-like, shape (4,), optional
            ``(row0, col0, row1, col1)`` in image pixels.
        mask_input : array-like, shape (H, W), optional
            A rough binary mask of the object over the whole image (e.g. the previous result).

        Returns
        -------
        mask : numpy.ndarray, shape (H, W), bool
        score : float
            Predicted IoU of the mask in the tile the prompt was decoded in.
        """
        pts, labs, bx, dense = self._check_prompts(points, labels, box, mask_input)
        extent = _extent(pts, labs, bx, dense)
        if extent is None:
            raise ValueError("no positive prompt: give a positive point, a box or a mask")
        tile = self._best_tile(extent, extent)
        piece, score = self._decode(tile, pts, labs, bx, dense)
        self.last_tiles = [tile]

        # Re-centre: decode again where the mask found so far (and the prompt) fit best.
        for _ in range(2):
            if not self._touches(tile, piece):
                return self._paste({tile: piece}), score
            grown = _union_extent(extent, _mask_extent(piece, self.grid.bounds(tile)))
            better = self._best_tile(grown, extent, exclude=tile)
            if better is None or self.grid.margin(better, grown) <= self.grid.margin(tile, grown):
                break
            tile = better
            piece, score = self._decode(tile, pts, labs, bx, dense)
            self.last_tiles.append(tile)
        if not self._touches(tile, piece):
            return self._paste({tile: piece}), score
        return self._follow(tile, piece, pts, labs), score

    # -- internals ---------------------------------------------------------------------------

    def _check_prompts(self, points, labels, box, mask_input):
        h, w = self.image_shape
        pts = labs = bx = dense = None
        if points is not None and np.size(points) > 0:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            labs = (np.ones(len(pts), dtype=int) if labels is None
                    else np.asarray(labels, dtype=int).reshape(-1))
            if labs.shape != (len(pts),):
                raise ValueError(f"{len(labs)} labels for {len(pts)} points")
            if not np.isfinite(pts).all():
                raise ValueError("point coordinates must be finite")
        if box is not None and np.size(box) > 0:
            bx = np.asarray(box, dtype=np.float64).reshape(-1)
            if bx.shape != (4,):
                raise ValueError(f"box must be (row0, col0, row1, col1), got shape {np.shape(box)}")
            bx = np.array([min(bx[0], bx[2]), min(bx[1], bx[3]),
                           max(bx[0], bx[2]), max(bx[1], bx[3])])
        if mask_input is not None:
            dense = np.asarray(mask_input) != 0
            if dense.shape != (h, w):
                raise ValueError(f"mask_input must be an ({h}, {w}) mask of the whole image")
        corners = []
        if pts is not None:
            corners.append(pts)
        if bx is not None:
            corners.append(bx.reshape(2, 2))
        for c in corners:
            if (c[:, 0] < -0.5).any() or (c[:, 0] > h - 0.5).any() or (c[:, 1] < -0.5).any() \
                    or (c[:, 1] > w - 0.5).any():
                raise ValueError(f"prompt outside the {h}x{w} image")
        return pts, labs, bx, dense

    def _best_tile(self, extent, required, exclude=None):
        """The tile with the largest margin around ``extent`` among those containing
        ``required`` (all tiles if none contains it)."""
        tiles = [t for t in self.grid.tiles() if t != exclude]
        if not tiles:
            return None
        inside = [t for t in tiles if _contains(self.grid.bounds(t), required)]
        pool = inside or tiles
        return max(pool, key=lambda t: (self.grid.margin(t, extent),
                                        -_centre_distance(self.grid.bounds(t), extent)))

    def _embedding_for(self, tile):
        self._predictor.set_embedding(self.embedder.get(tile), self.embedder.plane_image(tile),
                                      self.embedder.intensity_range)

    def _local(self, tile, pts, labs, bx, dense):
        r0, c0, r1, c1 = self.grid.bounds(tile)
        lp = ll = lb = ld = None
        if pts is not None:
            keep = ((pts[:, 0] >= r0 - 0.5) & (pts[:, 0] <= r1 - 0.5)
                    & (pts[:, 1] >= c0 - 0.5) & (pts[:, 1] <= c1 - 0.5))
            if keep.any():
                lp, ll = pts[keep] - (r0, c0), labs[keep]
        if bx is not None:
            lb = np.clip(bx - (r0, c0, r0, c0), 0, [r1 - r0 - 1, c1 - c0 - 1] * 2)
        if dense is not None:
            ld = dense[r0:r1, c0:c1]
            if not ld.any():
                ld = None
        return lp, ll, lb, ld

    def _decode(self, tile, pts, labs, bx, dense):
        """Decode the prompt in one tile: (mask of the tile (th, tw), score)."""
        lp, ll, lb, ld = self._local(tile, pts, labs, bx, dense)
        if lp is None and lb is None and ld is None:
            return np.zeros(self.grid.tile_shape, bool), 0.0
        self._embedding_for(tile)
        mask, score, _ = self._predictor.segment(lp, ll, lb, ld)
        return mask, score

    def _candidates(self, tile, seed_rc, pts, labs):
        """Multimask candidates (K, th, tw) for a seed point plus the user's points in the tile."""
        lp, ll, _, _ = self._local(tile, pts, labs, None, None)
        r0, c0, _, _ = self.grid.bounds(tile)
        seed = np.array([[seed_rc[0] - r0, seed_rc[1] - c0]], dtype=np.float64)
        points = seed if lp is None else np.concatenate([seed, lp])
        labels = np.ones(1, int) if ll is None else np.concatenate([[1], ll])
        self._embedding_for(tile)
        masks, _, _ = self._predictor.predict(points, labels, multimask=len(points) == 1)
        return masks

    def _touches(self, tile, piece) -> list[tuple[int, int]]:
        """Grid steps ``(di, dj)`` towards the inner edges the mask touches."""
        top, left, bottom, right = self.grid.inner_edges(tile)
        b = EDGE_BAND
        rows = [(-1, top and piece[:b].any()), (1, bottom and piece[-b:].any())]
        cols = [(-1, left and piece[:, :b].any()), (1, right and piece[:, -b:].any())]
        di = [d for d, hit in rows if hit]
        dj = [d for d, hit in cols if hit]
        steps = [(d, 0) for d in di] + [(0, d) for d in dj] + [(a, c) for a in di for c in dj]
        return steps

    def _follow(self, tile, piece, pts, labs):
        """Merge a large object across tiles, starting from ``piece`` decoded in ``tile``."""
        from scipy import ndimage

        h, w = self.image_shape
        union = np.zeros((h, w), bool)
        known = np.zeros((h, w), bool)
        r0, c0, r1, c1 = self.grid.bounds(tile)
        union[r0:r1, c0:c1] = piece
        known[r0:r1, c0:c1] = True
        visited = {tile}
        queue = [(tile, s) for s in self._touches(tile, piece)]
        ni, nj = self.grid.shape
        while queue and len(visited) < self.max_tiles:
            (i, j), (di, dj) = queue.pop(0)
            nb = (i + di, j + dj)
            if not (0 <= nb[0] < ni and 0 <= nb[1] < nj) or nb in visited:
                continue
            visited.add(nb)
            b0, b1, b2, b3 = self.grid.bounds(nb)
            # a seed deep inside the known part of the object, well inside the neighbour
            m = min(16, max(EDGE_BAND + 1, min(self.grid.tile_shape) // 16))
            shared = union[b0:b2, b1:b3].copy()
            shared[:m], shared[-m:], shared[:, :m], shared[:, -m:] = False, False, False, False
            if not shared.any():
                continue
            depth = ndimage.distance_transform_edt(union[b0:b2, b1:b3]) * shared
            sr, sc = np.unravel_index(int(np.argmax(depth)), depth.shape)
            cands = self._candidates(nb, (sr + b0, sc + b1), pts, labs)
            overlap_known = known[b0:b2, b1:b3]
            ref = union[b0:b2, b1:b3] & overlap_known
            best, best_iou = None, 0.0
            for cand in cands:
                c = cand & overlap_known
                inter = np.logical_and(c, ref).sum()
                uni = np.logical_or(c, ref).sum()
                iou = inter / uni if uni else 0.0
                if iou > best_iou:
                    best, best_iou = cand, iou
            if best is None or best_iou < 0.5:
                continue
            union[b0:b2, b1:b3] |= best
            known[b0:b2, b1:b3] = True
            self.last_tiles.append(nb)
            queue.extend((nb, s) for s in self._touches(nb, best))
        return union

    def _paste(self, pieces: dict) -> npt.NDArray[np.bool_]:
        out = np.zeros(self.image_shape, bool)
        for tile, piece in pieces.items():
            r0, c0, r1, c1 = self.grid.bounds(tile)
            out[r0:r1, c0:c1] |= piece
        return out


def _extent(pts, labs, bx, dense):
    """``(r0, c0, r1, c1)`` of the positive prompts (``None`` without any)."""
    parts = []
    if pts is not None and (labs == 1).any():
        p = pts[labs == 1]
        parts.append((p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()))
    if bx is not None:
        parts.append(tuple(bx))
    if dense is not None and dense.any():
        rows, cols = np.nonzero(dense.any(axis=1))[0], np.nonzero(dense.any(axis=0))[0]
        parts.append((rows[0], cols[0], rows[-1], cols[-1]))
    if not parts:
        return None
    return _union_extent(*parts)


def _union_extent(*extents):
    a = np.asarray(extents, dtype=np.float64)
    return (a[:, 0].min(), a[:, 1].min(), a[:, 2].max(), a[:, 3].max())


def _mask_extent(piece, bounds):
    r0, c0, _, _ = bounds
    rows, cols = np.nonzero(piece.any(axis=1))[0], np.nonzero(piece.any(axis=0))[0]
    if rows.size == 0:
        return (r0, c0, r0, c0)
    return (rows[0] + r0, cols[0] + c0, rows[-1] + r0, cols[-1] + c0)


def _contains(bounds, extent) -> bool:
    r0, c0, r1, c1 = bounds
    return extent[0] >= r0 and extent[1] >= c0 and extent[2] <= r1 - 1 and extent[3] <= c1 - 1


def _centre_distance(bounds, extent) -> float:
    r0, c0, r1, c1 = bounds
    return math.hypot((r0 + r1 - 1) / 2 - (extent[0] + extent[2]) / 2,
                      (c0 + c1 - 1) / 2 - (extent[1] + extent[3]) / 2)
