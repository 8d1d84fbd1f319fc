"""Which memories a frame attends to, as SAM 2.1 selects them, flattened into tokens.

For frame ``f`` and one object's :class:`~napari_sam.modeling.sam2.sam2.MemoryBank`:

- spatial memories: every conditioning (prompted) frame, then the ``num_maskmem - 1`` frames
  just before ``f`` in the tracking direction (``f - 1 ... f - 6``, or ``f + 1 ...`` in
  reverse), each with a learned temporal encoding of its distance;
- object pointers: the conditioning frames not after ``f`` (not before, in reverse), then
  the tracked frames within ``max_obj_ptrs_in_encoder`` of ``f``, each with a sine encoding
  of its signed temporal distance. A ``C``-wide pointer is split into ``C / mem_dim`` tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .sam2 import MemoryBank, Sam2

__all__ = ["memory_tokens", "sine_1d", "used_frames"]


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1D sine/cosine encoding: ``(P,)`` positions -> ``(P, dim)`` (sines, then cosines)."""
    half = dim // 2
    dim_t = torch.arange(half, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * (dim_t // 2) / half)
    x = positions.float()[:, None] / dim_t
    return torch.cat([x.sin(), x.cos()], dim=-1)


def used_frames(frame_idx: int, num_maskmem: int, max_ptrs: int, reverse: bool) -> range:
    """The non-conditioning frames that frame ``frame_idx`` may read (memories or pointers)."""
    reach = max(num_maskmem - 1, max_ptrs - 1)
    if reverse:
        return range(frame_idx + 1, frame_idx + reach + 1)
    return range(frame_idx - reach, frame_idx)


def memory_tokens(
    model: Sam2, frame_idx: int, bank: MemoryBank, num_frames: int | None, reverse: bool, b: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The memory tokens of frame ``frame_idx`` for a batch of ``b`` objects.

    Returns
    -------
    memory, pos : torch.Tensor, shape (b, M, mem_dim)
        Spatial memory tokens (whole ``h*w`` grids, row-major) then object-pointer tokens.
    n_ptr : int
        How many of the last tokens are object pointers (no rotary encoding).
    """
    if not bank.cond:
        raise ValueError("tracking needs at least one prompted (conditioning) frame")
    if num_frames is None or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames}")
    device = model.device
    mem, mem_pos = [], []
    step = -1 if reverse else 1
    chosen = [(0, m) for m in bank.cond.values()]
    for t_pos in range(1, model.num_maskmem):
        prev = bank.non_cond.get(frame_idx - step * (model.num_maskmem - t_pos))
        chosen.append((t_pos, prev))
    for t_pos, prev in chosen:
        if prev is None or prev.features is None:
            continue
        mem.append(prev.features.to(device).flatten(2).transpose(1, 2))
        enc = prev.pos.to(device).flatten(2).transpose(1, 2)
        mem_pos.append(enc + model.maskmem_tpos_enc[model.num_maskmem - t_pos - 1])

    max_ptrs = min(num_frames, model.max_obj_ptrs_in_encoder)
    ptrs = [
        ((frame_idx - t) * step, m.obj_ptr)
        for t, m in bank.cond.items()
        if (t >= frame_idx if reverse else t <= frame_idx)
    ]
    for t_diff in range(1, max_ptrs):
        t = frame_idx - step * t_diff
        if t < 0 or t >= num_frames:
            break
        m = bank.non_cond.get(t)
        if m is not None:
            ptrs.append((t_diff, m.obj_ptr))
    n_ptr = 0
    if ptrs:
        c, md = model.hidden_dim, model.mem_dim
        obj_ptrs = torch.stack([p for _, p in ptrs], dim=1).to(device)  # (b, P, C)
        t_max = max(max_ptrs - 1, 1)
        where = torch.tensor([t for t, _ in ptrs], device=device)
        obj_pos = model.obj_ptr_tpos_proj(sine_1d(where / t_max, c))  # (P, mem_dim)
        obj_pos = obj_pos[None].expand(obj_ptrs.shape[0], -1, -1)
        if md < c:
            # each pointer becomes C / mem_dim consecutive tokens sharing its position
            obj_ptrs = obj_ptrs.reshape(obj_ptrs.shape[0], -1, md)
            obj_pos = obj_pos.repeat_interleave(c // md, dim=1)
        mem.append(obj_ptrs)
        mem_pos.append(obj_pos)
        n_ptr = obj_ptrs.shape[1]
    memory = torch.cat([m.expand(b, -1, -1).float() for m in mem], dim=1)
    pos = torch.cat([p.expand(b, -1, -1).float() for p in mem_pos], dim=1)
    return memory, pos, n_ptr
