"""Free label ids of a Labels layer without rescanning it at every commit.

Only public napari API: the layer's ``paint`` and ``set_data`` events.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Labels

__all__ = ["max_label", "set_labels"]


@dataclass
class _MaxEntry:
    data: Any  # weak reference to (or, if not weak-referenceable, the id of) the layer's data
    bound: int
    quiet: int = 0  # writes of ours in progress: their refresh is announced by their paint
    stale: bool = False  # the data may have changed unseen: rescan


#: ``{Labels layer: _MaxEntry}``; dies with the layer.
_MAX_LABELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: Slab size (voxels) of the full scan over non-numpy (dask, zarr, ...) label data.
_SCAN_VOXELS = 1 << 24


def max_label(labels: Labels) -> int:
    """An upper bound of the label values in ``labels`` (0 when empty): next free id is +1.

    The first call scans the data (in slabs along the first axis for lazy arrays, so a dask or
    zarr layer is never loaded whole). Edits napari records (painting by hand, fills,
    ``data_setitem``, our commits) announce their values through the layer's public ``paint``
    event, which raises the bound without a rescan. Anything else that refreshes the layer
    (undo, redo, fills, new data, and also a new slice of the view) emits ``set_data`` outside
    our own writes (:func:`set_labels`): the next call rescans. Writes that bypass napari
    (``layer.data[...] = v`` in a script) are seen only from the next rescan. Only public napari
    API is used.

    The bound may be above the current maximum (an erased top object keeps its id reserved
    until a rescan), which only skips ids.

    Returns
    -------
    int
        ``>=`` every value in the layer's (level 0) data.
    """
    data = labels.data[0] if labels.multiscale else labels.data
    entry = _MAX_LABELS.get(labels)
    if entry is not None and not entry.stale and _same_data(entry.data, data):
        return entry.bound
    bound = _scan_max(data)
    try:
        ref: Any = weakref.ref(data)
    except TypeError:
        ref = id(data)
    if entry is None:
        layer_ref = weakref.ref(labels)
        labels.events.paint.connect(functools.partial(_on_paint, layer_ref))
        labels.events.set_data.connect(functools.partial(_on_set_data, layer_ref))
    _MAX_LABELS[labels] = _MaxEntry(ref, bound)
    return bound


def _entry(layer_ref: weakref.ref) -> _MaxEntry | None:
    layer = layer_ref()
    return _MAX_LABELS.get(layer) if layer is not None else None


def _on_paint(layer_ref: weakref.ref, event: Any) -> None:
    """Raise the layer's bound by the values of a recorded edit (its refresh follows)."""
    entry = _entry(layer_ref)
    if entry is None:
        return
    for atom in event.value:
        new = getattr(atom, "new_value", None)  # a mask-based paint atom
        if new is None and isinstance(atom, tuple) and len(atom) == 3:
            new = atom[2]  # data_setitem: (indices, old values, new value(s))
        if new is None:  # an edit of an unknown shape: rescan next time
            entry.stale = True
            return
        new = np.asarray(new)
        if new.size:
            entry.bound = max(entry.bound, int(new.max()))


def _on_set_data(layer_ref: weakref.ref, event: Any = None) -> None:
    """A refresh that is not one of our writes (undo, redo, a fill, new data, a new view):
    rescan later."""
    entry = _entry(layer_ref)
    if entry is not None and not entry.quiet:
        entry.stale = True


def set_labels(target: Labels, index: Any, value: Any, **kwargs: Any) -> None:
    """``target.data_setitem(index, value)``: an undoable write that :func:`max_label` follows
    through the ``paint`` event it emits, without a rescan."""
    entry = _MAX_LABELS.get(target)
    if entry is not None:
        entry.quiet += 1
    try:
        target.data_setitem(index, value, **kwargs)
    finally:
        if entry is not None:
            entry.quiet -= 1


def _same_data(ref: Any, data: Any) -> bool:
    return ref() is data if isinstance(ref, weakref.ref) else ref == id(data)


def _scan_max(data: Any) -> int:
    """Maximum of an array-like (0 if empty), reading a lazy array in slabs of its first axis."""
    shape = tuple(int(s) for s in np.shape(data))
    if not shape or 0 in shape:
        return int(np.asarray(data).max()) if not shape else 0
    if isinstance(data, np.ndarray):
        return int(data.max())
    step = max(1, _SCAN_VOXELS // max(1, int(np.prod(shape[1:]))))
    return max(int(np.asarray(data[s : s + step]).max()) for s in range(0, shape[0], step))
