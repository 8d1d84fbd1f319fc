"""What storing embeddings in float16 and decoding large images in tiles do to the masks.

float16: for each held-out synthetic image, the embedding is computed once in float32 and rounded
to float16 (as the embedding store keeps it); every object is prompted with one point (its
innermost pixel) and with its box, decoded against both embeddings, and the two masks compared
(IoU between them, and each one's IoU with the ground truth).

tiling: on a larger image, nuclei that the first tile holding their centre sees only partly
(<= 85 %) are segmented (a) in that tile, clipped, as tools without tile merging do, and (b) with
:class:`napari_sam.engine.tiling.TiledPredictor`; IoU with the ground truth is compared.

Usage::

    nice python benchmarks/measure_embedding_store.py fp16 --model default --images 4
    nice python benchmarks/measure_embedding_store.py fp16 --model vit_b --random --images 3
    nice python benchmarks/measure_embedding_store.py tiling --images 3
    nice python benchmarks/measure_embedding_store.py tiling --images 3 --settings default
    nice python benchmarks/measure_embedding_store.py tiling --images 3 --tile 160 --overlap 24
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy import ndimage


def _iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


def _objects(labels, min_area=50):
    for value in range(1, int(labels.max()) + 1):
        obj = labels == value
        if obj.sum() < min_area:
            continue
        rows, cols = np.nonzero(obj)
        r0, c0, r1, c1 = rows.min(), cols.min(), rows.max(), cols.max()
        depth = ndimage.distance_transform_edt(np.pad(obj[r0 : r1 + 1, c0 : c1 + 1], 1))
        r, c = np.unravel_index(depth.argmax(), depth.shape)
        yield obj, (int(r + r0 - 1), int(c + c0 - 1)), (r0, c0, r1, c1)


def measure_fp16(model_name: str, random: bool, n_images: int, size: int) -> dict:
    from napari_sam import SamPredictor, build_model
    from napari_sam.engine.predictor import ImageEmbedding
    from napari_sam.engine.preprocess import estimate_intensity_range
    from napari_sam.data.synthetic import make_nuclei_2d, random_settings

    torch.manual_seed(0)
    model = build_model(model_name, pretrained=not random)
    pred = SamPredictor(model)
    rel_errors, point_agree, box_agree, gt32, gt16 = [], [], [], [], []
    t0 = time.monotonic()
    for i in range(n_images):
        rng = np.random.default_rng(1000 + i)
        image, labels = make_nuclei_2d((size, size), seed=rng,
                                       settings=random_settings(rng, held_out=True))
        emb32 = pred.compute_embedding(image, estimate_intensity_range(image))
        f16 = emb32.features.half().float()
        rel_errors.append(float((f16 - emb32.features).norm() / emb32.features.norm()))
        emb16 = ImageEmbedding(f16, emb32.original_size, emb32.img_size)
        for obj, point, box in _objects(labels):
            masks = {}
            for key, emb in (("32", emb32), ("16", emb16)):
                pred.set_embedding(emb)
                masks[key + "p"] = pred.segment([point], [1])[0]
                masks[key + "b"] = pred.segment(box=box)[0]
            point_agree.append(_iou(masks["32p"], masks["16p"]))
            box_agree.append(_iou(masks["32b"], masks["16b"]))
            gt32.append(_iou(masks["32p"], obj))
            gt16.append(_iou(masks["16p"], obj))
    pa, ba = np.array(point_agree), np.array(box_agree)
    return {
        "model": model_name + (" (random weights)" if random else ""),
        "images": n_images, "size": size, "objects": len(pa),
        "embedding_rel_error_mean": float(np.mean(rel_errors)),
        "embedding_rel_error_max": float(np.max(rel_errors)),
        "mask_iou_fp16_vs_fp32_point_mean": float(pa.mean()),
        "mask_iou_fp16_vs_fp32_point_min": float(pa.min()),
        "mask_iou_fp16_vs_fp32_box_mean": float(ba.mean()),
        "mask_iou_fp16_vs_fp32_box_min": float(ba.min()),
        "identical_masks_fraction": float(np.mean(np.r_[pa, ba] == 1.0)),
        "gt_miou_1point_fp32": float(np.mean(gt32)),
        "gt_miou_1point_fp16": float(np.mean(gt16)),
        "seconds": round(time.monotonic() - t0, 1),
    }


def measure_tiling(n_images: int, size: int, tile: int, overlap: int, held_out: bool) -> dict:
    from napari_sam import build_model
    from napari_sam.data.synthetic import make_nuclei_2d, random_settings
    from napari_sam.engine.tiling import TiledPredictor

    model = build_model("default")
    naive, tiled, tiles_used = [], [], []
    for i in range(n_images):
        rng = np.random.default_rng(2000 + i)
        settings = random_settings(rng, held_out=True) if held_out else None
        image, labels = make_nuclei_2d((size, size), seed=rng, settings=settings)
        tp = TiledPredictor(model, image, tile_shape=tile, overlap=overlap)
        grid = tp.grid
        for obj, (r, c), _ in _objects(labels):
            first = next(t for t in grid.tiles() if grid.bounds(t)[0] <= r < grid.bounds(t)[2]
                         and grid.bounds(t)[1] <= c < grid.bounds(t)[3])
            b = grid.bounds(first)
            if obj[b[0]:b[2], b[1]:b[3]].sum() > 0.85 * obj.sum():
                continue
            piece, _ = tp._decode(first, np.array([[r, c]], float), np.array([1]), None, None)
            naive.append(_iou(tp._paste({first: piece}), obj))
            mask, _ = tp.segment([[r, c]], [1])
            tiled.append(_iou(mask, obj))
            tiles_used.append(len(tp.last_tiles))
    return {
        "images": n_images, "size": size, "tile": tile, "overlap": overlap,
        "settings": "held-out" if held_out else "default", "border_objects": len(tiled),
        "miou_clipped_first_tile": float(np.mean(naive)),
        "miou_tiled": float(np.mean(tiled)),
        "mean_tiles_decoded": float(np.mean(tiles_used)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["fp16", "tiling"])
    p.add_argument("--model", default="default")
    p.add_argument("--random", action="store_true", help="random weights of that architecture")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", choices=["held-out", "default"], default="held-out",
                   help="synthetic image settings for tiling (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "fp16":
        out = measure_fp16(args.model, args.random, args.images, args.size or 384)
    else:
        out = measure_tiling(args.images, args.size or 1200, args.tile, args.overlap,
                             args.settings == "held-out")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
