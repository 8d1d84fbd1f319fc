"""Reading images and prompt tables, writing label images without half-written files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .files import atomic_path

__all__ = ["InputError", "open_image_lazy", "read_image", "read_points_csv", "write_labels"]


class InputError(ValueError):
    """Bad user input (missing file, wrong shape...): the CLI prints it as one line, exit code 2."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file: TIFF (``.tif``/``.tiff``, including OME-TIFF), ``.npy``, or a zarr array.

    Returns
    -------
    numpy.ndarray
        The array in the file's axis order (for example ``(Z, Y, X)`` or ``(Y, X, 3)``).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix.lower() == ".zarr" else p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff", ".btf") or p.name.lower().endswith((".ome.tif", ".ome.tiff")):
            import tifffile

            return tifffile.imread(p)
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix.lower() == ".zarr" or p.is_dir():
            import zarr  # optional: only for zarr input

            return np.asarray(zarr.open(str(p), mode="r"))
        from skimage import io as skio

        return skio.imread(p)
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        raise InputError(f"cannot read {p}: {exc.name} is not installed") from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input here
        raise InputError(f"cannot read {p} as an image: {exc}") from exc


def write_labels(path: str | os.PathLike, labels: npt.ArrayLike) -> Path:
    """Write a label image as TIFF atomically: a temporary file renamed into place.

    An interrupted or failing write never leaves a truncated file at ``path``.
    """
    import tifffile

    out = Path(path)
    if out.parent and not out.parent.exists():
        raise InputError(f"output directory does not exist: {out.parent}")
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iub":
        raise InputError(f"labels must be integers, got {arr.dtype}")
    with atomic_path(out, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, arr, compression="zlib", photometric="minisblack")
    return out


def read_points_csv(path: str | os.PathLike, ndim: int) -> dict[str, np.ndarray]:
    """Read point prompts from a CSV file with a header row.

    Coordinates are columns ``axis-0`` ... ``axis-{ndim-1}`` (napari's Points export) or, for 2D,
    ``row,col`` (also ``y,x``); for 3D also ``z,y,x`` / ``plane,row,col``. Optional columns:
    ``label`` (1 positive, 0 negative; also ``positive`` as true/false) and ``object`` (points
    with the same value prompt the same object; by default all points of a slice are one object).

    Returns
    -------
    dict
        ``coords`` (N, ndim) float64 in the image's axis order, ``labels`` (N,) int,
        ``objects`` (N,) str.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    header, rows = _read_csv_rows(p)
    if not rows:
        raise InputError(f"{p}: no points (the CSV needs a header row and at least one point)")
    candidates = [
        [f"axis-{i}" for i in range(ndim)],
        {2: ["row", "col"], 3: ["plane", "row", "col"]}.get(ndim, []),
        {2: ["y", "x"], 3: ["z", "y", "x"], 4: ["t", "z", "y", "x"]}.get(ndim, []),
    ]
    cols = next((c for c in candidates if c and all(k in header for k in c)), None)
    if cols is None:
        raise InputError(
            f"{p}: expected coordinate columns {', '.join(candidates[0])} for a {ndim}D image; "
            f"found {', '.join(header)}"
        )
    norm = [dict(zip(header, r)) for r in rows]
    try:
        coords = np.array([[float(r[c]) for c in cols] for r in norm], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{p}: non-numeric coordinate ({exc})") from exc
    if not np.isfinite(coords).all():
        raise InputError(f"{p}: coordinates must be finite numbers")
    if "label" in header:
        try:
            labels = np.array([int(float(r["label"])) for r in norm])
        except ValueError as exc:
            raise InputError(f"{p}: label must be 1 or 0 ({exc})") from exc
    elif "positive" in header:
        labels = np.array([r["positive"].lower() in ("1", "true", "yes") for r in norm], int)
    else:
        labels = np.ones(len(norm), dtype=int)
    if not np.isin(labels, (0, 1)).all():
        raise InputError(f"{p}: label must be 1 (positive) or 0 (negative)")
    objects = np.array([r.get("object", "") for r in norm], dtype=object).astype(str)
    return {"coords": coords, "labels": labels, "objects": objects}


def _read_csv_rows(p: Path) -> tuple[list[str], list[list[str]]]:
    """The header (stripped, lower case) and the rows (stripped values, one per column) of a CSV
    file; blank lines are skipped. A row with more or fewer values than the header is bad input
    (trailing empty values are ignored)."""
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not a readable CSV file ({exc})") from exc
    lines = [(n, [v.strip() for v in row]) for n, row in lines if any(v.strip() for v in row)]
    if not lines:
        return [], []
    header = [h.lower() for h in lines[0][1]]
    while header and not header[-1]:
        header.pop()
    rows = []
    for n, row in lines[1:]:
        while len(row) > len(header) and not row[-1]:
            row.pop()
        if len(row) != len(header):
            raise InputError(f"{p}, line {n}: {len(row)} value(s) for the header's "
                             f"{len(header)} column(s) ({', '.join(header)})")
        rows.append(row)
    return header, rows


def open_image_lazy(path: str | os.PathLike):
    """Open an image without loading it: planes are read when indexed.

    zarr arrays (an OME-Zarr group gives its full-resolution array ``"0"``), uncompressed TIFF
    (memory-mapped), compressed TIFF (through tifffile's zarr view), ``.npy`` (memory-mapped).
    Other formats are read whole with :func:`read_image`.

    Returns
    -------
    array-like
        numpy, memmap or zarr array in the file's axis order, with ``shape``, ``dtype`` and
        numpy indexing.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file: {p}")
    name = p.name.lower()
    try:
        if p.is_dir() or name.endswith(".zarr"):
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group):
                if "0" not in node:
                    raise InputError(f"{p}: a zarr group without an array \"0\": give an array")
                node = node["0"]
            return node
        if name.endswith((".tif", ".tiff", ".btf")):
            import tifffile

            try:
                return tifffile.memmap(p, mode="r")
            except ValueError:  # compressed or tiled: read through tifffile's zarr view
                import zarr

                return zarr.open(tifffile.imread(p, aszarr=True), mode="r")
        if name.endswith(".npy"):
            return np.load(p, mmap_mode="r", allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input here
        raise InputError(f"cannot read {p} as an image: {exc}") from exc
    return read_image(p)
