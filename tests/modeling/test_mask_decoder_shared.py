"""Many prompts on one image: the image tokens are projected once in the decoder's first layer.

The shared path (one image embedding, the no-mask dense embedding as an expanded view) must
give exactly what the per-prompt path gives.
"""

from __future__ import annotations

import torch

from napari_sam.models.build import build_sam, tiny_config


def test_shared_image_tokens_match_the_per_prompt_path():
    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    pe = model.prompt_encoder.get_dense_pe()
    h, w = model.prompt_encoder.image_embedding_size
    emb = torch.randn(1, model.prompt_encoder.embed_dim, h, w)
    n = 5
    points = (torch.rand(n, 2, 2) * model.img_size, torch.tensor([[1, 0]] * n))
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        assert dense.stride(0) == 0  # the no-mask embedding is an expanded view
        shared = model.mask_decoder.predict_masks(emb, pe, sparse, dense)
        per_prompt = model.mask_decoder.predict_masks(
            emb.expand(n, -1, -1, -1).contiguous(), pe, sparse, dense.contiguous()
        )
    torch.testing.assert_close(shared[0], per_prompt[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[1], per_prompt[1], rtol=1e-5, atol=1e-5)
    assert shared[0].shape[0] == n
