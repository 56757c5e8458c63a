"""Readers for the evaluation datasets, each in its public format.

* **ActivityNet Captions** (``val_1.json``, ``val_2.json``): ``{vid: {duration, timestamps:[[s, e]],
  sentences:[...]}}``. Grounding asks one query per sentence; dense captioning uses one reference
  set per file.
* **Charades-STA** (``charades_sta_test.txt``): lines ``vid start end##sentence``; durations come
  from a separate file (:func:`read_durations`: ``Charades_v1_test.csv`` with ``id`` and ``length``
  columns, a JSON ``{vid: seconds}``, or ``vid seconds`` lines).
* **MSVD-QA / MSRVTT-QA** JSON lists of ``{video_name | video_id, question, answer, question_id | id}``.
* **ActivityNet-QA** ``test_q.json`` (``question_id, video_name, question``) + ``test_a.json``
  (``question_id, answer``).
* **InternVid manifests** (the demo's ``data/demo/manifest.jsonl``), read by
  :func:`pipeline.manifest.read_manifest`; the events of a video become grounding queries and a
  dense-captioning reference set, with durations probed from the videos. ``internvid_qa`` builds one
  question per video from it ("What happens at the start of the video?", answer: the first event's
  caption), so the demo can run the VideoQA protocol without a QA file.

A row that cannot be used does not stop the read: it is left out and reported in ``problems``
(``{"where", "reason", "message"}``), which the run summary counts.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from pite.eval.config import DatasetSettings

Event = tuple[float, float, str]


@dataclass(frozen=True)
class GroundingQuery:
    """One grounding query: a sentence and its ground-truth segment in seconds."""

    item_id: str
    video_id: str
    sentence: str
    start_s: float
    end_s: float
    duration_s: float


@dataclass(frozen=True)
class CaptionVideo:
    """One video to caption densely (its duration converts frame indices to seconds)."""

    item_id: str
    video_id: str
    duration_s: float


@dataclass(frozen=True)
class QAItem:
    """One open-ended question about a video."""

    item_id: str
    video_id: str
    question: str
    answer: str


@dataclass
class EvalData:
    """What a reader returns: the items to predict, reference sets (dense captioning), problems."""

    items: list = field(default_factory=list)
    reference_sets: list[dict[str, list[Event]]] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def _problem(where: str, reason: str, message: str) -> dict:
    return {"where": where, "reason": reason, "message": message}


def _load_json(path: str | Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number and number != float("inf") else None


# --- ActivityNet Captions --------------------------------------------------------------------

def read_anet_captions(path: str | Path, problems: list[dict] | None = None) -> dict[str, tuple[float, list[Event]]]:
    """``{vid: (duration_s, [(start_s, end_s, sentence), ...])}`` of a densevid ground-truth file.

    Videos without a positive duration and events with a bad timestamp are left out and reported.
    """
    problems = problems if problems is not None else []
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{video id: {{duration, timestamps, sentences}}}}, "
                         f"got {type(data).__name__}")
    videos = {}
    for vid, entry in data.items():
        where = f"{Path(path).name}:{vid}"
        duration = _positive(entry.get("duration")) if isinstance(entry, dict) else None
        if duration is None:
            problems.append(_problem(where, "bad_duration", f"video {vid} has no positive duration"))
            continue
        stamps, sentences = entry.get("timestamps") or [], entry.get("sentences") or []
        if len(stamps) != len(sentences):
            problems.append(_problem(where, "bad_video", f"{len(stamps)} timestamps but {len(sentences)} sentences"))
            continue
        events = []
        for k, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            try:
                start, end = sorted((float(stamp[0]), float(stamp[1])))
            except (TypeError, ValueError, IndexError):
                problems.append(_problem(f"{where}#{k}", "bad_timestamp", f"timestamp {stamp!r} is not [start, end]"))
                continue
            events.append((start, end, str(sentence).strip()))
        videos[str(vid)] = (duration, events)
    return videos


def anet_grounding(path: str | Path) -> EvalData:
    """One :class:`GroundingQuery` per sentence; ids are ``"{vid}#{k}"`` (k = sentence index in the file)."""
    data = EvalData()
    for vid, (duration, events) in read_anet_captions(path, data.problems).items():
        for k, (start, end, sentence) in enumerate(events):
            data.items.append(GroundingQuery(f"{vid}#{k}", vid, sentence, start, end, duration))
    return data


def anet_densecap(paths: list[str]) -> EvalData:
    """One :class:`CaptionVideo` per video of any file, and one reference set per file."""
    data = EvalData()
    durations: dict[str, float] = {}
    for path in paths:
        videos = read_anet_captions(path, data.problems)
        data.reference_sets.append({vid: events for vid, (_, events) in videos.items()})
        for vid, (duration, _) in videos.items():
            durations.setdefault(vid, duration)
    data.items = [CaptionVideo(vid, vid, duration) for vid, duration in durations.items()]
    return data


# --- Charades-STA ----------------------------------------------------------------------------

def read_durations(path: str | Path) -> dict[str, float]:
    """Video durations in seconds from a CSV with ``id`` and ``length`` (or ``duration``) columns,
    a JSON ``{vid: seconds}``, or text lines ``vid seconds``."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = _load_json(path)
        return {str(k): v for k, v in ((k, _positive(v)) for k, v in data.items()) if v is not None}
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        column = next((c for c in ("length", "duration") if c in (reader.fieldnames or [])), None)
        if "id" not in (reader.fieldnames or []) or column is None:
            raise ValueError(f"{path}: a durations CSV needs 'id' and 'length' (or 'duration') columns; "
                             f"found {reader.fieldnames}")
        rows = ((row["id"], _positive(row[column])) for row in reader)
    else:
        split = (line.split() for line in text.splitlines())
        rows = ((parts[0], _positive(parts[1])) for parts in split if len(parts) >= 2)
    return {str(vid): seconds for vid, seconds in rows if seconds is not None}


def read_charades_sta(path: str | Path, durations_path: str | Path) -> EvalData:
    """Queries of a Charades-STA txt file; ids are ``"{vid}#{line}"`` (1-based line number)."""
    data = EvalData()
    durations = read_durations(durations_path)
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{Path(path).name}:{line_no}"
        head, sep, sentence = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3 or not sentence.strip():
            data.problems.append(_problem(where, "bad_line", f"expected 'vid start end##sentence', got {line[:80]!r}"))
            continue
        vid = parts[0]
        try:
            start, end = sorted((float(parts[1]), float(parts[2])))
        except ValueError:
            data.problems.append(_problem(where, "bad_timestamp", f"times {parts[1:]} are not numbers"))
            continue
        if vid not in durations:
            data.problems.append(_problem(where, "no_duration", f"video {vid} has no duration in {durations_path}"))
            continue
        data.items.append(GroundingQuery(f"{vid}#{line_no}", vid, sentence.strip(), start, end, durations[vid]))
    return data


# --- VideoQA ---------------------------------------------------------------------------------

def _first(row: dict, *keys: str):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def read_qa_json(path: str | Path, video_id_pattern: str = "{}") -> EvalData:
    """MSVD-QA / MSRVTT-QA style list of ``{video_name | video_id, question, answer, question_id | id}``.

    The video id is ``video_id_pattern.format(name_or_id)``; a row without id gets its list index.
    """
    data = EvalData()
    rows = _load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
    seen: set[str] = set()
    for k, row in enumerate(rows):
        where = f"{Path(path).name}[{k}]"
        if not isinstance(row, dict):
            data.problems.append(_problem(where, "bad_row", "not a JSON object"))
            continue
        video, question, answer = _first(row, "video_name", "video_id", "video"), row.get("question"), row.get("answer")
        qid = _first(row, "question_id", "id")
        qid = str(k if qid is None else qid)
        missing = [name for name, v in (("video", video), ("question", question), ("answer", answer)) if v is None]
        if missing:
            data.problems.append(_problem(where, "missing_field", f"no {', '.join(missing)}"))
        elif qid in seen:
            data.problems.append(_problem(where, "duplicate_id", f"question id {qid} appears twice"))
        else:
            seen.add(qid)
            data.items.append(QAItem(qid, video_id_pattern.format(video), str(question), str(answer)))
    return data


def read_anet_qa(questions_path: str | Path, answers_path: str | Path, video_id_pattern: str = "v_{}") -> EvalData:
    """ActivityNet-QA: questions from ``test_q.json``, answers from ``test_a.json``, joined on ``question_id``."""
    data = EvalData()
    answers = {}
    for row in _load_json(answers_path):
        if isinstance(row, dict) and row.get("question_id") is not None and row.get("answer") is not None:
            answers[str(row["question_id"])] = str(row["answer"])
    for k, row in enumerate(_load_json(questions_path)):
        where = f"{Path(questions_path).name}[{k}]"
        if not isinstance(row, dict) or row.get("question_id") is None or row.get("question") is None \
                or row.get("video_name") is None:
            data.problems.append(_problem(where, "bad_row", "expected {question_id, video_name, question}"))
            continue
        qid = str(row["question_id"])
        if qid not in answers:
            data.problems.append(_problem(where, "no_answer", f"question {qid} has no answer in {answers_path}"))
            continue
        data.items.append(QAItem(qid, video_id_pattern.format(row["video_name"]), str(row["question"]), answers[qid]))
    return data


# --- InternVid manifests (demo) --------------------------------------------------------------

def read_internvid(settings: DatasetSettings) -> tuple[dict[str, tuple[float, list[Event]]], list[dict]]:
    """``{vid: (duration_s, events)}`` of an InternVid manifest, and the problems met.

    Durations come from ``settings.durations`` when given, else from probing each video under
    ``settings.video_root``; a video with neither is left out (reason ``no_duration``).
    """
    from pipeline.config import ManifestSettings
    from pipeline.manifest import read_manifest

    manifest = read_manifest(ManifestSettings(path=settings.annotations[0], video_root=settings.video_root or ".",
                                              filename_pattern=settings.video_pattern))
    problems = [_problem(f"line {e.line}", e.reason, e.message) for e in manifest.errors]
    known = read_durations(settings.durations) if settings.durations else {}
    videos = {}
    for task in manifest.tasks:
        duration = known.get(task.video_id)
        if duration is None and not settings.durations:
            duration, message = _probe_duration(Path(settings.video_root) / task.video_path)
        else:
            message = f"no duration for {task.video_id} in {settings.durations}"
        if duration is None:
            problems.append(_problem(task.video_id, "no_duration", message))
            continue
        videos[task.video_id] = (duration, [(e.start_s, e.end_s, e.caption.strip()) for e in task.events])
    return videos, problems


def _probe_duration(path: Path) -> tuple[float | None, str]:
    from pite.video import VideoError, probe

    if not path.is_file():
        return None, f"video file not found: {path}"
    try:
        return _positive(probe(path).duration_s), f"{path} has no positive duration"
    except VideoError as exc:
        return None, f"{path}: {exc}"


def internvid_grounding(settings: DatasetSettings) -> EvalData:
    videos, problems = read_internvid(settings)
    items = [GroundingQuery(f"{vid}#{k}", vid, sentence, start, end, duration)
             for vid, (duration, events) in videos.items() for k, (start, end, sentence) in enumerate(events)]
    return EvalData(items, [], problems)


def internvid_densecap(settings: DatasetSettings) -> EvalData:
    videos, problems = read_internvid(settings)
    items = [CaptionVideo(vid, vid, duration) for vid, (duration, _) in videos.items()]
    return EvalData(items, [{vid: events for vid, (_, events) in videos.items()}], problems)


INTERNVID_QUESTION = "What happens at the start of the video?"


def internvid_qa(settings: DatasetSettings) -> EvalData:
    videos, problems = read_internvid(settings)
    items = [QAItem(f"{vid}#q0", vid, INTERNVID_QUESTION, events[0][2])
             for vid, (_, events) in videos.items() if events]
    return EvalData(items, [], problems)
