"""The annotation pipeline end to end: the demo config, bad input accounting, resume, and
key trajectories on a synthetic clip with exact ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.annotate import annotate, build_steps
from pipeline.config import KeyTrajectorySettings, PipelineConfig, TrackingSettings
from pipeline.demo_data import prepare_demo_videos
from pipeline.grounding.base import Grounder, Grounding
from pipeline.manifest import EventSpec, VideoTask
from pipeline.stats import StepStats
from pipeline.steps.keytracks import KeyTrajectoryStep
from pipeline.steps.models import TrackingStep
from pipeline.synthetic import render_square_clip
from pipeline.work import PhraseWork, VideoWork
from pite.config import load_config
from pite.schema import read_failures, read_shards
from pite.timeline import frame_times, seconds_to_index
from pite.footage import write_video
from pite.video import VideoInfo

pytestmark = pytest.mark.slow


def _line(vid, s, e, caption):
    def ts(x):
        sign = "-" if x < 0 else ""
        x = abs(x)
        return f"{sign}{int(x // 3600):02d}:{int(x % 3600 // 60):02d}:{x % 60:06.3f}"
    return json.dumps({"YoutubeID": vid, "Start_timestamp": ts(s), "End_timestamp": ts(e), "Caption": caption})


@pytest.fixture(scope="module")
def demo_config(repo_root) -> PipelineConfig:
    prepare_demo_videos(repo_root / "data/demo/videos")
    return load_config(repo_root / "configs/pipeline/demo.yaml", PipelineConfig)


def test_demo_run_writes_readable_shards_and_accounts_for_every_video(demo_config, tmp_path):
    stats = annotate(demo_config, out=tmp_path, progress=False)
    records = list(read_shards(tmp_path / "shards"))
    failures = read_failures(tmp_path / "failures")
    manifest_ids = {json.loads(line)["YoutubeID"] for line in Path(demo_config.manifest.path).read_text().splitlines()}
    written = {r.video_id for r in records}
    failed = {f.video_id for f in failures if f.event == -1}
    assert written | failed == manifest_ids and not written & failed
    assert failed == {"missing_clip"}
    assert stats.totals["videos_input"] == len(manifest_ids)
    assert stats.totals["videos_written"] + stats.totals["videos_failed"] == len(manifest_ids)
    phrases = [p for r in records for e in r.events for p in e.phrases]
    assert len(phrases) >= 10
    for r in records:
        for e in r.events:
            for p in e.phrases:
                assert e.caption[p.char_start:p.char_end] == p.text
                assert p.trajectory.shape == (3, 100, 2) and p.visibility.any()
                inside = np.zeros(100, bool)
                inside[seconds_to_index(e.start_s, r.duration_s):seconds_to_index(e.end_s, r.duration_s) + 1] = True
                assert not p.visibility[:, ~inside].any()
    saved = json.loads((tmp_path / "stats.json").read_text())
    assert set(saved["steps"]) == {"decode", "nounphrases", "grounding", "tracking", "keytracks"}
    assert saved["failures"] == {"decode/missing_file": 1}
    # a rerun finds every shard complete and redoes nothing
    again = annotate(demo_config, out=tmp_path, progress=False)
    assert again.totals == stats.totals
    assert [r.video_id for r in read_shards(tmp_path / "shards")] == [r.video_id for r in records]


class ScriptedGrounder(Grounder):
    """Test grounder: a fixed box-shaped mask, except phrases with 'ghost' are never grounded."""

    def __init__(self, settings):
        self.settings = settings

    def ground(self, frame, phrases):
        h, w = frame.shape[:2]
        out = []
        for phrase in phrases:
            if "ghost" in phrase:
                out.append(Grounding(None, None, 0.0, "no_box"))
                continue
            mask = np.zeros((h, w), bool)
            mask[h // 4: h // 2, w // 4: w // 2] = True
            out.append(Grounding((0.25, 0.25, 0.5, 0.5), mask, 0.9, None))
        return out


def _bad_inputs(root: Path) -> list[str]:
    """Videos that exercise every kind of bad input; returns manifest lines."""
    clip = render_square_clip(num_frames=40, height=96, width=128, size=24, seed=1)
    write_video(root / "good.mp4", clip.frames, 20.0)
    write_video(root / "one_frame.mp4", clip.frames[:1], 20.0)
    data = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "corrupt.mp4").write_bytes(b"\x00garbage" * 500)
    (root / "empty.mp4").write_bytes(b"")
    big = np.repeat(np.repeat(clip.frames[:6], 24, axis=1), 24, axis=2)[:, :2160, :3840]  # 2160 x 3072
    write_video(root / "huge.mp4", np.ascontiguousarray(big), 20.0)
    # the masked region is covered by a new texture from frame 1 on: occluded after frame 0
    cut = clip.frames.copy()
    cut[1:] = np.random.default_rng(3).integers(0, 255, cut[1:].shape, dtype=np.uint8)
    write_video(root / "cut.mp4", cut, 20.0)
    return [
        _line("good", 0.0, 1.0, "a red square slides over the floor"),
        _line("good", 1.0, 5.0, "the square moves on"),  # end past the end (2 s): clamped
        _line("good", -1.0, 0.5, "a square"),  # negative: rejected by the manifest reader, counted
        _line("good", 1.5, 0.5, "a square"),  # reversed
        _line("good", 9.0, 9.5, "a square"),  # after the end
        _line("good", 0.5, 1.5, "   "),  # whitespace caption
        _line("good", 0.2, 1.2, ""),  # empty caption
        _line("good", 0.0, 1.0, "très jolie: a café near a ghost"),  # non-ASCII; 'a ghost' is never grounded
        _line("good", 0.0, 1.0, "it moves"),  # no noun phrase left (a pronoun only)
        _line("missing", 0.0, 1.0, "a dog runs"),
        _line("truncated", 0.0, 1.0, "a dog runs"),
        _line("corrupt", 0.0, 1.0, "a dog runs"),
        _line("empty", 0.0, 1.0, "a dog runs"),
        _line("one_frame", 0.0, 1.0, "a dog runs"),
        _line("huge", 0.0, 0.3, "a red square on the floor"),
        _line("cut", 0.0, 1.5, "a red square on the floor"),
        _line("../escape", 0.0, 1.0, "a dog"),
        '{"YoutubeID": "broken_row", "Start_timestamp": "nonsense", "End_timestamp": "00:00:01.000", "Caption": "x"}',
    ]


def test_bad_inputs_never_crash_and_are_all_accounted(demo_config, tmp_path, monkeypatch):
    import pipeline.grounding as grounding

    videos = tmp_path / "videos"
    videos.mkdir()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(_bad_inputs(videos)) + "\n")
    monkeypatch.setitem(grounding.GROUNDERS, "scripted", f"{__name__}:ScriptedGrounder")
    cfg = load_config(Path("configs/pipeline/demo.yaml"), PipelineConfig, overrides=[
        f"manifest.path={manifest}", f"manifest.video_root={videos}", "grounding.backend=scripted",
        "output.videos_per_shard=4"])
    out = tmp_path / "out"
    stats = annotate(cfg, out=out, progress=False)
    records = {r.video_id: r for r in read_shards(out / "shards")}
    failures = read_failures(out / "failures")
    video_failures = {f.video_id: f for f in failures if f.event == -1}
    inputs = {"good", "missing", "truncated", "corrupt", "empty", "one_frame", "huge", "cut", "../escape",
              "broken_row"}
    assert set(records) | set(video_failures) == inputs
    assert not set(records) & set(video_failures)
    assert stats.totals["videos_input"] == len(inputs)
    assert stats.totals["videos_written"] + stats.totals["videos_failed"] == len(inputs)
    reasons = {vid: f.reason for vid, f in video_failures.items()}
    assert reasons["missing"] == "missing_file"
    assert reasons["corrupt"] == "corrupt_video" and reasons["empty"] == "corrupt_video"
    assert reasons["truncated"] in {"corrupt_video", "too_few_frames"}
    assert reasons["one_frame"] in {"no_usable_events", "too_few_frames"}
    assert reasons["../escape"] == "unsafe_path" and reasons["broken_row"] == "bad_timestamp"
    event_reasons = sorted(f.reason for f in failures if f.video_id == "good" and f.event >= 0)
    assert event_reasons == ["empty_caption", "empty_caption", "event_after_end", "reversed_timestamps"]
    rejected = [json.loads(line) for line in (out / "manifest_errors.jsonl").read_text().splitlines()]
    assert {(r["video_id"], r["reason"]) for r in rejected} == {
        ("good", "bad_timestamp"), ("broken_row", "bad_timestamp"), ("../escape", "unsafe_path")}
    assert stats.totals["manifest_rows_rejected"] == 3
    good = records["good"]
    assert max(e.end_s for e in good.events) == pytest.approx(good.duration_s)  # clamped end
    cafe = next(e for e in good.events if e.caption.startswith("très"))
    assert [p.text for p in cafe.phrases] and all(cafe.caption[p.char_start:p.char_end] == p.text
                                                   for p in cafe.phrases)
    assert "ghost" not in " ".join(p.text for p in cafe.phrases)
    assert records["huge"].height == 2160 and records["huge"].events[0].phrases
    assert not [p for e in records.get("cut", good).events for p in e.phrases] or "cut" not in records
    drops = {f"{name}/{r}": n for name, st in stats.steps.items() for r, n in st.drops.items()}
    assert drops.get("grounding/no_box", 0) >= 1
    assert drops.get("nounphrases/no_noun_phrase", 0) >= 1
    assert drops.get("keytracks/occluded_after_first_frame", 0) >= 1
    assert stats.steps["decode"].counts["clamped_end"] == 1
    saved = json.loads((out / "stats.json").read_text())
    assert saved["totals"]["videos_failed"] == len(video_failures)


def test_key_trajectories_of_a_synthetic_square_follow_its_true_motion():
    clip = render_square_clip(num_frames=51, height=128, width=160, size=32, velocity=(1.0, 0.4), start=(30, 40))
    duration = 51 / clip.fps
    video = VideoWork.from_task(VideoTask("sq", "sq.mp4", (EventSpec(0.0, duration, "a red square"),), None))
    video.info = VideoInfo(duration_s=duration, fps=clip.fps, width=160, height=128, num_frames=51)
    event = video.events[0]
    event.frames, event.times = clip.frames, np.arange(51) / clip.fps
    mask = np.zeros((128, 160), bool)
    mask[44:68, 34:58] = True  # inside the square, away from its border
    event.phrases = [PhraseWork("a red square", 0, 12, box=(0.2, 0.3, 0.4, 0.6), mask=mask, score=1.0)]
    TrackingStep(TrackingSettings(short_side=128))([video], StepStats())  # the default tracker
    KeyTrajectoryStep(KeyTrajectorySettings(min_visible_frac=0.8))([video], StepStats())
    phrase = event.phrases[0]
    times = frame_times(duration)
    for p in range(3):
        vis = phrase.visibility[p]
        assert vis.sum() >= 90
        start_xy = phrase.trajectory[p, 0].astype(np.float64) * [159, 127]
        for k in np.flatnonzero(vis):
            truth = start_xy + np.array(clip.velocity) * times[k] * clip.fps
            got = phrase.trajectory[p, k].astype(np.float64) * [159, 127]
            assert np.abs(got - truth).max() < 2.0, (p, k, got, truth)


def test_steps_pickle_without_models(demo_config):
    import pickle

    for step in build_steps(demo_config):
        clone = pickle.loads(pickle.dumps(step))
        assert type(clone) is type(step) and clone.settings == step.settings
