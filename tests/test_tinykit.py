"""The offline tiny-model kit, loaded back through the same loaders as the real models."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pite import models, tinykit

NEURAL = ["llm", "clip", "gdino", "sam"]


@pytest.fixture(scope="session")
def kit_cache(tmp_path_factory) -> Path:
    """A PITE_CACHE root holding builds of the four neural tiny models (built once per session)."""
    cache = tmp_path_factory.mktemp("pite-cache")
    for name in NEURAL:
        tinykit.build(name, cache / "tinykit")
    return cache


@pytest.fixture
def kit(kit_cache, monkeypatch) -> Path:
    """The kit's root, with ``tinykit://`` refs resolving into it."""
    monkeypatch.setenv("PITE_CACHE", str(kit_cache))
    return kit_cache / "tinykit"


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- forward passes


def test_llm_loads_and_gives_logits_over_its_vocab(kit):
    model, tokenizer = models.load_causal_lm("tinykit://llm")
    texts = ["A woman opens the door.", "From 05 to 23, a dog runs."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tokenizer))
    assert model.config.vocab_size == len(tokenizer) and 1500 <= len(tokenizer) <= 2100
    assert not model.training


def test_llm_tokenizer_keeps_llama_conventions(kit):
    _, tokenizer = models.load_causal_lm(str(tinykit.kit_dir("llm", kit)), dtype=torch.bfloat16)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<unk>"
    ids = tokenizer("USER: <video>\nDescribe the video. ASSISTANT:").input_ids
    video_id = tokenizer.convert_tokens_to_ids("<video>")
    assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id
    assert ids.count(video_id) == 1 and tokenizer.tokenize("<video>") == ["<video>"]
    assert "<video>" in tokenizer.all_special_tokens
    assert tokenizer.decode(ids) == "<s>USER: <video>\nDescribe the video. ASSISTANT:"


def test_llm_tokenizer_offsets_are_exact_character_spans(kit):
    _, tokenizer = models.load_causal_lm("tinykit://llm")
    caption = "A woman is counting money with a pen on a white table, From 05 to 23."
    enc = tokenizer(caption, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert enc.offset_mapping[0] == (0, 0)  # <s>
    for token, (start, end) in zip(tokens[1:], enc.offset_mapping[1:]):
        assert caption[start:end] == tokenizer.convert_tokens_to_string([token]).strip()
    # a phrase's character span maps to exactly the tokens that spell it
    start = caption.index("a pen")
    end = start + len("a pen")
    inside = [i for i, (s, e) in enumerate(enc.offset_mapping) if e > s and s < end and e > start]
    assert tokenizer.decode([enc.input_ids[i] for i in inside]).strip() == "a pen"


def test_clip_loads_and_projects_frames(kit):
    model, processor = models.load_clip_vision("tinykit://clip")
    pixels = processor(images=[_image(48, 64), _image(90, 40, seed=1)], return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 32, 32)
    with torch.no_grad():
        embeds = model(pixel_values=pixels).image_embeds
    assert embeds.shape == (2, model.config.projection_dim) == (2, 32)


def test_grounding_dino_detects_phrases_and_post_processes(kit):
    model, processor = models.load_grounding_dino("tinykit://gdino")
    inputs = processor(images=_image(48, 80), text="a cat. a dog.", return_tensors="pt")
    # bert-base-uncased ids for [CLS], [SEP] and "." (GroundingDINO hard-codes them)
    assert inputs.input_ids[0].tolist()[0] == 101 and inputs.input_ids[0].tolist()[-1] == 102
    assert inputs.input_ids[0].tolist().count(1012) == 2
    with torch.no_grad():
        outputs = model(**inputs)
    queries = model.config.num_queries
    assert outputs.logits.shape == (1, queries, model.config.max_text_len)
    assert outputs.pred_boxes.shape == (1, queries, 4)
    results = processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(48, 80)]
    )
    boxes = results[0]["boxes"]
    assert boxes.shape == (queries, 4) and len(results[0]["text_labels"]) == queries
    assert float(boxes[:, [0, 2]].max()) <= 80 + 1e-3 and float(boxes[:, [1, 3]].max()) <= 48 + 1e-3


def test_sam_predicts_masks_at_image_size(kit):
    from segment_anything import SamPredictor

    sam = models.load_sam("tinykit://sam")
    predictor = SamPredictor(sam)
    predictor.set_image(_image(90, 160))
    masks, scores, low_res = predictor.predict(box=np.array([10, 10, 80, 60]))
    assert masks.shape == (3, 90, 160) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 32, 32)


def test_sam_checkpoint_of_wrong_size_says_which_model_type(kit):
    weights = tinykit.kit_dir("sam", kit) / models.SAM_WEIGHTS
    with pytest.raises(ValueError, match="32 wide"):
        models.load_sam(str(weights), model_type="vit_b")


def test_sam_presets_match_segment_anything_registry():
    from segment_anything import sam_model_registry

    for model_type in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            ours, theirs = models.build_sam(models.SAM_ARCHS[model_type]), sam_model_registry[model_type]()
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


# ----------------------------------------------------------------------------- caching, determinism


def test_second_build_is_cached(kit):
    for name in NEURAL:
        started = time.perf_counter()
        again = tinykit.build(name, kit)
        assert time.perf_counter() - started < 0.5
        assert again == tinykit.kit_dir(name, kit) and tinykit.is_built(name, kit)


def test_builds_are_deterministic(kit, tmp_path):
    for name in NEURAL:
        first, second = tinykit.kit_dir(name, kit), tinykit.build(name, tmp_path)
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        for rel in files:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), f"{name}: {rel} differs"


# ----------------------------------------------------------------------------- locate, offline


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF offline, with an empty Hugging Face cache and home directory."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def _fast_locate(ref, kind):
    started = time.perf_counter()
    found = models.locate(ref, kind)
    assert time.perf_counter() - started < 1.0
    return found


def test_locate_missing_things_without_network(offline, monkeypatch):
    monkeypatch.setenv("PITE_CACHE", str(offline / "empty-cache"))
    missing = _fast_locate(str(offline / "no" / "such" / "vicuna"), "llm")
    assert not missing.found and "does not exist" in missing.hint and "vicuna-7b-v1.5" in missing.hint

    tiny = _fast_locate("tinykit://llm", "llm")
    assert not tiny.found and tiny.source == "tinykit" and "on demand" in tiny.hint

    repo = _fast_locate("pite-test/definitely-not-a-model", "clip")
    assert not repo.found and repo.source == "hf" and "hf download" in repo.hint

    sam = _fast_locate("sam_vit_h_4b8939.pth", "sam")
    assert not sam.found and "dl.fbaipublicfiles.com" in sam.hint


def test_locate_finds_built_tiny_models(kit):
    for name in NEURAL:
        found = _fast_locate(f"tinykit://{name}", name)
        assert found.found and found.where == str(tinykit.kit_dir(name, kit))


def test_repo_id_loads_from_hf_cache_offline(kit, offline):
    """A repo id is read from the HF cache with HF_HUB_OFFLINE=1, exactly as for real weights."""
    snapshot = offline / "hf" / "models--pite-test--tiny-llm" / "snapshots" / ("0" * 40)
    shutil.copytree(tinykit.kit_dir("llm", kit), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)

    found = _fast_locate("pite-test/tiny-llm", "llm")
    assert found.found and found.where == str(snapshot) and found.source == "hf"
    model, tokenizer = models.load_causal_lm("pite-test/tiny-llm")
    assert model.config.vocab_size == len(tokenizer)

    with pytest.raises(models.ModelNotFoundError, match="hf download"):
        models.load_causal_lm("pite-test/not-cached")


def test_missing_local_path_raises_with_hint(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="segment-anything release"):
        models.load_sam(str(tmp_path / "sam_vit_h_4b8939.pth"))
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.load_clip_vision(str(tmp_path / "clip"))


def test_locate_supar_names_in_supar_cache(offline):
    pytest.importorskip("supar")
    assert not models.locate("crf-con-en", "parser").found
    unknown = models.locate("no-such-parser", "parser")
    assert not unknown.found and "crf-con-en" in unknown.hint
    cache = offline / "home" / ".cache" / "supar"
    cache.mkdir(parents=True)
    (cache / "ptb.crf.con.lstm.char").write_bytes(b"")
    found = models.locate("crf-con-en", "parser")
    assert found.found and found.source == "supar"


def test_every_kind_has_a_hint():
    for kind in models.KINDS:
        assert models.describe_kind(kind)
    with pytest.raises(KeyError):
        models.describe_kind("nope")
