"""Evaluation metrics on hand-computed cases, the dataset readers, and the run driver.

Pure-Python tests use a stand-in caption scorer (exact-match "METEOR"); the tests marked slow
run pycocoevalcap's real METEOR/CIDEr and PTB tokenizer through one shared Java scorer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from pite.eval.densecap import NONSENSE, densevid_pairs, evaluate_dense_captioning, order_preserving_assignment, soda_c
from pite.eval.grounding import evaluate_grounding, segment_iou
from pite.eval.datasets import GroundingQuery


class TableScorer:
    """Stand-in scorer: tokens are lower-cased text; METEOR from a table (default: 1 if equal else 0)."""

    def __init__(self, table: dict[tuple[str, str], float] | None = None):
        self.table = table or {}
        self.meteor_calls = 0

    def tokenize(self, sentences):
        return [s.lower() for s in sentences]

    def meteor(self, pairs):
        self.meteor_calls += 1
        scores = [self.table.get((h, r), float(h == r)) for h, r in pairs]
        return (float(np.mean(scores)) if scores else 0.0), scores

    def cider(self, pairs):
        return float(np.mean([float(h == r) for h, r in pairs])) if pairs else 0.0


# --- grounding -------------------------------------------------------------------------------

def test_segment_iou_exact_values():
    assert segment_iou((10, 20), (10, 20)) == 1.0
    assert segment_iou((15, 25), (10, 20)) == pytest.approx(1 / 3)
    assert segment_iou((0, 10), (10, 20)) == 0.0  # touching: no overlap
    assert segment_iou((20, 10), (10, 20)) == 1.0  # ends sorted
    assert segment_iou((5, 5), (5, 5)) == 0.0  # degenerate, not NaN


def test_grounding_recalls_and_miou_hand_computed():
    queries = [GroundingQuery(f"q{k}", "v", "s", 10.0, 20.0, 100.0) for k in range(5)]
    answers = {
        "q0": "From 10 to 20.",                    # (10, 20) s: IoU 1
        "q1": "The event happens from 15 to 25.",  # (15, 25) s: 5 / 15 = 1/3
        "q2": "between 05 and 08",                 # (5, 8) s: IoU 0
        "q3": "I cannot tell.",                    # unparsable: IoU 0, counted
    }                                              # q4 has no answer: IoU 0, counted
    metrics, scores, counts = evaluate_grounding(queries, answers)
    assert [s.iou for s in scores] == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.0])
    assert [s.status for s in scores] == ["ok", "ok", "ok", "unparsable", "missing"]
    assert metrics == pytest.approx({"R@0.3": 40.0, "R@0.5": 20.0, "R@0.7": 20.0, "mIoU": 100 * (4 / 3) / 5})
    assert counts == {"queries": 5, "unparsable": 1, "missing": 1}


def test_grounding_converts_indices_with_the_video_duration_and_counts_iou_at_threshold():
    # 50 s video: "20 to 60" is 10 s .. 30 s; IoU exactly 0.5 counts for R@0.5.
    queries = [GroundingQuery("a", "v", "s", 10.0, 30.0, 50.0), GroundingQuery("b", "v", "s", 0.0, 20.0, 100.0)]
    metrics, scores, _ = evaluate_grounding(queries, {"a": "From 20 to 60, a man.", "b": "From 00 to 10"})
    assert scores[0].predicted_s == (10.0, 30.0) and scores[0].iou == 1.0
    assert scores[1].iou == 0.5
    assert metrics["R@0.5"] == 100.0 and metrics["R@0.7"] == 50.0


# --- SODA_c ----------------------------------------------------------------------------------

def _greedy_order_preserving(scores: np.ndarray) -> float:
    """Take the largest remaining score whose pair keeps the order of the pairs already taken."""
    taken: list[tuple[int, int]] = []
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, scores.shape)
        if scores[i, j] > 0 and all((i - a) * (j - b) > 0 for a, b in taken):
            taken.append((int(i), int(j)))
    return float(sum(scores[i, j] for i, j in taken))


def test_assignment_dp_beats_greedy_and_preserves_order():
    scores = np.array([[0.4, 0.5], [0.0, 0.45]])
    total, pairs = order_preserving_assignment(scores)
    assert total == pytest.approx(0.85) and pairs == [(0, 0), (1, 1)]
    assert _greedy_order_preserving(scores) == pytest.approx(0.5)
    # crossing pairs are not allowed even when their sum is larger
    total, pairs = order_preserving_assignment(np.array([[0.0, 0.9], [0.8, 0.0]]))
    assert total == pytest.approx(0.9) and pairs == [(0, 1)]


def test_soda_c_uses_the_order_preserving_assignment():
    # Sorted refs: r0 = [0, 10], r1 = [0, 20]. IoU matrix [[1, .5], [0, .5]], METEOR [[.4, 1], [0, .9]]
    # -> S = [[.4, .5], [0, .45]]. DP: .4 + .45 = .85; greedy takes .5 and then nothing.
    refs = [{"v": [(0.0, 20.0, "r1"), (0.0, 10.0, "r0")]}]
    preds = {"v": [(10.0, 20.0, "p1"), (0.0, 10.0, "p0")]}  # unsorted on purpose
    scorer = TableScorer({("p0", "r0"): 0.4, ("p0", "r1"): 1.0, ("p1", "r1"): 0.9})
    soda, per_video = soda_c(preds, refs, scorer)
    f1_dp = 0.85 / 2  # precision = recall = 0.85 / 2
    assert soda == pytest.approx(100 * f1_dp) and per_video["v"] == pytest.approx(100 * f1_dp)
    assert soda != pytest.approx(100 * 0.5 / 2)  # what greedy matching would give


def test_soda_c_takes_the_better_reference_set_and_scores_missing_videos_zero():
    preds = {"a": [(0.0, 10.0, "x")]}
    ref_sets = [{"a": [(0.0, 10.0, "y")], "b": [(0.0, 5.0, "z")]}, {"a": [(0.0, 10.0, "x"), (10.0, 20.0, "w")]}]
    soda, per_video = soda_c(preds, ref_sets, TableScorer())
    # set 1 for "a": S = 0 -> F1 0; set 2: sum 1, p = 1, r = 1/2 -> F1 2/3. "b" has no prediction: 0.
    assert per_video == pytest.approx({"a": 100 * 2 / 3, "b": 0.0})
    assert soda == pytest.approx(100 * 1 / 3)


def test_soda_c_on_a_500_event_video_does_not_overflow():
    events = [(float(k), float(k + 1), f"event {k}") for k in range(500)]
    start = time.perf_counter()
    soda, _ = soda_c({"long": events[::-1]}, [{"long": events}], TableScorer())
    assert soda == pytest.approx(100.0)
    assert time.perf_counter() - start < 5.0
    total, pairs = order_preserving_assignment(np.eye(2000))
    assert total == 2000.0 and len(pairs) == 2000


# --- CIDEr / METEOR pairing (densevid) -------------------------------------------------------

def test_densevid_pairs_every_match_over_all_sets_or_the_nonsense_reference():
    sets = [[(0.0, 10.0, "a"), (5.0, 15.0, "b")], [(0.0, 9.0, "c")]]
    pairs = densevid_pairs([(0.0, 10.0, "p"), (50.0, 60.0, "q")], sets, tiou=0.5)
    # IoU(p, a) = 1, IoU(p, b) = 5/15 < .5, IoU(p, c) = .9; q overlaps nothing
    assert pairs == [("p", "a"), ("p", "c"), ("q", NONSENSE)]


def test_dense_captioning_counts_videos_without_predictions_as_zero():
    refs = [{"a": [(0.0, 10.0, "x")], "b": [(0.0, 10.0, "y")]}]
    metrics, rows, counts = evaluate_dense_captioning({"a": [(0.0, 10.0, "x")], "zz": [(0, 1, "q")]}, refs,
                                                      TableScorer())
    assert metrics["SODA_c"] == pytest.approx(50.0) and metrics["METEOR"] == pytest.approx(50.0)
    assert counts["videos_without_prediction"] == 1 and counts["predictions_for_unknown_videos"] == 1
    assert [r["video_id"] for r in rows] == ["a", "b"] and rows[1]["SODA_c"] == 0.0


# --- real METEOR / CIDEr (Java) --------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_scorer():
    from pite.eval.densecap import CocoCaptionScorer

    with CocoCaptionScorer() as scorer:
        yield scorer


REFERENCES = [{
    "v1": [(0.0, 10.0, "A man is riding a red bike down the street."), (12.0, 30.0, "He stops and talks to a woman.")],
    "v2": [(0.0, 5.0, "A dog jumps into the lake."), (5.0, 20.0, "The dog swims back with a stick.")],
}]


@pytest.mark.slow
def test_perfect_predictions_give_the_maximum(coco_scorer):
    metrics, _, counts = evaluate_dense_captioning(REFERENCES[0], REFERENCES, coco_scorer)
    assert metrics["SODA_c"] == pytest.approx(100.0)
    assert metrics["METEOR"] == pytest.approx(100.0)
    assert metrics["CIDEr"] == pytest.approx(1000.0)  # CIDEr-D of identical captions is 10, ×100
    assert counts["videos_without_prediction"] == 0
    worse = {vid: [(s + 1.0, e + 3.0, c.replace("a ", "one ")) for s, e, c in events]
             for vid, events in REFERENCES[0].items()}
    worse_metrics, _, _ = evaluate_dense_captioning(worse, REFERENCES, coco_scorer)
    assert all(worse_metrics[k] < metrics[k] for k in ("SODA_c", "METEOR", "CIDEr"))


@pytest.mark.slow
def test_empty_predictions_give_zero(coco_scorer):
    metrics, rows, counts = evaluate_dense_captioning({}, REFERENCES, coco_scorer)
    assert all(value == 0.0 for value in metrics.values())
    assert counts["videos_without_prediction"] == 2 and len(rows) == 2


@pytest.mark.slow
def test_ptb_tokenizer_lowercases_and_drops_punctuation(coco_scorer):
    assert coco_scorer.tokenize(["A man isn't riding, quickly.", "Café ok!"]) == ["a man is n't riding quickly",
                                                                                   "caf ok"]


# --- dataset readers -------------------------------------------------------------------------

def test_activitynet_captions_reader_grounding_and_densecap(tmp_path):
    from pite.eval.datasets import anet_densecap, anet_grounding

    val1 = {"v_a": {"duration": 100.0, "timestamps": [[30, 10], [40, 80]], "sentences": ["One. ", "Two."]},
            "v_bad": {"duration": 0, "timestamps": [], "sentences": []}}
    val2 = {"v_a": {"duration": 100.0, "timestamps": [[0, 50]], "sentences": ["Three."]},
            "v_b": {"duration": 20.0, "timestamps": [[1, 2]], "sentences": ["Four."]}}
    (tmp_path / "val_1.json").write_text(json.dumps(val1))
    (tmp_path / "val_2.json").write_text(json.dumps(val2))
    grounding = anet_grounding(tmp_path / "val_1.json")
    assert [(q.item_id, q.start_s, q.end_s, q.sentence) for q in grounding.items] == [
        ("v_a#0", 10.0, 30.0, "One."), ("v_a#1", 40.0, 80.0, "Two.")]
    assert [p["reason"] for p in grounding.problems] == ["bad_duration"]
    dense = anet_densecap([str(tmp_path / "val_1.json"), str(tmp_path / "val_2.json")])
    assert [(v.video_id, v.duration_s) for v in dense.items] == [("v_a", 100.0), ("v_b", 20.0)]
    assert dense.reference_sets[1]["v_a"] == [(0.0, 50.0, "Three.")]


def test_charades_sta_reader_with_csv_durations(tmp_path):
    from pite.eval.datasets import read_charades_sta

    (tmp_path / "sta.txt").write_text("3MSZA 24.3 30.4##person turn a light on.\nXYZ 1 2##no duration\nbad line\n")
    (tmp_path / "Charades_v1_test.csv").write_text("id,subject,scene,length\n3MSZA,s,Kitchen,31.5\n")
    data = read_charades_sta(tmp_path / "sta.txt", tmp_path / "Charades_v1_test.csv")
    assert data.items == [GroundingQuery("3MSZA#1", "3MSZA", "person turn a light on.", 24.3, 30.4, 31.5)]
    assert [p["reason"] for p in data.problems] == ["no_duration", "bad_line"]


def test_qa_readers(tmp_path):
    from pite.eval.datasets import QAItem, read_anet_qa, read_qa_json

    (tmp_path / "msrvtt.json").write_text(json.dumps([
        {"video_id": 7010, "question": "what is he doing?", "answer": "cook", "id": 1},
        {"video_name": "v2", "question": "who?", "answer": "man", "question_id": "q2"},
        {"video_id": 3, "question": "no answer"}]))
    data = read_qa_json(tmp_path / "msrvtt.json", "video{}")
    assert data.items == [QAItem("1", "video7010", "what is he doing?", "cook"), QAItem("q2", "videov2", "who?", "man")]
    assert [p["reason"] for p in data.problems] == ["missing_field"]
    (tmp_path / "test_q.json").write_text(json.dumps([{"question_id": "x_0", "video_name": "x", "question": "q?"},
                                                      {"question_id": "y_0", "video_name": "y", "question": "q?"}]))
    (tmp_path / "test_a.json").write_text(json.dumps([{"question_id": "x_0", "answer": "yes", "type": 3}]))
    data = read_anet_qa(tmp_path / "test_q.json", tmp_path / "test_a.json")
    assert data.items == [QAItem("x_0", "v_x", "q?", "yes")] and data.problems[0]["reason"] == "no_answer"


def test_demo_manifest_builds_references(repo_root, monkeypatch):
    from pipeline.demo_data import prepare_demo_videos
    from pite.eval.config import load_eval_config
    from pite.eval.registry import read_dataset

    monkeypatch.chdir(repo_root)
    prepare_demo_videos()
    cfg = load_eval_config(repo_root / "configs/eval/demo_densecap.yaml")
    data = read_dataset(cfg)
    assert [v.video_id for v in data.items] == ["bikes", "bigbuckbunny", "carphone_pristine", "synthetic_square"]
    assert data.reference_sets[0]["bikes"][0] == (0.0, 2.0, "a red car drives past a white wall on a street")
    assert all(v.duration_s > 0 for v in data.items)
    assert [p["where"] for p in data.problems] == ["missing_clip"]


# --- the run driver --------------------------------------------------------------------------

def _grounding_config(tmp_path: Path) -> Path:
    (tmp_path / "val_2.json").write_text(json.dumps({
        "v1": {"duration": 100.0, "timestamps": [[10, 20], [50, 60], [0, 100]], "sentences": ["A cat.", "B.", "C."]}}))
    config = tmp_path / "grounding.yaml"
    config.write_text(f"task: grounding\ndataset: {{format: anet_captions, annotations: [{tmp_path}/val_2.json]}}\n"
                      f"out_dir: {tmp_path}/out\ncheckpoint: ckpt\nbatch_size: 2\n")
    return config


def test_run_writes_results_and_a_rerun_reuses_predictions(tmp_path):
    from pite.eval.run import EvalError, run_eval

    config = _grounding_config(tmp_path)
    seen: list[str] = []

    def predict(items):
        seen.extend(item.prompt for item in items)
        if len(seen) > 2:
            raise KeyboardInterrupt  # killed after the first batch of two
        return ["From 10 to 20" if "cat" in item.prompt else "no idea" for item in items]

    with pytest.raises(KeyboardInterrupt):
        run_eval(config, [], predict)
    assert seen[0] == "During which frames can we see a cat?"
    assert len((tmp_path / "out/predictions.jsonl").read_text().splitlines()) == 2
    with pytest.raises(EvalError, match="1 of 3 items have no saved prediction"):
        run_eval(config, [])
    asked: list[str] = []
    assert run_eval(config, [], lambda items: asked.extend(i.item_id for i in items) or ["From 00 to 99"]) == 0
    assert asked == ["v1#2"]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["metrics"]["R@0.7"] == pytest.approx(200 / 3)  # v1#0 IoU 1, v1#2 IoU .99
    assert summary["counts"]["unparsable"] == 1 and summary["counts"]["predictions_reused"] == 2
    assert summary["checkpoint"] == "ckpt" and summary["config"]["task"] == "grounding"
    assert len((tmp_path / "out/scores.jsonl").read_text().splitlines()) == 3
    run_eval(config, [], None)  # everything saved: no predictor needed
    run_eval(config, ["checkpoint=other"], lambda items: ["x"] * len(items))  # another checkpoint: predicts again
    assert json.loads((tmp_path / "out/summary.json").read_text())["counts"]["predicted"] == 3


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs/eval").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_eval_configs_pass_the_cross_field_checks(path):
    from pite.eval.config import load_eval_config

    assert load_eval_config(path, check_paths=False).task in ("grounding", "densecap", "videoqa")


def test_config_problems_are_listed_together(tmp_path):
    from pite.config import ConfigError
    from pite.eval.config import load_eval_config

    config = tmp_path / "bad.yaml"
    config.write_text("task: videoqa\ndataset: {format: charades_sta, annotations: [a.txt, b.txt]}\nout_dir: o\n")
    with pytest.raises(ConfigError) as err:
        load_eval_config(config)
    text = str(err.value)
    for needle in ("not a videoqa format", "takes 1 file(s), got 2", "file not found: a.txt",
                   "Charades-STA needs the video durations", "VideoQA needs a judge endpoint"):
        assert needle in text
