"""``configs/eval/*.yaml``: which task, which data, which checkpoint, which judge, where results go.

Loaded with :func:`load_eval_config`, which adds the checks that span fields (a format that fits
the task, the number of annotation files, a judge for VideoQA) to the per-field checks of
:func:`pite.config.load_config`, and reports every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pite.config import ConfigError, load_config, option

Task = Literal["grounding", "densecap", "videoqa"]
DatasetFormat = Literal["anet_captions", "charades_sta", "internvid", "qa_json", "anet_qa", "internvid_qa"]

ANNOTATION_COUNTS: dict[str, tuple[int, int]] = {
    "anet_captions": (1, 2),  # densecap may pool val_1 and val_2; grounding takes one file
    "charades_sta": (1, 1),
    "internvid": (1, 1),
    "qa_json": (1, 1),
    "anet_qa": (2, 2),  # test_q.json, test_a.json
    "internvid_qa": (1, 1),
}
"""Allowed number of ``dataset.annotations`` files per format (min, max)."""


@dataclass
class DatasetSettings:
    """The evaluation data, in its public format (see :mod:`pite.eval.datasets`)."""

    format: DatasetFormat = option(doc="Format of the annotation files.")
    annotations: list[str] = option([], "Annotation file(s): ActivityNet Captions val_1/val_2 JSON, Charades-STA "
                                        "txt, an InternVid manifest, a QA JSON list, or ActivityNet-QA "
                                        "[test_q.json, test_a.json].")
    name: str = option("", "Dataset name recorded in the summary, e.g. activitynet_captions.")
    durations: str = option("", "Video durations: Charades_v1_*.csv (id, length), a JSON {video: seconds} or "
                                "'video seconds' lines; InternVid formats probe video_root when empty.",
                            exists="file")
    video_root: str = option("", "Folder of the videos (InternVid formats read durations from the files).",
                             exists="dir")
    video_pattern: str = option("{video_id}.mp4", "Video file name under video_root; {video_id} is replaced.")
    video_id_pattern: str = option("{}", "How a QA file's video name or id becomes a video id: 'video{}' for "
                                         "MSRVTT-QA ids, 'v_{}' for ActivityNet-QA names.")
    limit: int | None = option(None, "Only the first N items (videos for dense captioning), for trials.", ge=1)


@dataclass
class JudgeSettings:
    """The VideoQA judge: any OpenAI-compatible chat-completions endpoint (Video-ChatGPT protocol)."""

    base_url: str = option("", "Endpoint base, e.g. https://api.openai.com/v1; '/chat/completions' is appended.")
    model: str = option("gpt-3.5-turbo", "Judge model; recorded with the results (scores move across versions).")
    api_key_env: str = option("OPENAI_API_KEY", "Environment variable holding the API key ('' for none); "
                                                "the key itself is never written or logged.")
    concurrency: int = option(4, "Questions in flight at once.", ge=1, le=256)
    max_retries: int = option(5, "Retries per question after a timeout, 408/429/5xx or unparsable verdict.", ge=0,
                              le=100)
    timeout_s: float = option(60.0, "Seconds to wait for one reply.", gt=0)
    backoff_s: float = option(1.0, "First retry delay (s); doubles per retry, with jitter.", ge=0)
    max_backoff_s: float = option(60.0, "Longest retry delay (s), also caps Retry-After.", ge=0)
    temperature: float = option(0.0, "Judge sampling temperature.", ge=0, le=2)
    max_tokens: int = option(64, "Longest judge reply, in tokens.", ge=1)
    stand_in: bool = option(False, "Start the local rule-based stand-in judge (pite.eval.judge_server) on "
                                   "127.0.0.1 instead of calling base_url. Demo and tests only: NOT an LLM judge.")


@dataclass
class EvalConfig:
    """One evaluation run: ``pite eval --config configs/eval/<task>.yaml``."""

    task: Task = option(doc="grounding, densecap or videoqa.")
    dataset: DatasetSettings = option(doc="The evaluation data.")
    out_dir: str = option(doc="Folder for predictions.jsonl, scores.jsonl and summary.json.")
    checkpoint: str = option("", "Model checkpoint folder used by the predictor (recorded in the summary).")
    features: str = option("", "Feature store folder (pite features) the predictor reads frames from.")
    batch_size: int = option(8, "Prompts per predictor call; predictions are saved after each call.", ge=1)
    max_new_tokens: int = option(256, "Longest generated answer, in tokens (greedy decoding).", ge=1)
    judge: JudgeSettings = option(default_factory=JudgeSettings, doc="VideoQA judge (ignored by other tasks).")


def config_problems(cfg: EvalConfig, check_paths: bool = True) -> list[str]:
    """Problems that span fields: format vs task, annotation files, durations, judge."""
    from pite.eval.registry import TASKS

    problems = []
    spec = TASKS.get(cfg.task)
    ds = cfg.dataset
    if spec is not None and ds.format not in spec.formats:
        problems.append(f"dataset.format: {ds.format!r} is not a {cfg.task} format; use one of "
                        f"{', '.join(spec.formats)}")
    low, high = ANNOTATION_COUNTS.get(ds.format, (1, 1))
    if cfg.task == "grounding":
        high = 1
    if not low <= len(ds.annotations) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        problems.append(f"dataset.annotations: {ds.format} ({cfg.task}) takes {want} file(s), "
                        f"got {len(ds.annotations)}")
    if check_paths:
        for k, path in enumerate(ds.annotations):
            if not Path(path).expanduser().is_file():
                problems.append(f"dataset.annotations[{k}]: file not found: {path}")
    if ds.format == "charades_sta" and not ds.durations:
        problems.append("dataset.durations: Charades-STA needs the video durations (e.g. Charades_v1_test.csv)")
    if ds.format in ("internvid", "internvid_qa") and not (ds.durations or ds.video_root):
        problems.append("dataset.video_root: an InternVid manifest needs video_root (to read durations) or durations")
    if cfg.task == "videoqa":
        if cfg.judge.stand_in and cfg.judge.base_url:
            problems.append("judge.base_url: leave it empty with judge.stand_in: true "
                            "(the stand-in picks a local port)")
        if not cfg.judge.stand_in and not cfg.judge.base_url:
            problems.append("judge.base_url: VideoQA needs a judge endpoint (or judge.stand_in: true for the demo)")
    return problems


def load_eval_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                     check_paths: bool = True) -> EvalConfig:
    """Read and check an eval config; raises :class:`pite.config.ConfigError` listing every problem."""
    cfg = load_config(path, EvalConfig, overrides, check_paths=check_paths)
    problems = config_problems(cfg, check_paths)
    if problems:
        raise ConfigError(str(path), problems)
    return cfg
