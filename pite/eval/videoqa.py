"""VideoQA scoring with an LLM judge (the Video-ChatGPT protocol), against any OpenAI-compatible endpoint.

The judge reads the question, the correct answer and the model's answer, and replies with a
Python dict string ``{'pred': 'yes' | 'no', 'score': 0..5}``. Accuracy = yes / (yes + no) and
score = mean of the integer scores (``metrics.md``).

The client (:class:`JudgeClient`) speaks plain HTTP with ``urllib.request``:

* ``POST {base_url}/chat/completions`` with the judge model, temperature and the two messages;
  ``Authorization: Bearer <key>`` when a key is set. The key is read from the environment variable
  the config names and is never written to results, logs or error messages.
* Timeouts, connection errors, HTTP 408, 429 and 5xx are retried with exponential backoff and
  jitter (``backoff_s * 2**attempt``, capped at ``max_backoff_s``, times a random factor in
  [0.5, 1]); a 429's ``Retry-After`` is honoured up to the cap. A reply whose verdict cannot be
  parsed is retried the same way. After ``max_retries`` retries the question is recorded as a
  failure (reason ``unparsable_verdict``, ``timeout``, ``http_<code>``, ...) and counted.
* HTTP 401, 403 and 404 stop the run (:class:`JudgeFatalError`): a wrong key, model or URL would
  fail every question. Other 4xx fail the question without retries.

:func:`judge_all` runs the questions on a bounded thread pool and appends each verdict to a JSONL
cache as soon as it arrives (flushed and fsynced), so a killed run resumes without asking again.
A cached verdict is reused only if the judge model, question, answer and prediction are the same
(:func:`fingerprint`); failures are not cached, so a rerun asks those questions again.
"""

from __future__ import annotations

import ast
import hashlib
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from pite.eval.config import JudgeSettings

SYSTEM_PROMPT = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine "
    "if they match meaningfully. Here's how you can accomplish the task:\n"
    "------\n"
    "##INSTRUCTIONS: \n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER_TEMPLATE = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. Please generate the response in the form of a Python "
    "dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and "
    "value of 'score' is in INTEGER, not STRING. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only "
    "provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}."
)
"""Video-ChatGPT's judge prompt, its example score of 4.8 included (a fraction is read as its integer part)."""
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})


class JudgeFatalError(RuntimeError):
    """The judge refused in a way that would fail every question (wrong key, model or URL)."""


def build_messages(question: str, answer: str, prediction: str) -> list[dict[str, str]]:
    """The two chat messages of the Video-ChatGPT judge prompt."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction)}]


@dataclass(frozen=True)
class Verdict:
    """A parsed judge reply: ``pred`` is "yes" or "no", ``score`` an integer 0..5."""

    pred: str
    score: int


_DICT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_verdict(text: str) -> Verdict | None:
    """The verdict in a judge reply, or None when it cannot be read.

    The first ``{...}`` is read as a Python/JSON literal with keys ``pred`` and ``score``. ``pred``
    must be "yes" or "no" (any case and surrounding spaces); ``score`` a number in [0, 5]
    (a numeric string is accepted; a fraction is truncated to an integer, as Video-ChatGPT does).
    """
    for match in _DICT.finditer(text or ""):
        try:
            data = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        pred, score = str(data.get("pred", "")).strip().strip(".").lower(), data.get("score")
        try:
            number = float(score) if not isinstance(score, bool) else None
        except (TypeError, ValueError):
            number = None
        if pred in ("yes", "no") and number is not None and 0 <= number <= 5:
            return Verdict(pred, int(number))
    return None


def fingerprint(model: str, question: str, answer: str, prediction: str) -> str:
    """Hash of what a verdict depends on; a cached verdict is reused only when it matches."""
    payload = json.dumps([model, question, answer, prediction], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class JudgeOutcome:
    """The result for one question: a verdict, or a failure reason and message; attempts made."""

    verdict: Verdict | None
    attempts: int
    reason: str = ""
    message: str = ""
    raw: str = ""


class _Retry(Exception):
    def __init__(self, reason: str, message: str, retry_after: float | None = None, raw: str = ""):
        super().__init__(message)
        self.reason, self.message, self.retry_after, self.raw = reason, message, retry_after, raw


class _Fail(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class JudgeClient:
    """Asks one question at a time (thread-safe; share one client across a pool).

    Args:
        settings: endpoint, model and retry policy.
        api_key: the secret, or None for endpoints without auth. Not kept in ``repr``.
        sleep: waiting function (tests pass a recorder).
    """

    def __init__(self, settings: JudgeSettings, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None):
        if not settings.base_url:
            raise ValueError("judge.base_url is empty")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JudgeClient(url={self.url!r}, model={self.settings.model!r})"

    def backoff(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        s = self.settings
        with self._rng_lock:
            factor = self._rng.uniform(0.5, 1.0)
        delay = min(s.max_backoff_s, s.backoff_s * 2 ** retry) * factor
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.max_backoff_s))
        return delay

    def _post(self, messages: list[dict[str, str]]) -> str:
        s = self.settings
        body = json.dumps({"model": s.model, "messages": messages, "temperature": s.temperature,
                           "max_tokens": s.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace") if exc.fp else ""
            message = f"HTTP {exc.code} from {self.url}: {detail}".strip()
            if exc.code in FATAL_STATUS:
                raise JudgeFatalError(message + f" (check judge.base_url, judge.model {s.model!r} and the key in "
                                      f"${s.api_key_env})") from None
            if exc.code in RETRY_STATUS:
                raise _Retry(f"http_{exc.code}", message, _retry_after(exc.headers.get("Retry-After"))) from None
            raise _Fail(f"http_{exc.code}", message) from None
        except (TimeoutError, socket.timeout) as exc:
            raise _Retry("timeout", f"no reply from {self.url} within {s.timeout_s} s ({exc})") from None
        except urllib.error.URLError as exc:
            reason = "timeout" if isinstance(exc.reason, (TimeoutError, socket.timeout)) else "connection"
            raise _Retry(reason, f"{self.url}: {exc.reason}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Retry("connection", f"{self.url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(payload)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("bad_response", f"not a chat completion: {payload[:200]!r}", raw=payload[:500].decode(
                "utf-8", "replace")) from None

    def judge(self, question: str, answer: str, prediction: str) -> JudgeOutcome:
        """Ask the judge, retrying transient errors and unparsable verdicts; never raises except
        :class:`JudgeFatalError`."""
        messages = build_messages(question, answer, prediction)
        last = _Retry("unknown", "no attempt made")
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                self._sleep(self.backoff(attempt - 1, last.retry_after))
            try:
                content = self._post(messages)
            except _Fail as exc:
                return JudgeOutcome(None, attempt + 1, exc.reason, exc.message)
            except _Retry as exc:
                last = exc
                continue
            verdict = parse_verdict(content)
            if verdict is not None:
                return JudgeOutcome(verdict, attempt + 1, raw=content)
            last = _Retry("unparsable_verdict", f"cannot read a verdict in {content[:200]!r}", raw=content)
        return JudgeOutcome(None, self.settings.max_retries + 1, last.reason, last.message, last.raw)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


# --- the cache and the run -------------------------------------------------------------------

class VerdictCache:
    """Verdicts on disk, one JSON line per question, appended as they arrive.

    Lines: ``{"question_id", "fingerprint", "pred", "score", "attempts", "raw"}``. The last line of
    a killed run may be torn; unreadable lines are ignored. A later line for the same question wins.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "question_id" in record:
                    self.records[str(record["question_id"])] = record

    def get(self, question_id: str, fp: str) -> dict | None:
        record = self.records.get(question_id)
        return record if record is not None and record.get("fingerprint") == fp else None

    def put(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[str(record["question_id"])] = record


def judge_all(items: Sequence, predictions: Mapping[str, str], client: JudgeClient,
              cache_path: str | Path, concurrency: int | None = None) -> dict[str, dict]:
    """Verdicts for every item that has a prediction, cached by question id.

    Args:
        items: objects with ``item_id``, ``question`` and ``answer`` (:class:`pite.eval.datasets.QAItem`).
        predictions: model answer per ``item_id``; items without one are skipped.
        client: the judge.
        cache_path: JSONL verdict cache (see :class:`VerdictCache`).
    Returns:
        ``{item_id: record}``: cached/new verdicts ``{"pred", "score", ...}`` or failures
        ``{"failure": reason, "message", "attempts"}``.
    """
    cache = VerdictCache(cache_path)
    model = client.settings.model
    results: dict[str, dict] = {}
    pending = []
    for item in items:
        if item.item_id not in predictions:
            continue
        fp = fingerprint(model, item.question, item.answer, predictions[item.item_id])
        cached = cache.get(item.item_id, fp)
        if cached is not None:
            results[item.item_id] = {**cached, "cached": True}
        else:
            pending.append((item, fp))
    workers = max(1, concurrency or client.settings.concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
        futures = {pool.submit(client.judge, item.question, item.answer, predictions[item.item_id]): (item, fp)
                   for item, fp in pending}
        try:
            for future in as_completed(futures):
                item, fp = futures[future]
                outcome = future.result()
                if outcome.verdict is None:
                    results[item.item_id] = {"question_id": item.item_id, "failure": outcome.reason,
                                             "message": outcome.message, "attempts": outcome.attempts,
                                             "raw": outcome.raw}
                    continue
                record = {"question_id": item.item_id, "fingerprint": fp, "pred": outcome.verdict.pred,
                          "score": outcome.verdict.score, "attempts": outcome.attempts, "raw": outcome.raw}
                cache.put(record)
                results[item.item_id] = {**record, "cached": False}
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def videoqa_metrics(records: Mapping[str, dict], questions: int) -> tuple[dict[str, float], dict[str, int]]:
    """``({"accuracy", "score"}, counts)``: accuracy ×100 = yes / (yes + no); score = mean 0..5.

    Counts: ``questions``, ``judged``, ``yes``, ``no``, ``failed`` (judge failures after retries),
    ``unanswered`` (questions without a model prediction), ``cached`` (verdicts read from the cache).
    """
    verdicts = [r for r in records.values() if "failure" not in r]
    yes = sum(r["pred"] == "yes" for r in verdicts)
    judged = len(verdicts)
    metrics = {"accuracy": 100.0 * yes / judged if judged else 0.0,
               "score": sum(r["score"] for r in verdicts) / judged if judged else 0.0}
    counts = {"questions": questions, "judged": judged, "yes": yes, "no": judged - yes,
              "failed": len(records) - judged, "unanswered": questions - len(records),
              "cached": sum(bool(r.get("cached")) for r in verdicts)}
    return metrics, counts


def api_key_from_env(settings: JudgeSettings) -> str | None:
    """The key from ``$api_key_env`` (None when the setting is empty); a named but unset variable is an error."""
    if not settings.api_key_env:
        return None
    key = os.environ.get(settings.api_key_env, "").strip()
    if not key:
        raise JudgeFatalError(f"judge.api_key_env names ${settings.api_key_env}, which is not set; export it "
                              "or set judge.api_key_env: '' for an endpoint without a key")
    return key
