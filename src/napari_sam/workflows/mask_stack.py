"""What a propagation run returns: per object, its masks by slice, kept as bounding-box crops.

Masks are ``(H, W)`` bool arrays of one slice; slice indices count along the propagation axis.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..engine.masks import bounding_box

__all__ = ["MaskStack", "Propagation"]


class MaskStack(MutableMapping):
    """``slice index -> (H, W) bool mask`` of one object, kept as bounding-box crops.

    A propagated nucleus covers a few hundred pixels of a slice of millions: storing whole
    masks cost ``H x W`` bytes per object and slice (16 objects through 100 slices of 2048 px:
    6.7 GB). Here each mask is stored as its bounding box; reading ``stack[i]`` rebuilds the
    whole mask, so this behaves as the ``dict`` of masks it replaces.
    """

    def __init__(self, masks: Mapping[int, npt.ArrayLike] | None = None) -> None:
        self._crops: dict[int, tuple[tuple[int, int], int, int, np.ndarray]] = {}
        for i, mask in (masks or {}).items():
            self[i] = mask

    def __setitem__(self, index: int, mask: npt.ArrayLike) -> None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2:
            raise ValueError(f"a mask must be 2D (H, W), got shape {m.shape}")
        self.set_crop(index, 0, 0, m, m.shape)

    def set_crop(self, index: int, row0: int, col0: int, part: npt.ArrayLike,
                 shape: tuple[int, int]) -> None:
        """Store slice ``index``'s mask given as ``part`` ``(h, w)`` at ``(row0, col0)`` of a
        slice of ``shape`` (zero elsewhere), without building the whole mask; kept as its
        bounding box, as ``stack[index] = mask``."""
        m = np.asarray(part, dtype=bool)
        box = bounding_box(m)
        if box is None:
            entry = (tuple(shape), 0, 0, np.zeros((0, 0), dtype=bool))
        else:
            r0, c0, r1, c1 = box
            entry = (tuple(shape), row0 + r0, col0 + c0, m[r0:r1 + 1, c0:c1 + 1].copy())
        self._crops[int(index)] = entry

    def slice_shape(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of slice ``index``'s mask (without building it)."""
        return tuple(self._crops[index][0])

    def __getitem__(self, index: int) -> npt.NDArray[np.bool_]:
        shape, r0, c0, crop = self._crops[index]
        out = np.zeros(shape, dtype=bool)
        out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    def __delitem__(self, index: int) -> None:
        del self._crops[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._crops)

    def __len__(self) -> int:
        return len(self._crops)

    def crop(self, index: int) -> tuple[int, int, npt.NDArray[np.bool_]]:
        """``(row0, col0, mask inside its bounding box)`` of slice ``index`` (no copy)."""
        _, r0, c0, crop = self._crops[index]
        return r0, c0, crop

    def copy(self) -> MaskStack:
        """A new stack with the same masks (the crops are shared, never written in place)."""
        out = MaskStack()
        out._crops = dict(self._crops)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the masks."""
        return sum(c.nbytes for *_, c in self._crops.values())


@dataclass
class Propagation:
    """The result of :func:`propagate`.

    Attributes
    ----------
    masks : dict
        ``object_id -> slice index -> (H, W) bool mask`` (a :class:`MaskStack` per object, which
        keeps each mask as its bounding box); only slices where the object was found. Masks of
        different objects may overlap here; :meth:`to_labels` resolves that.
    complete : bool
        False if the run was cancelled (``masks`` holds what was done until then).
    scores : dict
        ``object_id -> slice index -> predicted IoU`` of each mask (``inf`` for a mask given as
        a seed, which is never overruled).
    stopped : dict
        ``object_id -> {"up": reason, "down": reason}``: why propagation ended in each direction
        (``"end of stack"``, ``"max_slices"``, ``"anchor"``, ``"empty"``, ``"score"``,
        ``"stability"``, ``"growth"``, ``"overlap"``, ``"regrowth"``, ``"contrast"``,
        ``"cancelled"``).
    """

    masks: dict[int, MutableMapping[int, npt.NDArray[np.bool_]]]
    complete: bool
    scores: dict[int, dict[int, float]] = field(default_factory=dict)
    stopped: dict[int, dict[str, str]] = field(default_factory=dict)

    def slices(self, object_id: int) -> list[int]:
        """Sorted slice indices where ``object_id`` was segmented."""
        return sorted(self.masks.get(object_id, {}))

    def to_labels(
        self,
        n_slices: int,
        shape_hw: tuple[int, int],
        ids: dict[int, int] | None = None,
    ) -> npt.NDArray[np.int32]:
        """Paint all objects into one label volume without overlaps.

        Parameters
        ----------
        n_slices : int
            Length of the propagation axis.
        shape_hw : (int, int)
            ``(H, W)`` of a slice.
        ids : dict, optional
            ``object_id -> label value``; by default each object is painted with its own id.

        Returns
        -------
        numpy.ndarray, shape (n_slices, H, W), int32
            0 is background. A pixel claimed by several objects goes to the one with the higher
            score on that slice (a seed mask always wins; ties go to the smaller object id).
        """
        shape = (int(n_slices), *(int(v) for v in shape_hw))
        out = np.zeros(shape, dtype=np.int32)
        best = np.full(shape, -np.inf, dtype=np.float32)
        for oid in sorted(self.masks):
            value = int(oid if ids is None else ids[oid])
            stack = self.masks[oid]
            if not isinstance(stack, MaskStack):  # a plain mapping of whole masks
                stack = MaskStack(stack)
            for i in stack:
                if not 0 <= i < shape[0]:
                    raise ValueError(f"object {oid} has a mask on slice {i}, outside {n_slices}")
                mask_shape, r0, c0, mask = stack._crops[i]  # paint the bounding box only
                if tuple(mask_shape) != shape[1:]:
                    raise ValueError(f"mask of shape {mask_shape} does not fit slices {shape[1:]}")
                window = (i, slice(r0, r0 + mask.shape[0]), slice(c0, c0 + mask.shape[1]))
                score = np.float32(self.scores.get(oid, {}).get(i, 0.0))
                win = mask & (score > best[window])
                out[window][win] = value
                best[window][win] = score
        return out
