"""Phrase grounding: prompt and token spans, box selection, one call per frame, masks and drops.

The tiny kit models have random weights, so their scores are arbitrary: the selection rule is
tested on hand-built tensors, and the models are used for the mechanics (calls, shapes, drops).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pipeline.config import GroundingSettings
from pipeline.grounding import GROUNDERS, Grounding, make_grounder
from pipeline.grounding import gdino_sam
from pipeline.grounding.base import box_mask, resolve_device, with_mask
from pipeline.grounding.gdino_sam import (
    GdinoBoxGrounder,
    GdinoSamGrounder,
    clean_phrase,
    join_phrases,
    plan_prompts,
    select_boxes,
    token_spans,
)
from pite import tinykit

PHRASES = ["a white cat", "the cat", "a pen, red ink", "a dog's bowl"]


@pytest.fixture(scope="module")
def kit_cache(tmp_path_factory):
    """A PITE_CACHE root with the tiny GroundingDINO and SAM built (once per module)."""
    cache = tmp_path_factory.mktemp("pite-cache")
    for name in ("gdino", "sam"):
        tinykit.build(name, cache / "tinykit")
    return cache


@pytest.fixture(scope="module")
def kit_env(kit_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PITE_CACHE", str(kit_cache))
        yield


def _settings(**overrides) -> GroundingSettings:
    values = dict(detector="tinykit://gdino", sam_checkpoint="tinykit://sam", device="cpu",
                  box_threshold=0.0, text_threshold=0.0, min_area_frac=0.0)
    return GroundingSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def sam_grounder(kit_env) -> GdinoSamGrounder:
    """The gdino_sam grounder with its models loaded through pite.models (thresholds 0: all boxes pass)."""
    grounder = make_grounder(_settings())
    grounder.models  # load once for the module
    return grounder


@pytest.fixture(scope="module")
def tokenizer(sam_grounder):
    return sam_grounder.models.processor.tokenizer


def _frame(height: int = 48, width: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class CallCounter:
    """Counts forward calls of modules (one per ``module(...)`` call)."""

    def __init__(self, **modules: torch.nn.Module):
        self.counts = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] += 1
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def counter(sam_grounder):
    models = sam_grounder.models
    sam = models.predictor.model
    count = CallCounter(detector=models.detector, image_encoder=sam.image_encoder, mask_decoder=sam.mask_decoder)
    yield count
    count.close()


# ----------------------------------------------------------------------------- prompt and token spans


def test_clean_phrase_removes_separators_and_case():
    assert clean_phrase("  Mr. Smith's   DOG?") == "mr smith's dog"
    assert clean_phrase("a pen, red ink") == "a pen, red ink"
    assert clean_phrase(" . ? ") == ""


def test_join_phrases_gives_the_prompt_and_char_spans():
    text, spans = join_phrases(["a cat", "the cat", "x"])
    assert text == "a cat . the cat . x ."
    assert [text[s:e] for s, e in spans] == ["a cat", "the cat", "x"]


def test_token_spans_from_hand_built_offsets():
    # "[CLS] a cat . the cat . [SEP]" for the prompt "a cat . the cat ."
    offsets = [(0, 0), (0, 1), (2, 5), (6, 7), (8, 11), (12, 15), (16, 17), (0, 0)]
    assert token_spans(offsets, [(0, 5), (8, 15)]) == [[1, 2], [4, 5]]
    # a word piece that straddles the span end still belongs to it; an empty span has no tokens
    assert token_spans([(0, 0), (0, 3), (3, 5), (6, 7)], [(0, 4), (5, 5)]) == [[1, 2], []]


def test_token_spans_in_the_real_tokenised_prompt(tokenizer):
    cleaned = [clean_phrase(p) for p in PHRASES]
    (prompt,) = plan_prompts(cleaned, tokenizer, max_tokens=256)
    assert prompt.text == "a white cat . the cat . a pen, red ink . a dog's bowl ."
    tokens = tokenizer.convert_ids_to_tokens(prompt.encoding["input_ids"][0].tolist())
    words = [[tokens[i] for i in span] for span in prompt.spans]
    assert words[0] == ["a", "white", "cat"] and words[1] == ["the", "cat"]
    assert prompt.spans[0][-1] != prompt.spans[1][-1]  # the repeated "cat" maps to its own position
    assert "," in words[2] and "'" in words[3] and words[3][-1] == "bowl"
    assert words[2][:3] == ["a", "pen", ","] and "".join(t.removeprefix("##") for t in words[2]) == "apen,redink"
    # every token is in exactly one span, except [CLS], [SEP] and the "." separators
    inside = sorted(i for span in prompt.spans for i in span)
    outside = [tokens[i] for i in range(len(tokens)) if i not in inside]
    assert len(inside) == len(set(inside))
    assert outside == ["[CLS]", ".", ".", ".", ".", "[SEP]"]


def test_long_phrase_lists_are_split_into_prompts_that_fit(tokenizer):
    phrases = [f"a {w} cat" for w in ["white", "black", "red", "blue", "green", "small", "big"]]
    one = plan_prompts(phrases, tokenizer, max_tokens=256)
    assert len(one) == 1 and one[0].phrases == list(range(7))
    prompts = plan_prompts(phrases, tokenizer, max_tokens=12)  # [CLS] + 2 x (3 words + ".") + [SEP] = 10
    assert len(prompts) == 4
    assert [i for p in prompts for i in p.phrases] == list(range(7))
    for prompt in prompts:
        ids = prompt.encoding["input_ids"][0].tolist()
        assert len(ids) <= 12
        tokens = tokenizer.convert_ids_to_tokens(ids)
        for index, span in zip(prompt.phrases, prompt.spans):
            assert " ".join(tokens[i] for i in span) == phrases[index]


def test_a_phrase_longer_than_a_prompt_is_cut_at_a_token_boundary(tokenizer):
    long = " ".join(["a", "big", "old", "wooden", "table", "with", "a", "red", "cup", "and", "a", "pen"])
    prompts = plan_prompts(["a cat", long, "a dog"], tokenizer, max_tokens=8)
    assert [p.phrases for p in prompts] == [[0], [1], [2]]
    cut = prompts[1]
    assert cut.text == "a big old wooden table ."  # [CLS] + 5 tokens + "." + [SEP] = 8
    assert len(cut.encoding["input_ids"][0]) == 8 and len(cut.spans[0]) == 5


# ----------------------------------------------------------------------------- box selection


def _logits(probs) -> torch.Tensor:
    return torch.logit(torch.tensor(probs, dtype=torch.float64)).float()


BOXES = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.4, 0.4], [0.3, 0.3, 0.1, 0.1]])  # (cx, cy, w, h)


def test_select_takes_each_phrase_best_query_by_its_max_token():
    # tokens: [CLS] a man . a hat . [SEP];  phrase "a man" = tokens 1, 2; "a hat" = tokens 4, 5
    probs = [[0.01, 0.20, 0.90, 0.01, 0.10, 0.30, 0.01, 0.01],  # q0: the man
             [0.01, 0.10, 0.05, 0.01, 0.20, 0.60, 0.01, 0.01],  # q1: the hat
             [0.01, 0.50, 0.10, 0.01, 0.50, 0.10, 0.01, 0.01]]  # q2: strong on "a" only
    man, hat = select_boxes(_logits(probs), BOXES, [[1, 2], [4, 5]], box_threshold=0.35, text_threshold=0.25)
    assert man.query == 0 and man.score == pytest.approx(0.9)
    assert man.box == pytest.approx((0.4, 0.3, 0.6, 0.7))
    assert hat.query == 1 and hat.score == pytest.approx(0.6)
    assert hat.box == pytest.approx((0.0, 0.7, 0.3, 1.0))  # clipped to the frame


def test_box_threshold_applies_to_the_phrase_own_tokens():
    # only the man is visible: "hat" scores 0.3 on the man's box, whose max token (man) is 0.9
    probs = [[0.01, 0.20, 0.90, 0.01, 0.10, 0.30, 0.01, 0.01],
             [0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01],
             [0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01]]
    man, hat = select_boxes(_logits(probs), BOXES, [[1, 2], [4, 5]], box_threshold=0.35, text_threshold=0.25)
    assert man.box is not None
    assert hat.box is None and hat.query == 0 and hat.score == pytest.approx(0.3)
    assert "box_threshold" in hat.message
    # just above / below the box threshold
    probs[0][5] = 0.36
    assert select_boxes(_logits(probs), BOXES, [[4, 5]], 0.35, 0.25)[0].box is not None
    probs[0][5] = 0.34
    assert select_boxes(_logits(probs), BOXES, [[4, 5]], 0.35, 0.25)[0].box is None


def test_text_threshold_binds_when_above_box_threshold():
    probs = [[0.01, 0.20, 0.50, 0.01, 0.01, 0.01, 0.01, 0.01]] * 3
    (man,) = select_boxes(_logits(probs), BOXES, [[1, 2]], box_threshold=0.3, text_threshold=0.6)
    assert man.box is None and "text_threshold" in man.message
    (man,) = select_boxes(_logits(probs), BOXES, [[1, 2]], box_threshold=0.3, text_threshold=0.45)
    assert man.box is not None and man.query == 0  # ties go to the first query


def test_select_handles_phrases_without_tokens_and_boxes_off_the_frame():
    probs = [[0.9, 0.9], [0.1, 0.1]]
    off = torch.tensor([[1.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])  # q0 lies right of the frame
    empty, outside = select_boxes(_logits(probs), off, [[], [1]], 0.35, 0.25)
    assert empty.box is None and empty.query is None and empty.score == 0.0
    assert outside.box is None and outside.query == 0 and "outside" in outside.message


# ----------------------------------------------------------------------------- masks and drops


def test_with_mask_drops_empty_and_small_masks_with_the_reason():
    box = (0.0, 0.0, 0.5, 0.5)
    empty = with_mask(box, np.zeros((10, 10), bool), 0.8, min_area_frac=0.0)
    assert (empty.reason, empty.box, empty.mask, empty.score) == ("empty_mask", None, None, 0.0)
    small = np.zeros((10, 10), bool)
    small[0, :2] = True  # 2 % of the frame
    dropped = with_mask(box, small, 0.8, min_area_frac=0.03)
    assert dropped.reason == "mask_too_small" and not dropped.grounded and "2.0000%" in dropped.message
    kept = with_mask(box, small, 0.8, min_area_frac=0.02)
    assert kept.grounded and kept.box == box and kept.score == 0.8 and kept.mask is small


def test_box_mask_covers_the_pixels_the_box_touches():
    mask = box_mask((0.25, 0.1, 0.5, 0.55), height=10, width=8)  # cols 2..4, rows 1..6
    expected = np.zeros((10, 8), bool)
    expected[1:6, 2:4] = True
    assert np.array_equal(mask, expected)
    assert not box_mask((0.5, 0.5, 0.5, 0.9), 10, 10).any()


def test_sam_path_one_detector_and_one_sam_call_per_frame(sam_grounder, counter):
    frame = _frame()
    results = sam_grounder.ground(frame, PHRASES)
    assert counter.counts == {"detector": 1, "image_encoder": 1, "mask_decoder": 1}
    assert len(results) == len(PHRASES) and all(r.grounded for r in results)
    for r in results:
        assert r.mask.shape == frame.shape[:2] and r.mask.dtype == bool and r.mask.any()
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0 < r.score <= 1


def test_sam_masks_follow_the_frame_size(sam_grounder):
    for height, width in [(37, 100), (120, 64)]:
        results = sam_grounder.ground(_frame(height, width, seed=1), ["a dog", "a red cup"])
        assert [r.mask.shape for r in results] == [(height, width)] * 2


def test_nothing_above_threshold_means_no_sam_call(sam_grounder, counter, monkeypatch):
    monkeypatch.setattr(sam_grounder.settings, "box_threshold", 1.0)
    results = sam_grounder.ground(_frame(), PHRASES)
    assert [r.reason for r in results] == ["no_box"] * 4
    assert all(r.box is None and r.mask is None and r.score == 0 and "box_threshold" in r.message for r in results)
    assert counter.counts == {"detector": 1, "image_encoder": 0, "mask_decoder": 0}


def test_min_area_drop_records_the_reason(sam_grounder, monkeypatch):
    monkeypatch.setattr(sam_grounder.settings, "min_area_frac", 0.999)
    results = sam_grounder.ground(_frame(), PHRASES)
    assert {r.reason for r in results} == {"mask_too_small"}
    assert all(r.mask is None and r.box is None and "min_area_frac" in r.message for r in results)


def test_repeated_and_empty_phrases(sam_grounder, counter):
    results = sam_grounder.ground(_frame(), ["The cat.", "", "the cat", "?"])
    assert counter.counts["detector"] == 1
    assert results[0].box == results[2].box and np.array_equal(results[0].mask, results[2].mask)
    assert results[0].mask is not results[2].mask
    assert results[1].reason == results[3].reason == "no_box"


def test_long_phrase_lists_cost_one_detector_call_per_prompt(sam_grounder, counter, monkeypatch):
    monkeypatch.setattr(gdino_sam, "max_prompt_tokens", lambda detector: 12)
    phrases = [f"a {w} cat" for w in ["white", "black", "red", "blue", "green"]]
    results = sam_grounder.ground(_frame(), phrases)
    assert counter.counts == {"detector": 3, "image_encoder": 1, "mask_decoder": 1}
    assert len(results) == 5 and all(r.grounded for r in results)


def test_gdino_box_masks_equal_the_box(kit_env):
    grounder = make_grounder(_settings(backend="gdino_box", sam_checkpoint=""))
    assert isinstance(grounder, GdinoBoxGrounder) and not isinstance(grounder, GdinoSamGrounder)
    frame = _frame(50, 70)
    results = grounder.ground(frame, PHRASES)
    assert all(r.grounded for r in results)
    for r in results:
        assert np.array_equal(r.mask, box_mask(r.box, 50, 70))
        rows, cols = np.nonzero(r.mask)
        assert cols.min() == int(np.floor(r.box[0] * 70)) and cols.max() + 1 == int(np.ceil(r.box[2] * 70))
        assert rows.min() == int(np.floor(r.box[1] * 50)) and rows.max() + 1 == int(np.ceil(r.box[3] * 50))


# ----------------------------------------------------------------------------- the grounder object


def test_empty_phrase_list_loads_and_calls_nothing():
    grounder = make_grounder(_settings(detector="/no/such/model", sam_checkpoint="/no/such/sam.pth"))
    assert grounder.ground(_frame(), []) == []
    assert [r.reason for r in grounder.ground(_frame(), ["", " . "])] == ["no_box", "no_box"]
    assert grounder._models is None


def test_registry_and_settings_errors():
    assert set(GROUNDERS) == {"gdino_sam", "gdino_box"}
    assert type(make_grounder(_settings())) is GdinoSamGrounder
    with pytest.raises(ValueError, match="sam_checkpoint is empty"):
        make_grounder(_settings(sam_checkpoint=""))
    with pytest.raises(ValueError, match="unknown grounding backend 'owl'.*gdino_sam"):
        make_grounder(_settings(backend="owl"))


def test_bad_frames_are_refused_clearly():
    grounder = make_grounder(_settings())
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        grounder.ground(np.zeros((4, 4), np.uint8), ["a cat"])
    with pytest.raises(ValueError, match="uint8"):
        grounder.ground(np.zeros((4, 4, 3), np.float32), ["a cat"])
    with pytest.raises(TypeError, match="list of str"):
        grounder.ground(_frame(), "a cat")


def test_grounder_pickles_without_models_and_reloads(sam_grounder):
    clone = pickle.loads(pickle.dumps(sam_grounder))
    assert clone._models is None and sam_grounder._models is not None
    results = clone.ground(_frame(), ["a dog"])
    assert results[0].mask.shape == (48, 80) and clone._models is not None


def test_device_auto_and_grounding_defaults():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1"
    g = Grounding.dropped("no_box", "why")
    assert (g.box, g.mask, g.score, g.reason, g.message, g.grounded) == (None, None, 0.0, "no_box", "why", False)
    with pytest.raises(ValueError, match="unknown grounding drop reason"):
        Grounding.dropped("oops", "")
