"""Evaluation tasks: each name maps to its dataset readers, its prompt, its answer parser and its scorer.

=========  =========================================  ============================================
task       formats                                    metrics (×100 unless stated)
=========  =========================================  ============================================
grounding  anet_captions, charades_sta, internvid     R@0.3, R@0.5, R@0.7, mIoU
densecap   anet_captions, internvid                   SODA_c, CIDEr, METEOR (+ per tIoU)
videoqa    qa_json, anet_qa, internvid_qa             accuracy (×100), score (0..5)
=========  =========================================  ============================================

Prompts: grounding "During which frames can we see {sentence}?" (the sentence stripped, its final
period dropped and its first letter lower-cased); dense captioning :data:`DENSECAP_PROMPT`;
VideoQA the question itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pite.eval import datasets as ds
from pite.eval.config import DatasetSettings, EvalConfig
from pite.timeline import parse_events, segment_to_seconds

DENSECAP_PROMPT = "Could you please detail the events that took place during different time segments in the video?"


@dataclass(frozen=True)
class PromptItem:
    """What the predictor sees: one prompt about one video. ``predict_fn(items) -> answers``."""

    item_id: str
    video_id: str
    prompt: str


@dataclass
class TaskResult:
    """A scorer's output: metrics, one row per item (or video), counts, failures, judge record."""

    metrics: dict[str, float]
    rows: list[dict]
    counts: dict[str, int]
    failures: list[dict] = field(default_factory=list)
    judge: dict | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One task: the dataset formats it reads, and how to prompt, parse and score."""

    name: str
    readers: Mapping[str, Callable[[DatasetSettings], ds.EvalData]]
    prompt: Callable[[object], str]
    score: Callable[[ds.EvalData, Mapping[str, str], EvalConfig], TaskResult]

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(self.readers)


# --- prompts and parsers ---------------------------------------------------------------------

def grounding_prompt(query: ds.GroundingQuery) -> str:
    sentence = query.sentence.strip()
    sentence = sentence[:-1].rstrip() if sentence.endswith(".") else sentence
    sentence = sentence[:1].lower() + sentence[1:]
    return f"During which frames can we see {sentence}?"


def densecap_prompt(video: ds.CaptionVideo) -> str:
    return DENSECAP_PROMPT


def videoqa_prompt(item: ds.QAItem) -> str:
    return item.question


def parse_dense_answer(answer: str, duration_s: float) -> list[tuple[float, float, str]]:
    """Events ``(start_s, end_s, caption)`` of a dense-captioning answer ("From 05 to 23, ...")."""
    return [(*segment_to_seconds(e.start, e.end, duration_s), e.caption) for e in parse_events(answer)]


# --- scorers ---------------------------------------------------------------------------------

def score_grounding(data: ds.EvalData, answers: Mapping[str, str], cfg: EvalConfig) -> TaskResult:
    from pite.eval.grounding import evaluate_grounding

    metrics, scores, counts = evaluate_grounding(data.items, answers)
    queries = {q.item_id: q for q in data.items}
    rows = [{"item_id": s.item_id, "video_id": queries[s.item_id].video_id, "iou": s.iou, "status": s.status,
             "predicted_s": list(s.predicted_s) if s.predicted_s else None,
             "gt_s": [queries[s.item_id].start_s, queries[s.item_id].end_s]} for s in scores]
    failures = [{"item_id": s.item_id, "reason": s.status} for s in scores if s.status != "ok"]
    return TaskResult(metrics, rows, counts, failures)


def score_densecap(data: ds.EvalData, answers: Mapping[str, str], cfg: EvalConfig,
                   scorer=None) -> TaskResult:
    from pite.eval.densecap import CocoCaptionScorer, evaluate_dense_captioning

    predictions, failures = {}, []
    for video in data.items:
        answer = answers.get(video.item_id)
        events = parse_dense_answer(answer, video.duration_s) if answer is not None else []
        if events:
            predictions[video.video_id] = events
        else:
            failures.append({"item_id": video.item_id, "reason": "missing" if answer is None else "unparsable"})
    if scorer is None:
        with CocoCaptionScorer() as coco:
            metrics, rows, counts = evaluate_dense_captioning(predictions, data.reference_sets, coco)
    else:
        metrics, rows, counts = evaluate_dense_captioning(predictions, data.reference_sets, scorer)
    counts["unparsable"] = sum(f["reason"] == "unparsable" for f in failures)
    counts["missing"] = sum(f["reason"] == "missing" for f in failures)
    return TaskResult(metrics, rows, counts, failures)


def score_videoqa(data: ds.EvalData, answers: Mapping[str, str], cfg: EvalConfig) -> TaskResult:
    import dataclasses

    from pite.eval.judge_server import STAND_IN_MODEL, StandInJudge
    from pite.eval.videoqa import JudgeClient, api_key_from_env, judge_all, videoqa_metrics

    settings = cfg.judge
    stand_in = StandInJudge().start() if settings.stand_in else None
    try:
        if stand_in is not None:
            settings = dataclasses.replace(settings, base_url=stand_in.url, model=STAND_IN_MODEL, api_key_env="")
        client = JudgeClient(settings, api_key_from_env(settings))
        records = judge_all(data.items, answers, client, Path(cfg.out_dir) / "judge_cache.jsonl")
    finally:
        if stand_in is not None:
            stand_in.close()
    metrics, counts = videoqa_metrics(records, len(data.items))
    rows, failures = [], []
    for item in data.items:
        record = records.get(item.item_id)
        row = {"item_id": item.item_id, "video_id": item.video_id, "question": item.question, "answer": item.answer}
        if record is None:
            failures.append({"item_id": item.item_id, "reason": "missing"})
            row["status"] = "missing"
        elif "failure" in record:
            failures.append({"item_id": item.item_id, "reason": record["failure"], "message": record["message"]})
            row.update(status=record["failure"], attempts=record["attempts"])
        else:
            row.update(status="ok", pred=record["pred"], score=record["score"], cached=record.get("cached", False))
        rows.append(row)
    judge = {"model": settings.model, "base_url": settings.base_url, "stand_in": settings.stand_in,
             "temperature": settings.temperature}
    return TaskResult(metrics, rows, counts, failures, judge)


# --- the registry ----------------------------------------------------------------------------

def _anet_grounding(s: DatasetSettings) -> ds.EvalData:
    return ds.anet_grounding(s.annotations[0])


TASKS: dict[str, TaskSpec] = {
    "grounding": TaskSpec("grounding", {
        "anet_captions": _anet_grounding,
        "charades_sta": lambda s: ds.read_charades_sta(s.annotations[0], s.durations),
        "internvid": ds.internvid_grounding,
    }, grounding_prompt, score_grounding),
    "densecap": TaskSpec("densecap", {
        "anet_captions": lambda s: ds.anet_densecap(s.annotations),
        "internvid": ds.internvid_densecap,
    }, densecap_prompt, score_densecap),
    "videoqa": TaskSpec("videoqa", {
        "qa_json": lambda s: ds.read_qa_json(s.annotations[0], s.video_id_pattern),
        "anet_qa": lambda s: ds.read_anet_qa(s.annotations[0], s.annotations[1], s.video_id_pattern),
        "internvid_qa": ds.internvid_qa,
    }, videoqa_prompt, score_videoqa),
}


def read_dataset(cfg: EvalConfig) -> ds.EvalData:
    """The task's items (cut to ``dataset.limit``), reference sets and problems."""
    spec = TASKS[cfg.task]
    data = spec.readers[cfg.dataset.format](cfg.dataset)
    if cfg.dataset.limit is not None and len(data.items) > cfg.dataset.limit:
        data.items = data.items[: cfg.dataset.limit]
        keep = {item.video_id for item in data.items}
        data.reference_sets = [{v: e for v, e in refs.items() if v in keep} for refs in data.reference_sets]
    return data


def prompt_items(cfg: EvalConfig, data: ds.EvalData) -> list[PromptItem]:
    prompt = TASKS[cfg.task].prompt
    return [PromptItem(item.item_id, item.video_id, prompt(item)) for item in data.items]
