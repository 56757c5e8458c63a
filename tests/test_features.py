"""CLIP feature extraction on the real sample clips with the tiny CLIP: shapes, store, resume, failures."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pite.feature_store import FeatureStore, FeatureWriter
from pite.features import (
    ClipFeatureExtractor,
    ClipSettings,
    FeatureInputSettings,
    FeatureItem,
    FeatureOutputSettings,
    FeaturesConfig,
    extract_features,
    list_inputs,
    run_features,
)
from pite.models import load_clip_vision
from pite.timeline import frame_times
from pite.footage import real_sample_clip
from pite.video import read_frames_at

CLIP = "tinykit://clip"
SHORT_SIDE = 64


def sample_clip(name: str) -> Path:
    try:
        return real_sample_clip(name)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def clip_model():
    model, processor = load_clip_vision(CLIP)
    return model.float().eval(), processor


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Two real clips (one with clip bounds), a missing file and a corrupt one, extracted once."""
    root = tmp_path_factory.mktemp("videos")
    for name in ("bikes.mp4", "carphone_pristine.mp4"):
        os.symlink(sample_clip(name), root / name)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    manifest = root / "manifest.jsonl"
    rows = [{"video_id": "bikes"}, {"video_id": "bikes"},  # the same video twice (one row per event): one input
            {"video_id": "phone", "video_path": "carphone_pristine.mp4", "start_s": 1.0, "end_s": 3.0},
            {"video_id": "missing_clip"}, {"video_id": "corrupt"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = FeaturesConfig(
        input=FeatureInputSettings(root=str(root), manifest=str(manifest)),
        clip=ClipSettings(model=CLIP, device="cpu", batch_size=32, decode_short_side=SHORT_SIDE),
        output=FeatureOutputSettings(dir=str(tmp_path_factory.mktemp("store") / "features"), per_shard=1),
        workers=1,
    )
    summary = extract_features(cfg)
    return cfg, summary, root


def test_videos_give_fp16_features_of_100_frames(extracted, clip_model):
    cfg, summary, _ = extracted
    assert (summary.inputs, summary.written, summary.already_done) == (4, 2, 0)
    store = FeatureStore(cfg.output.dir)
    dim = clip_model[0].config.projection_dim
    assert sorted(store.ids()) == ["bikes", "phone"] and len(store) == 2 and store.dim == dim
    for video_id in ("bikes", "phone"):
        features = store.get(video_id)
        assert features.dtype == np.float16 and features.shape == (100, dim)
        assert np.isfinite(features).all() and features.std() > 0
    assert not np.array_equal(store["bikes"][0], store["bikes"][50])  # the frames differ
    assert len(list(Path(cfg.output.dir).glob("features-*.safetensors"))) == 2  # per_shard=1


def test_missing_and_corrupt_videos_are_recorded(extracted):
    cfg, summary, _ = extracted
    assert dict(summary.failed) == {"missing_file": 1, "corrupt_video": 1}
    failures = {row["id"]: row for row in FeatureStore(cfg.output.dir).failures()}
    assert {k: v["reason"] for k, v in failures.items()} == {"missing_clip": "missing_file", "corrupt": "corrupt_video"}
    assert all(row["message"] for row in failures.values())


@pytest.mark.parametrize("video_id, frame", [("bikes", 0), ("bikes", 37), ("bikes", 99), ("phone", 50)])
def test_feature_equals_a_direct_clip_forward_on_that_frame(extracted, clip_model, video_id, frame):
    cfg, _, root = extracted
    model, processor = clip_model
    if video_id == "bikes":
        path, times = root / "bikes.mp4", frame_times(10.0, 100)  # bikes.mp4: 250 frames at 25 fps
    else:
        path, times = root / "carphone_pristine.mp4", 1.0 + frame_times(2.0, 100)
    rgb = read_frames_at(path, times[frame:frame + 1], SHORT_SIDE)
    pixels = processor(images=[rgb[0]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds[0].numpy()
    stored = FeatureStore(cfg.output.dir).get(video_id)[frame].astype(np.float32)
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3)


def test_resume_skips_done_ids_and_retries_failures(extracted, monkeypatch, tmp_path):
    cfg, _, root = extracted
    seen = []
    original = ClipFeatureExtractor.prepare

    def spy(self, item, kind="videos"):
        seen.append(item.item_id)
        return original(self, item, kind)

    monkeypatch.setattr(ClipFeatureExtractor, "prepare", spy)
    summary = extract_features(cfg)
    assert (summary.already_done, summary.written) == (2, 0)
    assert sorted(seen) == ["corrupt", "missing_clip"]  # only the failed ones are tried again
    store = FeatureStore(cfg.output.dir)
    assert len(store.failures()) == 2  # recorded once each, not once per run


def test_a_failed_id_that_later_succeeds_leaves_the_failures(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "late.mp4").write_bytes(b"")  # empty: corrupt_video
    cfg = FeaturesConfig(input=FeatureInputSettings(root=str(root)),
                         clip=ClipSettings(model=CLIP, device="cpu", num_frames=4, decode_short_side=SHORT_SIDE),
                         output=FeatureOutputSettings(dir=str(tmp_path / "out")), workers=0)
    assert dict(extract_features(cfg).failed) == {"corrupt_video": 1}
    (root / "late.mp4").unlink()
    os.symlink(sample_clip("carphone_pristine.mp4"), root / "late.mp4")
    assert extract_features(cfg).written == 1
    store = FeatureStore(tmp_path / "out")
    assert store.ids() == ["late"] and store.failures() == [] and store.get("late").shape[0] == 4


def test_images_give_a_single_feature(tmp_path, clip_model):
    from PIL import Image

    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    pictures = {"a": rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), "sub/b": rng.integers(0, 255, (50, 30, 3),
                                                                                               dtype=np.uint8)}
    for name, rgb in pictures.items():
        Image.fromarray(rgb).save(root / f"{name}.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = FeaturesConfig(input=FeatureInputSettings(root=str(root), kind="images"),
                         clip=ClipSettings(model=CLIP, device="cpu"),
                         output=FeatureOutputSettings(dir=str(tmp_path / "out")), workers=0)
    summary = extract_features(cfg)
    assert summary.written == 2 and dict(summary.failed) == {"corrupt_image": 1}
    store = FeatureStore(tmp_path / "out")
    model, processor = clip_model
    for name, rgb in pictures.items():
        pixels = processor(images=[rgb], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = model(pixel_values=pixels).image_embeds.numpy()
        got = store.get(name)
        assert got.shape == (1, store.dim) and got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_store_round_trip_shards_pickling_and_guards(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {f"vid/{i}": rng.standard_normal((100, 16)).astype(np.float32) for i in range(5)}
    with FeatureWriter(tmp_path, model="m", per_shard=2) as writer:
        for key, value in arrays.items():
            writer.add(key, value)
        writer.fail("gone", "missing_file", "no such file")
    assert len(list(tmp_path.glob("features-*.safetensors"))) == 3
    store = pickle.loads(pickle.dumps(FeatureStore(tmp_path)))
    assert store.ids() == list(arrays) and store.dim == 16 and store.model == "m" and "gone" not in store
    for key, value in arrays.items():
        assert store.get(key).dtype == np.float16
        np.testing.assert_array_equal(store.get(key), value.astype(np.float16))
    with pytest.raises(KeyError, match="gone"):
        store.get("gone")
    with pytest.raises(ValueError, match="model 'm'"):
        FeatureWriter(tmp_path, model="other")
    with pytest.raises(ValueError, match="dim"):
        FeatureWriter(tmp_path, model="m").add("x", np.zeros((100, 8)))
    with pytest.raises(FileNotFoundError, match="pite features"):
        FeatureStore(tmp_path / "nothing")
    assert not list(tmp_path.glob(".*.tmp"))


def test_manifest_listing_rules(tmp_path):
    (tmp_path / "v").mkdir()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "a", "meta": {"split": [2.0, 5.0]}}),
        json.dumps({"YoutubeID": "b", "start_s": 1, "end_s": 4}),
        json.dumps({"YoutubeID": "b", "start_s": 1, "end_s": 9}),  # conflicts with the row above
        "{not json",
        json.dumps({"video_id": "c", "video_path": "../../etc/passwd"}),
        json.dumps({"video_id": "d", "start_s": 5, "end_s": 1}),
        json.dumps({"caption": "no id"}),
    ]) + "\n")
    items, failures = list_inputs(FeatureInputSettings(root=str(tmp_path / "v"), manifest=str(manifest)))
    assert items == [FeatureItem("a", str(tmp_path / "v" / "a.mp4"), 2.0, 5.0)]
    assert {row["id"]: row["reason"] for row in failures} == {
        "b": "bad_manifest", "<m.jsonl line 4>": "bad_manifest", "c": "unsafe_path", "d": "bad_clip",
        "<m.jsonl line 7>": "bad_manifest"}
    pipeline_style = FeatureInputSettings(root=str(tmp_path / "v"), manifest=str(manifest),
                                          filename_pattern="clips/{video_id}.mkv")
    assert list_inputs(pipeline_style)[0][0].path == str(tmp_path / "v" / "clips" / "a.mkv")


def test_shipped_configs_load():
    from pite.config import load_config

    for name in ("demo", "clip_vit_l14"):
        cfg = load_config(Path("configs/features") / f"{name}.yaml", FeaturesConfig, check_paths=False)
        assert cfg.clip.num_frames == 100
    assert load_config("configs/features/clip_vit_l14.yaml", FeaturesConfig, check_paths=False).clip.model == \
        "openai/clip-vit-large-patch14"


@pytest.mark.slow
def test_run_features_on_the_demo_config(tmp_path, capsys):
    from pipeline.demo_data import prepare_demo_videos

    videos = prepare_demo_videos(tmp_path / "videos")
    out = tmp_path / "features"
    assert run_features("configs/features/demo.yaml", [f"input.root={videos}", f"output.dir={out}"]) == 0
    store = FeatureStore(out)
    assert sorted(store.ids()) == ["bigbuckbunny", "bikes", "carphone_pristine", "synthetic_square"]
    assert "written 4" in capsys.readouterr().out


def test_feature_step_runs_on_the_pipeline(tmp_path):
    from pipeline.executors.base import process_batch
    from pipeline.manifest import EventSpec, VideoTask
    from pipeline.steps.features import FeatureStep

    root = tmp_path / "videos"
    root.mkdir()
    os.symlink(sample_clip("carphone_pristine.mp4"), root / "phone.mp4")
    tasks = [VideoTask("phone", "phone.mp4", (EventSpec(0.0, 2.0, "a man talks on a phone"),)),
             VideoTask("gone", "gone.mp4", (EventSpec(0.0, 1.0, "nothing"),))]
    step = FeatureStep(ClipSettings(model=CLIP, device="cpu", num_frames=10, decode_short_side=SHORT_SIDE),
                       str(tmp_path / "store"), str(root))
    step = pickle.loads(pickle.dumps(step))  # steps ship to workers
    result = process_batch([step], tasks)
    store = FeatureStore(tmp_path / "store")
    assert store.ids() == ["phone"] and store.get("phone").shape == (10, store.dim)
    failed = {f.video_id: (f.stage, f.reason) for f in result.failures}
    assert failed["gone"] == ("features", "missing_file")
    assert result.stats.steps["features"].counts["features_written"] == 1
    again = process_batch([step], tasks[:1])
    assert again.stats.steps["features"].counts["already_done"] == 1
