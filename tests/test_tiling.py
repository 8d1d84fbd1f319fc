import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam.models.build import build_model, build_sam, tiny_config
from napari_sam.engine.tiling import TiledPredictor, tile_grid


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_grid_covers_the_image_with_the_overlap():
    grid = tile_grid((1000, 300), 256, 64)
    assert grid.tile_shape == (256, 256)
    assert grid.row_starts[0] == 0 and grid.row_starts[-1] + 256 == 1000
    assert all(b - a <= 256 - 64 for a, b in zip(grid.row_starts, grid.row_starts[1:]))
    assert grid.col_starts[-1] + 256 == 300
    small = tile_grid((100, 80), 256, 64)  # fits: one tile of the image's size
    assert small.tiles() == [(0, 0)] and small.tile_shape == (100, 80)
    assert small.inner_edges((0, 0)) == (False, False, False, False)
    with pytest.raises(ValueError):
        tile_grid((100, 100), 64, 64)
    # every interval no longer than the overlap lies inside one tile
    for start in range(0, 1000 - 64):
        assert any(s <= start and start + 64 <= s + 256 for s in grid.row_starts)


class _Oracle:
    """Stands in for the SAM decoder: returns the labelled object under the first point, as
    seen inside the current tile (what a perfect model sees), so that only the tiling logic is
    tested. Multimask candidates: [the object, all foreground of the tile, nothing]."""

    def __init__(self, labels, grid):
        self.labels, self.grid, self.tile = labels, grid, None
        self.decoded = []

    def set_tile(self, tile):
        self.tile = tile
        self.decoded.append(tile)

    def _crop(self):
        r0, c0, r1, c1 = self.grid.bounds(self.tile)
        return self.labels[r0:r1, c0:c1]

    def segment(self, points, labels, box, mask):
        crop = self._crop()
        if points is not None:
            r, c = np.rint(points[0]).astype(int)
        else:
            r, c = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
        value = crop[r, c]
        return (crop == value) & (value > 0), 0.9, None

    def predict(self, points, labels, multimask=True):
        crop = self._crop()
        r, c = np.rint(points[0]).astype(int)
        value = crop[r, c]
        masks = np.stack([(crop == value) & (value > 0), crop > 0, np.zeros_like(crop, bool)])
        return masks, np.array([0.5, 0.9, 0.1]), None


@pytest.fixture
def oracle_setup():
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    h, w = 300, 300
    labels = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    labels[(yy - 50) ** 2 + (xx - 102) ** 2 < 12**2] = 1  # small, crosses the first column edge
    labels[140:160, 20:280] = 2  # a long bar through three tiles
    labels[161:175, 20:280] = 3  # its neighbour, touching it
    labels[(yy - 250) ** 2 + (xx - 250) ** 2 < 10**2] = 4  # inside one tile only
    tp = TiledPredictor(model, np.zeros((h, w), np.float32), tile_shape=110, overlap=30)
    oracle = _Oracle(labels, tp.grid)
    tp._predictor = oracle
    tp._embedding_for = oracle.set_tile
    return tp, oracle, labels


def test_object_crossing_a_tile_edge_comes_out_whole(oracle_setup):
    tp, oracle, labels = oracle_setup
    obj = labels == 1
    # the naive choice, the first tile holding the click, clips the object at its edge
    first = next(t for t in tp.grid.tiles() if tp.grid.bounds(t)[3] > 102 + 1)
    r0, c0, r1, c1 = tp.grid.bounds(first)
    assert obj[:, c1:].any() or obj[:, :c0].any()
    mask, score = tp.segment(points=[[50, 102]], labels=[1])
    assert np.array_equal(mask, obj) and score == 0.9
    assert len(oracle.decoded) == 1  # the most central tile holds it: one decode


def test_large_object_is_followed_across_tiles_without_leaking(oracle_setup):
    tp, oracle, labels = oracle_setup
    mask, _ = tp.segment(points=[[150, 30]], labels=[1])
    assert np.array_equal(mask, labels == 2)  # whole, and not merged with object 3
    assert len(set(oracle.decoded)) >= 3
    bar, _ = tp.segment(box=[139, 19, 160, 120])
    assert np.array_equal(bar, labels == 2)


def test_object_inside_one_tile_and_bad_prompts(oracle_setup):
    tp, oracle, labels = oracle_setup
    mask, _ = tp.segment(points=[[250, 250]])
    assert np.array_equal(mask, labels == 4) and len(oracle.decoded) == 1
    with pytest.raises(ValueError, match="outside"):
        tp.segment(points=[[350, 10]])
    with pytest.raises(ValueError, match="positive"):
        tp.segment(points=[[10, 10]], labels=[0])
    with pytest.raises(ValueError, match="whole image"):
        tp.segment(mask_input=np.ones((10, 10)))


def test_default_model_keeps_border_nuclei_whole(tmp_path):
    """With the real model: nuclei of which the first tile holding their centre sees at most 85%
    come out clearly better than when decoded in that tile (as the clipping tools do)."""
    from napari_sam.data.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((560, 560), seed=1)
    model = build_model("default")
    tp = TiledPredictor(model, image, tile_shape=320, overlap=80, store=tmp_path / "t.zarr")
    assert tp.grid.shape == (2, 2)
    assert tp.precompute() == 4 and tp.embedder.store.n_done == 4
    tiled, naive = [], []
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        obj = labels == value
        if box is None or obj.sum() < 50:
            continue
        # its deepest pixel: the distance transform of its box grown by one pixel (within the
        # image) is that of the whole image there, at a fraction of the cost
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        depth = ndimage.distance_transform_edt(obj[box])
        r, c = np.add(np.unravel_index(depth.argmax(), depth.shape), [b.start for b in box])
        first = next(t for t in tp.grid.tiles() if _holds(tp.grid.bounds(t), r, c))
        b = tp.grid.bounds(first)
        if obj[b[0]:b[2], b[1]:b[3]].sum() > 0.85 * obj.sum():
            continue  # (nearly) inside that tile: nothing to compare
        piece, _ = tp._decode(first, np.array([[r, c]], float), np.array([1]), None, None)
        naive.append(_iou(tp._paste({first: piece}), obj))
        mask, _ = tp.segment(points=[[r, c]], labels=[1])
        tiled.append(_iou(mask, obj))
    assert len(tiled) >= 5
    assert np.mean(tiled) > np.mean(naive) + 0.1
    # the tile embeddings are persistent: a new predictor reuses them
    again = TiledPredictor(model, image, tile_shape=320, overlap=80, store=tmp_path / "t.zarr")
    assert again.embedder.store.status == "reused" and again.precompute() == 0


def _holds(bounds, r, c):
    return bounds[0] <= r < bounds[2] and bounds[1] <= c < bounds[3]
