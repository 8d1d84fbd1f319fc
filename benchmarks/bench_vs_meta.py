"""This package against Meta's ``segment-anything``, side by side in one run, same weights.

Measured per 1024 x 1024 slice on the same machine, with the same random weights (a seeded
``vit_b``, written once to a temporary file and loaded by both packages), on the same synthetic
nuclei image:

- embedding time per slice (each package's predictor: ``set_image`` / ``compute_embedding``),
- peak memory: the high-water mark of the resident set (``VmHWM``) of a fresh process that loads
  the model and embeds one slice (the whole process, weights and all), and the growth of the
  resident set during the embedding (sampled from /proc every 2 ms). ``VmHWM`` rather than
  ``ru_maxrss``: Linux carries ``ru_maxrss`` over from the parent across fork and exec, so a
  child's value is never below the parent's size at the fork.
- decode time per click (prompt encoder + mask decoder + upsampling to the slice size, through
  each predictor): three candidate masks per click (``predict(multimask=True)``), and one mask
  per click (Meta: ``predict`` + argmax; ours: ``segment``, which upsamples only that mask),
- the output difference: relative error of the embedding, IoU of the masks, IoU-score error.

Times are CPU time of the measuring process (``time.process_time``; with one thread this is
the wall time the work takes on an idle core), because on a shared machine the wall time
mostly measures the other tenants: the wall time of the embedding is reported as well. Every
measurement runs in a fresh subprocess (so that memory peaks do not mix), and the two
packages alternate, ``--repeats`` times (the median is reported), so that drifting load on a
shared machine hits both alike; ratios are the median of the per-pair ratios, and the spread
is printed. Also timed (ours only): the bfloat16 encoder path (and its
accuracy, down to the masks), batching two slices, and the ``vit_t`` and ``default`` models.

    python benchmarks/bench_vs_meta.py [--threads 1] [--repeats 3] [--clicks 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from napari_sam.models.build import MODEL_CONFIGS, build_sam
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor
from napari_sam.engine.preprocess import estimate_intensity_range, to_rgb_uint8_range
from napari_sam.data.synthetic import make_nuclei_2d

_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- setup (main process) ----------------------------------------------------------------------


def _write_inputs(folder: Path, model: str, size: int, clicks: int) -> None:
    torch.manual_seed(0)
    sam = build_sam(MODEL_CONFIGS[model])
    with torch.no_grad():  # zero-initialised tables would hide the relative-position terms
        for name, p in sam.named_parameters():
            if "rel_pos" in name:
                p.normal_(0.0, 0.1)
    torch.save(sam.state_dict(), folder / "weights.pt")
    image, labels = make_nuclei_2d((size, size), seed=0)
    rgb = to_rgb_uint8_range(image, estimate_intensity_range(image))  # float, 0..255
    np.save(folder / "image.npy", np.ascontiguousarray(np.round(rgb).astype(np.uint8)))
    # one click per object: the object's pixel nearest to its centroid
    rng = np.random.default_rng(0)
    ids = [i for i in np.unique(labels) if i]
    points = []
    for i in rng.permutation(ids)[:clicks]:
        rr, cc = np.nonzero(labels == i)
        j = np.argmin((rr - rr.mean()) ** 2 + (cc - cc.mean()) ** 2)
        points.append((int(rr[j]), int(cc[j])))
    np.save(folder / "points.npy", np.asarray(points))


# -- workers (fresh subprocesses) ---------------------------------------------------------------


class _RssSampler:
    """Peak resident set size of this process while the ``with`` block runs, in bytes."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE


def _peak_rss() -> int:
    """High-water mark of this process's resident set, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _load_model(impl: str, model: str, folder: Path):
    state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    if impl == "meta":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from _reference import reference_sam  # Meta's Sam built to our config

        sam = reference_sam(MODEL_CONFIGS[model])
    else:
        sam = build_sam(MODEL_CONFIGS[model])
    sam.load_state_dict(state)
    del state
    return sam.eval()


def _worker_embed(args, folder: Path) -> dict:
    rgb = np.load(folder / "image.npy")
    if args.impl == "meta" or args.model == "vit_b":
        sam = _load_model(args.impl, args.model, folder)
    else:  # other models: cost only (random weights)
        torch.manual_seed(0)
        sam = build_sam(MODEL_CONFIGS[args.model])
    peak_before = _peak_rss()
    if args.impl == "meta":
        from segment_anything import SamPredictor as MetaPredictor

        predictor = MetaPredictor(sam)

        def embed():
            predictor.set_image(rgb)  # its own no_grad inside
            return [predictor.features]
    else:
        predictor = SamPredictor(sam, precision=args.precision)
        images = [rgb] * args.batch

        def embed():
            embs = predictor.compute_embeddings(images, batch_size=args.batch)
            return [e.features for e in embs]

    with _RssSampler() as rss:
        t, cpu = time.perf_counter(), time.process_time()
        features = embed()
        seconds = (time.perf_counter() - t) / args.batch
        cpu_seconds = (time.process_time() - cpu) / args.batch
    np.save(folder / f"emb_{args.tag}.npy", features[0].float().numpy())
    return {
        "seconds_per_slice": seconds,
        "cpu_seconds_per_slice": cpu_seconds,
        "peak_rss_mb": _peak_rss() / 2**20,
        "peak_rss_before_mb": peak_before / 2**20,
        "rss_growth_mb": (rss.peak - rss.start) / 2**20,
    }


def _worker_decode(args, folder: Path) -> dict:
    sam = _load_model(args.impl, args.model, folder)
    features = torch.from_numpy(np.load(folder / f"emb_{args.embedding}.npy"))
    size = tuple(np.load(folder / "image.npy").shape[:2])
    points = np.load(folder / "points.npy")
    if args.impl == "meta":
        from segment_anything import SamPredictor as MetaPredictor

        predictor = MetaPredictor(sam)  # what set_image() would leave, with the shared embedding
        predictor.features = features
        predictor.original_size = size
        long_side = sam.image_encoder.img_size
        predictor.input_size = predictor.transform.get_preprocess_shape(*size, long_side)
        predictor.is_image_set = True

        def three(r, c):
            return predictor.predict(np.array([[c, r]]), np.array([1]), multimask_output=True)[:2]

        def one(r, c):
            masks, scores, _ = predictor.predict(np.array([[c, r]]), np.array([1]))
            best = int(np.argmax(scores))
            return masks[best], scores[best]
    else:
        predictor = SamPredictor(sam)
        predictor.set_embedding(ImageEmbedding(features, size, sam.img_size))

        def three(r, c):
            return predictor.predict(points=[[r, c]], labels=[1], multimask=True)[:2]

        def one(r, c):
            return predictor.segment(points=[[r, c]], labels=[1])[:2]

    three(*points[0]), one(*points[0])  # warm-up
    times_three, times_one, masks, scores = [], [], [], []
    for r, c in points:
        t = time.process_time()
        three(r, c)
        times_three.append(time.process_time() - t)
        t = time.process_time()
        mask, score = one(r, c)
        times_one.append(time.process_time() - t)
        masks.append(mask)
        scores.append(float(score))
    np.save(folder / f"masks_{args.tag}.npy", np.packbits(np.asarray(masks), axis=-1))
    np.save(folder / f"scores_{args.tag}.npy", np.asarray(scores))
    return {
        "ms_per_click_three": 1000 * statistics.median(times_three),
        "ms_per_click_one": 1000 * statistics.median(times_one),
    }


# -- driver ------------------------------------------------------------------------------------


def _run(folder: Path, args, **worker) -> dict:
    cmd = [sys.executable, __file__, "--worker-dir", str(folder), "--threads", str(args.threads)]
    for key, value in worker.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"worker {worker} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _paired(slow: list[dict], fast: list[dict], key: str) -> str:
    """Median of the per-pair ratios slow / fast, with their range."""
    ratios = sorted(a[key] / b[key] for a, b in zip(slow, fast, strict=False))
    spread = f" (pairs {ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    return f"{statistics.median(ratios):.2f}x faster{spread}"


def _rel_error(folder: Path, a: str, b: str) -> float:
    x, y = np.load(folder / f"emb_{a}.npy"), np.load(folder / f"emb_{b}.npy")
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def _mask_agreement(folder: Path, a: str, b: str) -> tuple[float, float, float]:
    ma, mb = (np.unpackbits(np.load(folder / f"masks_{t}.npy"), axis=-1) for t in (a, b))
    inter = (ma & mb).reshape(len(ma), -1).sum(1)
    union = (ma | mb).reshape(len(ma), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    sa, sb = np.load(folder / f"scores_{a}.npy"), np.load(folder / f"scores_{b}.npy")
    return float(iou.mean()), float(iou.min()), float(np.abs(sa - sb).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json")
    parser.add_argument("--no-extras", action="store_true", help="only ours vs Meta, float32")
    # worker mode (internal)
    parser.add_argument("--worker-dir")
    parser.add_argument("--task", choices=("embed", "decode"))
    parser.add_argument("--impl", choices=("meta", "ours"))
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--embedding")
    parser.add_argument("--tag")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker_dir:
        folder = Path(args.worker_dir)
        work = _worker_embed if args.task == "embed" else _worker_decode
        print(json.dumps(work(args, folder)))  # each predictor in its own grad mode
        return

    folder = Path(tempfile.mkdtemp(prefix="bench_vs_meta_"))
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs; "
        f"inputs in {folder}",
        flush=True,
    )
    _write_inputs(folder, "vit_b", args.size, args.clicks)
    res: dict[str, list[dict]] = {}

    def run(name: str, **worker) -> None:
        r = _run(folder, args, tag=name, **worker)
        res.setdefault(name, []).append(r)
        print(f"  {name}: {r}", flush=True)

    for _ in range(args.repeats):
        run("meta", task="embed", impl="meta")
        run("ours", task="embed", impl="ours")
        if not args.no_extras:
            run("ours_bf16", task="embed", impl="ours", precision="bfloat16")
    if not args.no_extras:
        run("ours_batch2", task="embed", impl="ours", batch=2)
        for model in ("vit_t", "default"):
            for _ in range(args.repeats):
                run(model, task="embed", impl="ours", model=model)
    for _ in range(args.repeats):
        run("dec_meta", task="decode", impl="meta", embedding="meta")
        run("dec_ours", task="decode", impl="ours", embedding="meta")
    if not args.no_extras:
        run("dec_ours_bf16", task="decode", impl="ours", embedding="ours_bf16")

    cpu, wall, dec3, dec1 = (
        "cpu_seconds_per_slice", "seconds_per_slice", "ms_per_click_three", "ms_per_click_one"
    )  # fmt: skip
    meta_s, ours_s = _median(res["meta"], cpu), _median(res["ours"], cpu)
    meta_m, ours_m = _median(res["meta"], "peak_rss_mb"), _median(res["ours"], "peak_rss_mb")
    meta_g, ours_g = _median(res["meta"], "rss_growth_mb"), _median(res["ours"], "rss_growth_mb")
    rel = _rel_error(folder, "meta", "ours")
    iou_mean, iou_min, score_err = _mask_agreement(folder, "dec_meta", "dec_ours")

    def pair(key: str, slow: str, fast: str, fmt: str = ".2f") -> tuple[str, str, str, str]:
        a, b = _median(res[slow], key), _median(res[fast], key)
        return f"{a:{fmt}}", f"{b:{fmt}}", _paired(res[slow], res[fast], key)

    rows = [
        ("embedding, CPU s per 1024 x 1024 slice", *pair(cpu, "meta", "ours")),
        ("embedding, wall s per slice (shared machine)", *pair(wall, "meta", "ours")),
        ("peak RSS of the process, MB", f"{meta_m:.0f}", f"{ours_m:.0f}",
         f"{ours_m / meta_m:.2f}x"),
        ("RSS growth during the embedding, MB", f"{meta_g:.0f}", f"{ours_g:.0f}",
         f"{ours_g / max(meta_g, 1):.2f}x"),
        ("decode, ms per click (3 masks)", *pair(dec3, "dec_meta", "dec_ours", ".1f")),
        ("decode, ms per click (1 mask)", *pair(dec1, "dec_meta", "dec_ours", ".1f")),
        ("embedding relative error", "", f"{rel:.1e}", ""),
        ("mask IoU vs Meta (mean / min)", "", f"{iou_mean:.4f} / {iou_min:.4f}", ""),
        ("IoU-score max abs difference", "", f"{score_err:.1e}", ""),
    ]  # fmt: skip
    summary = {
        "threads": args.threads, "repeats": args.repeats, "clicks": args.clicks,
        "embed_speedup_paired_median": statistics.median(
            a[cpu] / b[cpu] for a, b in zip(res["meta"], res["ours"], strict=True)
        ),
        "peak_rss_ratio": ours_m / meta_m,
        "decode_speedup_three": _median(res["dec_meta"], dec3) / _median(res["dec_ours"], dec3),
        "decode_speedup_one": _median(res["dec_meta"], dec1) / _median(res["dec_ours"], dec1),
        "embedding_rel_error": rel, "mask_iou_mean": iou_mean, "mask_iou_min": iou_min,
    }  # fmt: skip
    if not args.no_extras:
        bf_s = _median(res["ours_bf16"], cpu)
        bf_rel = _rel_error(folder, "meta", "ours_bf16")
        bf_iou = _mask_agreement(folder, "dec_meta", "dec_ours_bf16")
        b2 = _median(res["ours_batch2"], cpu)
        vt = _median(res["vit_t"], cpu)
        df = _median(res["default"], cpu)
        vt_m, df_m = _median(res["vit_t"], "peak_rss_mb"), _median(res["default"], "peak_rss_mb")
        rows += [
            ("ours, bfloat16 encoder: s per slice", f"{meta_s:.2f}", f"{bf_s:.2f}",
             f"{meta_s / bf_s:.2f}x faster"),
            ("ours, bfloat16: embedding rel. error / mask IoU mean, min", "",
             f"{bf_rel:.1e} / {bf_iou[0]:.4f}, {bf_iou[1]:.4f}", ""),
            ("ours, 2 slices per batch: s per slice", f"{meta_s:.2f}", f"{b2:.2f}",
             f"{meta_s / b2:.2f}x faster"),
            ("ours, vit_t (MobileSAM): s per slice", f"{meta_s:.2f}", f"{vt:.2f}",
             f"{meta_s / vt:.1f}x faster; {ours_s / vt:.1f}x our vit_b"),
            ("ours, default (512 px): s per slice", f"{meta_s:.2f}", f"{df:.2f}",
             f"{meta_s / df:.1f}x faster; {ours_s / df:.1f}x our vit_b"),
            ("ours, peak RSS of the process, vit_t / default, MB", "",
             f"{vt_m:.0f} / {df_m:.0f}", ""),
        ]  # fmt: skip
        summary.update(
            bf16_speedup=meta_s / bf_s, bf16_rel_error=bf_rel, bf16_mask_iou_mean=bf_iou[0],
            vit_t_seconds=vt, default_seconds=df, batch2_seconds=b2,
        )  # fmt: skip
    print()
    print("| ViT-B, CPU, CPU time unless noted | Meta segment-anything | napari-sam-nd | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": res}, indent=1))


if __name__ == "__main__":
    main()
