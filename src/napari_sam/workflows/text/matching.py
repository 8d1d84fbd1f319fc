"""How well each object matches a text query: CLIP embeddings of the objects' crops (cached),
cosine similarity to the query and a softmax against negative queries, and the selection of the
objects that match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .clip_scorer import ClipScorer, CropEmbeddingCache
from .crops import CropParams, extract_crops

__all__ = [
    "ObjectEmbeddings",
    "TextScores",
    "embed_objects",
    "score_embeddings",
    "score_objects",
    "select_objects",
]


@dataclass
class ObjectEmbeddings:
    """CLIP image embeddings of the objects of one plane.

    Attributes
    ----------
    ids : numpy.ndarray, shape (K,), int64
    embeddings : numpy.ndarray, shape (K, D), float32, unit length
    complete : bool
        False when cancelled: only the first objects were embedded.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    complete: bool = True


@dataclass
class TextScores:
    """How well each object matches a query.

    Attributes
    ----------
    ids : numpy.ndarray, shape (K,), int64
        Object ids (label values).
    similarity : numpy.ndarray, shape (K,), float32
        Cosine similarity of the object's crop to the query, in [-1, 1].
    probability : numpy.ndarray, shape (K,), float32
        Softmax over the query and the negatives of ``logit_scale * cosine``: the probability
        that the crop shows the query rather than one of the negatives (1 without negatives).
    query : str
    negatives : tuple of str
    negative_similarity : numpy.ndarray, shape (K, N), float32
        Cosine similarity to each negative.
    complete : bool
        False when the scoring was cancelled (only the objects scored so far are listed).
    """

    ids: np.ndarray
    similarity: np.ndarray
    probability: np.ndarray
    query: str
    negatives: tuple[str, ...] = ()
    negative_similarity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    complete: bool = True

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def best_negative(self) -> np.ndarray:
        """Index of the most similar negative per object (K,), -1 without negatives."""
        if self.negative_similarity.size == 0:
            return np.full(len(self.ids), -1, dtype=np.int64)
        return np.argmax(self.negative_similarity, axis=1)

    def to_features(self) -> dict[str, np.ndarray]:
        """Columns for a napari Labels layer's ``features`` table (one row per object)."""
        return {
            "label": self.ids.astype(np.int64),
            "text_similarity": self.similarity.astype(np.float32),
            "text_probability": self.probability.astype(np.float32),
        }


def _check_texts(query: str, negatives: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the text query is empty")
    if isinstance(negatives, str):
        negatives = (negatives,)
    negs = tuple(str(n).strip() for n in negatives if str(n).strip())
    query = query.strip()
    negs = tuple(n for n in dict.fromkeys(negs) if n != query)
    return query, negs


def _apply_template(text: str, template: str | None) -> str:
    if template is None:
        return text
    if "{}" not in template:
        raise ValueError(f"the prompt template must contain '{{}}', got {template!r}")
    return template.format(text)


def embed_objects(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    ids: npt.ArrayLike | None = None,
    crop_params: CropParams | None = None,
    cache: CropEmbeddingCache | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ObjectEmbeddings:
    """CLIP image embeddings of the objects of one plane, reusing cached ones.

    This is the slow half of :func:`score_objects`; :func:`score_embeddings` is the fast half
    (run it on every keystroke of the query).

    Parameters
    ----------
    scorer : ClipScorer
    image : array-like, shape (H, W) or (H, W, 3)
    labels : array-like, shape (H, W), int
    ids, crop_params, intensity_range, rgb, spacing
        See :func:`extract_crops`.
    cache : CropEmbeddingCache, optional
        Default: ``scorer.cache``.
    batch_size : int
        Crops per CLIP forward pass.
    progress : callable, optional
        ``progress(done, total)`` in objects.
    cancelled : callable, optional
        Polled between batches; on cancel the objects embedded so far are returned with
        ``complete=False``.

    Returns
    -------
    ObjectEmbeddings
    """
    cache = scorer.cache if cache is None else cache
    crops, ids = extract_crops(
        image, labels, ids, params=crop_params, size=scorer.image_size,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing,
    )
    keys = [(scorer.key, CropEmbeddingCache.digest(c)) for c in crops]
    emb = np.zeros((len(ids), scorer.embed_dim), dtype=np.float32)
    done = np.zeros(len(ids), dtype=bool)
    for k, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            emb[k], done[k] = hit, True
    todo = np.flatnonzero(~done)
    n_cached = len(ids) - len(todo)
    if progress is not None:
        progress(n_cached, len(ids))

    def _progress(d: int, _t: int) -> None:
        if progress is not None:
            progress(n_cached + d, len(ids))

    if len(todo):
        new = scorer.encode_crops_numpy(crops[todo], batch_size, _progress, cancelled)
        for k, e in zip(todo[: len(new)], new):
            emb[k], done[k] = e, True
            cache.put(keys[k], e)
    complete = bool(done.all())
    return ObjectEmbeddings(ids=ids[done], embeddings=emb[done], complete=complete)


def score_embeddings(
    scorer: ClipScorer,
    objects: ObjectEmbeddings,
    query: str,
    negatives: Iterable[str] = ("background",),
    *,
    template: str | None = None,
) -> TextScores:
    """Score embedded objects against a query and negatives (fast: only the texts are encoded).

    Parameters
    ----------
    scorer : ClipScorer
    objects : ObjectEmbeddings
        From :func:`embed_objects` with the same scorer.
    query : str
        What to find, e.g. ``"nucleus"``.
    negatives : iterable of str
        Competing descriptions ("background", "debris"); duplicates and the query itself are
        dropped.
    template : str, optional
        Format string applied to every text, e.g. ``"a microscopy image of a {}."``.

    Returns
    -------
    TextScores
    """
    query, negs = _check_texts(query, negatives)
    texts = [_apply_template(t, template) for t in (query, *negs)]
    txt = scorer.encode_text_numpy(texts)  # (1 + N, D)
    sims = (objects.embeddings @ txt.T).astype(np.float32)  # (K, 1 + N)
    logits = scorer.logit_scale * sims.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0.0
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True) if len(prob) else 1.0
    return TextScores(
        ids=objects.ids.copy(),
        similarity=sims[:, 0].copy(),
        probability=prob[:, 0].astype(np.float32),
        query=query,
        negatives=negs,
        negative_similarity=sims[:, 1:].copy(),
        complete=objects.complete,
    )


def score_objects(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    query: str,
    negatives: Iterable[str] = ("background",),
    *,
    ids: npt.ArrayLike | None = None,
    crop_params: CropParams | None = None,
    cache: CropEmbeddingCache | None = None,
    template: str | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> TextScores:
    """Score every object of a 2D plane against a text query.

    :func:`embed_objects` followed by :func:`score_embeddings`; see those for the parameters.
    Crop embeddings are cached (``scorer.cache`` by default), so calling this again with another
    query only encodes the new text.

    Returns
    -------
    TextScores
        ``complete=False`` if cancelled (then only the objects embedded so far are scored).
    """
    _check_texts(query, negatives)  # fail before the slow part
    objects = embed_objects(
        scorer, image, labels, ids=ids, crop_params=crop_params, cache=cache,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing, batch_size=batch_size,
        progress=progress, cancelled=cancelled,
    )
    return score_embeddings(scorer, objects, query, negatives, template=template)


def select_objects(
    scores: TextScores,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    use: str = "probability",
) -> np.ndarray:
    """The ids of the objects that match the query, best first.

    Parameters
    ----------
    scores : TextScores
    threshold : float, optional
        Keep objects whose score (``use``) is at least this.
    top_k : int, optional
        Keep at most this many (the best), after the threshold.
    use : {"probability", "similarity"}
        Which score ``threshold`` and the ranking use.

    Returns
    -------
    numpy.ndarray, shape (M,), int64
        Sorted by decreasing score.

    Notes
    -----
    Without ``threshold`` and ``top_k`` an object is kept when the query is its best match:
    more similar than every negative (CLIP's zero-shot classification). That needs at least one
    negative.
    """
    if use not in ("probability", "similarity"):
        raise ValueError(f"use must be 'probability' or 'similarity', got {use!r}")
    if top_k is not None and int(top_k) < 0:
        raise ValueError(f"top_k must be non-negative, got {top_k}")
    values = np.asarray(scores.probability if use == "probability" else scores.similarity)
    keep = np.ones(len(scores.ids), dtype=bool)
    if threshold is not None:
        keep &= values >= float(threshold)
    elif top_k is None:
        if scores.negative_similarity.size == 0 or scores.negative_similarity.shape[1] == 0:
            raise ValueError("without negatives, give a threshold or top_k to select objects")
        keep &= scores.similarity > scores.negative_similarity.max(axis=1)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-values[idx], kind="stable")]
    if top_k is not None:
        idx = idx[: int(top_k)]
    return scores.ids[idx].astype(np.int64)
