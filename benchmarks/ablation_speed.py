"""What each CPU optimisation of the encoder and of the decode path is worth, step by step.

Each step is switched off by putting back the plain computation it replaced (monkeypatching, in
this process only), and the variants are timed alternately on the same ViT-B-sized model with
random weights and the same 1024 x 1024 slice; the median of ``--repeats`` runs is reported.
The steps are cumulative, from the plain implementation to the shipped one. Times are CPU
time (``time.process_time``), which a shared machine disturbs much less than wall time.

    python benchmarks/ablation_speed.py [--threads 1] [--repeats 3] [--clicks 20]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_sam.models.build import MODEL_CONFIGS, build_sam
from napari_sam.modeling import MaskDecoder, MLPBlock, image_encoder
from napari_sam.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer
from napari_sam.modeling.image_encoder import PatchEmbed
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor


def _plain_patch_embed(self, x):
    return self.proj(x).permute(0, 2, 3, 1)  # a permuted view, strides leak downstream


def _plain_mlp(self, x):
    return self.lin2(self.act(self.lin1(x)))


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _encoder_variant(step: int) -> contextlib.ExitStack:
    """Steps: 0 plain, 1 + contiguous token grid, 2 + cache-sized bias pieces, 3 + in-place GELU."""
    stack = contextlib.ExitStack()
    if step < 1:
        stack.enter_context(_patched(PatchEmbed, "forward", _plain_patch_embed))
    if step < 2:  # whole heads at a time, 256 MB of bias (the previous budget)
        stack.enter_context(_patched(image_encoder, "_BIAS_BUDGET_BYTES", 256 * 2**20))
    if step < 3:
        stack.enter_context(_patched(MLPBlock, "forward", _plain_mlp))
    return stack


def _plain_transformer(self, image_embedding, image_pe, point_embedding):
    keys = image_embedding.flatten(2).permute(0, 2, 1)  # permuted views: copied by every linear
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = point_embedding
    for layer in self.layers:
        queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
    q = queries + point_embedding
    k = keys + key_pe
    queries = queries + self.final_attn_token_to_image(q=q, k=k, v=keys)
    return self.norm_final_attn(queries), keys


def _plain_block(self, queries, keys, query_pe, key_pe):
    if self.skip_first_layer_pe:
        queries = self.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + self.self_attn(q=q, k=q, v=queries)
    queries = self.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe
    queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
    queries = self.norm3(queries + self.mlp(queries))
    q = queries + query_pe
    k = keys + key_pe  # recomputed although the keys did not change
    keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
    return queries, keys


def _plain_predict_masks(self, image_embeddings, image_pe, sparse, dense):
    bs = sparse.shape[0]
    tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens[None].expand(bs, -1, -1), sparse], dim=1)
    src = image_embeddings.expand(bs, -1, -1, -1) + dense
    pos_src = image_pe.expand(bs, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = self.transformer(src, pos_src, tokens)
    upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # channels first
    hyper_in = torch.stack(
        [mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
    return masks, self.iou_prediction_head(hs[:, 0, :])


def _plain_upscale(low_res, geometry):
    x = F.interpolate(low_res, (geometry.img_size,) * 2, mode="bilinear", align_corners=False)
    h, w = geometry.input_size
    x = x[..., :h, :w]
    return F.interpolate(x, geometry.original_size, mode="bilinear", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_sam(MODEL_CONFIGS["vit_b"])
    x = torch.randn(1, 3, 1024, 1024)

    names = [
        "plain (SDPA + rel-pos mask in 256 MB head chunks)",
        "+ contiguous token grid from the patch embedding",
        "+ rel-pos mask in 4 MB pieces (never N x N)",
        "+ in-place GELU in the MLPs",
    ]
    times: dict[str, list[float]] = {n: [] for n in names}
    no_grad = "shipped, under no_grad instead of inference_mode"
    times[no_grad] = []
    for _ in range(args.repeats):
        for step, name in enumerate(names):
            with _encoder_variant(step), torch.inference_mode():
                t = time.process_time()
                sam.image_encoder(x)
                times[name].append(time.process_time() - t)
        with torch.no_grad():
            t = time.process_time()
            sam.image_encoder(x)
            times[no_grad].append(time.process_time() - t)
    print(f"Encoder, ViT-B, 1024 x 1024, {args.threads} thread(s), median of {args.repeats}:")
    print("| step | CPU s per slice |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} |")

    predictor = SamPredictor(sam)
    with torch.inference_mode():
        features = sam.image_encoder(x)
    predictor.set_embedding(ImageEmbedding(features, (1024, 1024), 1024))
    pe = sam.prompt_encoder
    clicks = np.random.default_rng(0).uniform(0, 1023, (args.clicks, 2))

    def plain_pe():
        return pe.get_dense_pe()

    variants = {  # (decoder step, dense PE, upscaling, mode)
        "predict (3 masks), plain": (0, plain_pe, _plain_upscale, "three"),
        "+ contiguous image tokens, shared key sum": (1, plain_pe, _plain_upscale, "three"),
        "+ channels-last transposed convolutions": (2, plain_pe, _plain_upscale, "three"),
        "+ dense positional encoding cached per predictor": (2, None, _plain_upscale, "three"),
        "+ upscaling: crop first, one channel per mask, no identity resize": (
            2, None, None, "three"
        ),
        "1 mask per click, all 3 candidates upscaled": (2, None, None, "argmax"),
        "1 mask per click, only the chosen one upscaled (segment)": (2, None, None, "one"),
    }
    dtimes: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.repeats):
        for name, (step, pe_fn, up_fn, mode) in variants.items():
            with contextlib.ExitStack() as stack:
                if step < 1:
                    stack.enter_context(_patched(TwoWayTransformer, "forward", _plain_transformer))
                    stack.enter_context(_patched(TwoWayAttentionBlock, "forward", _plain_block))
                if step < 2:
                    stack.enter_context(
                        _patched(MaskDecoder, "predict_masks", _plain_predict_masks)
                    )
                if pe_fn is not None:
                    stack.enter_context(_patched(predictor, "_get_dense_pe", pe_fn))
                if up_fn is not None:
                    stack.enter_context(_patched(predictor, "_upscale", up_fn))
                for r, c in clicks:
                    t = time.process_time()
                    if mode == "one":
                        predictor.segment(points=[[r, c]], labels=[1])
                    else:
                        masks, scores, _ = predictor.predict(points=[[r, c]], labels=[1])
                        if mode == "argmax":
                            masks[int(np.argmax(scores))]
                    dtimes[name].append(time.process_time() - t)
    print(f"\nDecode per click, 256-wide SAM decoder, 1024 x 1024 slice, median of "
          f"{args.repeats} x {args.clicks} clicks:")
    print("| step | CPU ms per click |\n|---|---|")
    for name, ts in dtimes.items():
        print(f"| {name} | {1000 * statistics.median(ts):.1f} |")


if __name__ == "__main__":
    main()
