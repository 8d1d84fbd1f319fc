"""``napari-sam models``: the models the registry knows, with family, size, cache state and use.

``--names`` prints the bare names, one a line (for scripts).
"""

from __future__ import annotations

from pathlib import Path

#: What the columns of one row hold: name, family, size, cached, what it is for.
COLUMNS = ("name", "family", "size", "cached", "for")


def register(sub) -> None:
    """Add the ``models`` command to ``sub`` (the parser's sub-parsers)."""
    p = sub.add_parser(
        "models",
        help="list the models: family, size, whether cached, what for",
        description="The models --model accepts. 'cached' says whether the weights are in the "
                    "cache folder already (no download needed); see docs/models.md.",
    )
    p.add_argument("--names", action="store_true", help="only the names, one a line")
    p.set_defaults(handler=run)


def model_rows() -> list[tuple[str, str, str, str, str]]:
    """One row per registry model, in :data:`COLUMNS` order (nothing is downloaded or hashed:
    "cached" only says whether the files are in the cache folder)."""
    from ..models.build import DEFAULT_WEIGHTS, list_models  # torch: the registry
    from ..models.weights import WEIGHTS, cache_dir

    folder = cache_dir()
    rows = []
    for name in list_models():
        entry = WEIGHTS.get(name)
        if name == "default":
            mb = DEFAULT_WEIGHTS.stat().st_size / 1e6 if DEFAULT_WEIGHTS.exists() else 0.0
            use = ("nuclei and cells, fast on a CPU; trained on synthetic microscopy "
                   "(docs/default-model.md)")
            rows.append((name, "default (this project)", _size(mb), "built in", use))
            continue
        if entry is None:
            rows.append((name, "-", "?", "-", "no registered weights (pass --checkpoint)"))
            continue
        files = [entry] + ([WEIGHTS[entry.decoder]] if entry.decoder in WEIGHTS else [])
        here = [_present(folder / f.filename) for f in files]
        cached = "yes" if all(here) else "partly" if any(here) else "no"
        use = entry.description + (" [decoder]" if entry.decoder else "")
        rows.append((name, entry.family or "-", _size(sum(f.size_mb for f in files)),
                     cached, use))
    return rows + _sam2_rows(folder)


def _sam2_rows(folder: Path) -> list[tuple[str, str, str, str, str]]:
    """SAM 2.1's models, downloaded on first use. Meta publishes no SHA-256: a download is
    checked for size and structure and its SHA-256 recorded then (trust on first use)."""
    from ..models.sam2_build import SAM2_DOWNLOADS

    use = ("SAM 2.1: tracking through z / t with its memory, clicks on slices (viewer, "
           "propagate); downloaded on first use as {file}, verified by size, structure and a "
           "SHA256 recorded then (Meta publishes none)")
    return [(name, "SAM 2.1", _size(size), "yes" if _present(folder / filename) else "no",
             use.format(file=filename))
            for name, (_, filename, size) in SAM2_DOWNLOADS.items()]


def run(args) -> int:
    """Print the table (or the names); returns 0."""
    rows = model_rows()
    if args.names:
        for row in rows:
            print(row[0])
        return 0
    widths = [max(len(COLUMNS[k]), *(len(r[k]) for r in rows)) for k in range(4)]
    for row in [COLUMNS, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row[:4], widths)) + "  " + row[4])
    print(f"\n[decoder]: automatic instance segmentation with `napari-sam automatic --mode "
          f"decoder`. Weights are downloaded on first use into {_cache_hint()}.")
    return 0


def _present(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _size(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def _cache_hint() -> str:
    from ..models.weights import cache_dir

    return str(cache_dir())
