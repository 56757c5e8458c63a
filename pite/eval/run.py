"""``pite eval --config configs/eval/<task>.yaml``: predict, score, write the results.

One run, top to bottom:

1. load and check the config (:func:`pite.eval.config.load_eval_config`);
2. read the dataset with the task's reader (:mod:`pite.eval.registry`);
3. predict the items that have no prediction yet: ``predict_fn(items) -> answers``, called with at
   most ``batch_size`` :class:`~pite.eval.registry.PromptItem` at a time, each batch appended to
   ``predictions.jsonl`` (flushed and fsynced) before the next, so a rerun only predicts what is
   missing. A saved prediction is reused when its item id, prompt and checkpoint are the same;
4. score with the task's scorer and write ``scores.jsonl`` (one row per item, or per video for
   dense captioning) and ``summary.json``: metrics (×100 as in ``metrics.md``), counts (with
   unparsable answers, videos without predictions and judge failures), failures, dataset
   problems, the config, the checkpoint and the judge.

The predictor is injected: the CLI passes the real one (greedy decoding from ``checkpoint`` on
the frames in ``features``); tests pass a fake.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pite.config import to_dict
from pite.eval.config import EvalConfig, load_eval_config
from pite.eval.registry import TASKS, PromptItem, prompt_items, read_dataset

PredictFn = Callable[[list[PromptItem]], list[str]]
PREDICTIONS_FILE, SCORES_FILE, SUMMARY_FILE = "predictions.jsonl", "scores.jsonl", "summary.json"


class EvalError(Exception):
    """A problem with the run's input (no items, no predictor, a predictor breaking its contract)."""


def load_predictions(path: Path, items: Sequence[PromptItem], checkpoint: str) -> dict[str, str]:
    """Saved answers still valid for ``items``: same item id, prompt and checkpoint. A torn last
    line (a killed run) and lines of other items are ignored; a later line for an item wins."""
    if not path.exists():
        return {}
    prompts = {item.item_id: item.prompt for item in items}
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if (isinstance(row, dict) and prompts.get(row.get("item_id")) == row.get("prompt")
                and row.get("checkpoint", "") == checkpoint and isinstance(row.get("answer"), str)):
            answers[row["item_id"]] = row["answer"]
    return answers


def predict_missing(items: Sequence[PromptItem], answers: dict[str, str], predict_fn: PredictFn | None,
                    path: Path, checkpoint: str, batch_size: int) -> int:
    """Predict the items without an answer, in batches appended to ``path``; returns how many."""
    missing = [item for item in items if item.item_id not in answers]
    if missing and predict_fn is None:
        raise EvalError(f"{len(missing)} of {len(items)} items have no saved prediction in {path} and no "
                        "predictor was given")
    done = 0
    for start in range(0, len(missing), batch_size):
        batch = missing[start:start + batch_size]
        outputs = predict_fn(batch)
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(batch) \
                or not all(isinstance(o, str) for o in outputs):
            raise EvalError(f"the predictor must return one string per item: got {type(outputs).__name__} "
                            f"for {len(batch)} items")
        lines = [json.dumps({"item_id": item.item_id, "video_id": item.video_id, "prompt": item.prompt,
                             "checkpoint": checkpoint, "answer": answer}, ensure_ascii=False)
                 for item, answer in zip(batch, outputs)]
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        answers.update((item.item_id, answer) for item, answer in zip(batch, outputs))
        done += len(batch)
        print(f"predicted {done}/{len(missing)}", flush=True)
    return done


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def evaluate(cfg: EvalConfig, predict_fn: PredictFn | None = None,
             make_predictor: Callable[[EvalConfig], PredictFn] | None = None) -> dict:
    """Run one evaluation (see the module doc) and return the summary that was written.

    ``make_predictor(cfg)`` is called only when some item still needs a prediction, so a rerun
    over complete predictions never loads a model.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_dataset(cfg)
    if not data.items:
        reasons = sorted({p["reason"] for p in data.problems})
        raise EvalError(f"the dataset has no usable item ({len(data.problems)} problems: {', '.join(reasons) or '-'})")
    items = prompt_items(cfg, data)
    path = out / PREDICTIONS_FILE
    answers = load_predictions(path, items, cfg.checkpoint)
    reused = len(answers)
    started = time.perf_counter()
    if len(answers) < len(items) and predict_fn is None and make_predictor is not None:
        predict_fn = make_predictor(cfg)
    predicted = predict_missing(items, answers, predict_fn, path, cfg.checkpoint, cfg.batch_size)
    predict_s = time.perf_counter() - started
    started = time.perf_counter()
    result = TASKS[cfg.task].score(data, answers, cfg)
    score_s = time.perf_counter() - started
    _atomic_write_text(out / SCORES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.rows))
    from pite import __version__

    summary = {
        "task": cfg.task,
        "dataset": {"name": cfg.dataset.name, "format": cfg.dataset.format, "annotations": cfg.dataset.annotations},
        "metrics": result.metrics,
        "counts": {"items": len(items), "predictions_reused": reused, "predicted": predicted,
                   "dataset_problems": len(data.problems), **result.counts},
        "failures": result.failures,
        "dataset_problems": data.problems,
        "checkpoint": cfg.checkpoint or None,
        "judge": result.judge,
        "config": to_dict(cfg),
        "seconds": {"predict": round(predict_s, 3), "score": round(score_s, 3)},
        "pite_version": __version__,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def summary_lines(summary: dict) -> list[str]:
    """A few lines for people: the metrics, the counts that matter, where the files are."""
    name = summary["dataset"]["name"] or summary["dataset"]["format"]
    metrics = " | ".join(f"{k} {v:.2f}" for k, v in summary["metrics"].items() if "@" not in k or k.startswith("R@"))
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v or k == "items")
    lines = [f"{summary['task']} on {name}: {metrics}", f"counts: {counts}"]
    if summary.get("judge"):
        lines.append(f"judge: {summary['judge']['model']}")
    return lines


def run_eval(config_path: str | Path, overrides: Sequence[str] = (), predict_fn: PredictFn | None = None,
             make_predictor: Callable[[EvalConfig], PredictFn] | None = None) -> int:
    """``pite eval``: load the config, evaluate, print a summary; returns the exit code (0).

    Raises:
        pite.config.ConfigError: the config has problems (all listed).
        EvalError, pite.eval.videoqa.JudgeFatalError: the run cannot go on (message for people).
    """
    cfg = load_eval_config(config_path, list(overrides))
    summary = evaluate(cfg, predict_fn, make_predictor)
    print("\n".join(summary_lines(summary)))
    print(f"results in {Path(cfg.out_dir) / SUMMARY_FILE}", flush=True)
    return 0
