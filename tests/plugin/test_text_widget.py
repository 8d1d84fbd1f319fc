"""The text-prompt section of the widget: scores in the features table, the matches in the
"SAM text" layer (and as mask prompts), threshold and query edits without re-encoding crops."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_text import _bright_dim_image, _known_scorer, write_tiny_clip  # noqa: E402

from napari_sam.plugin._text import TEXT_NAME  # noqa: E402


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def known(tiny_spec, monkeypatch):
    """The widget's scorer: the tiny CLIP with hand-set embeddings (brightness -> nucleus)."""
    from napari_sam.workflows.text import ClipScorer

    scorer = _known_scorer(ClipScorer(tiny_spec, isolate=False, download=False), monkeypatch)
    calls = {"crops": 0}
    basis = np.eye(32, dtype=np.float32)

    def counting(crops, *args, **kwargs):
        # a crop whose object is bright is a "nucleus", a dim one "debris"
        calls["crops"] += len(crops)
        return np.stack([basis[0] if c.max() > 128 else basis[2] for c in crops])

    monkeypatch.setattr(scorer, "encode_crops_numpy", counting)
    monkeypatch.setattr("napari_sam.plugin._text._make_scorer", lambda spec: scorer)
    scorer.calls = calls
    return scorer


def test_text_finds_bright_objects_and_threshold_reselects(sam, idle, known, notes):
    image, labels = _bright_dim_image()
    viewer, widget, _ = sam(image)
    candidates = viewer.add_labels(labels, name="candidates")
    text = widget.text
    text.candidates_combo.value = candidates
    text.negatives.value = "background, debris"
    text.query.value = "nucleus"
    assert text.find()
    widget.tasks.wait(30)
    scores = text.scores
    assert scores is not None and sorted(scores.ids.tolist()) == [1, 2, 3, 4, 5]
    # brighter objects are more "nucleus" (the hand-set embeddings)
    order = scores.ids[np.argsort(-scores.probability, kind="stable")].tolist()
    assert sorted(order[:3]) == [1, 3, 5], order
    text.threshold.value = 0.5
    expected = set(scores.ids[scores.probability >= 0.5].tolist())
    assert expected == {1, 3, 5}, scores.probability
    layer = viewer.layers[TEXT_NAME]
    assert set(np.unique(layer.data)) - {0} == expected
    for oid in expected:  # the objects are copied whole
        np.testing.assert_array_equal(layer.data == oid, labels == oid)
    # the scores are in the candidates' features table, one row per label
    table = candidates.features.set_index("index")
    np.testing.assert_allclose(table.loc[scores.ids, "text_probability"], scores.probability)
    # the matches are the mask prompts now: the preview shows them, K would commit them
    assert widget.mask_combo.value is layer
    idle(widget)
    assert widget.preview is not None and len(widget.preview.masks) == len(expected)

    text.threshold.value = 1.0  # re-selects at once, nothing recomputed
    assert not layer.data.any()
    encoded = known.calls["crops"]
    text.query.value = "debris"
    text._timer.stop()
    assert text.find()
    widget.tasks.wait(30)
    assert known.calls["crops"] == encoded  # only the text was encoded again
    assert text.scores.query == "debris"
    assert not [m for m in notes if "failed" in m]


def test_text_without_candidates_or_query_says_what_to_do(sam, known, notes):
    image, labels = _bright_dim_image()
    viewer, widget, _ = sam(image)
    text = widget.text
    assert not text.find()
    assert any("Type what to find" in m for m in notes)
    text.query.value = "nucleus"
    text._timer.stop()
    assert text.candidates_combo.value is None  # no Labels layer yet
    assert not text.find()
    assert any("Segment everything" in m for m in notes), notes
