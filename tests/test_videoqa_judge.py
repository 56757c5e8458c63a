"""The VideoQA judge client against a real local HTTP server (the stand-in judge, with injected faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pite.eval.config import JudgeSettings
from pite.eval.datasets import QAItem
from pite.eval.judge_server import StandInJudge, rule_verdict
from pite.eval.videoqa import (JudgeClient, JudgeFatalError, Verdict, judge_all, parse_verdict, videoqa_metrics)

REPO = Path(__file__).resolve().parent.parent
ITEMS = [QAItem(f"q{k}", "vid", f"question {k}?", answer) for k, answer in enumerate(["dog", "red car", "cooking"])]
ANSWERS = {"q0": "a dog", "q1": "a blue boat", "q2": "he is cooking"}


def _settings(url: str, **kw) -> JudgeSettings:
    base = dict(base_url=url, model="judge-x", api_key_env="", concurrency=2, max_retries=2, timeout_s=5.0,
                backoff_s=0.01, max_backoff_s=0.05)
    return JudgeSettings(**{**base, **kw})


@pytest.fixture
def server():
    with StandInJudge() as judge:
        yield judge


def test_parse_verdict_accepts_the_dict_string_and_rejects_the_rest():
    assert parse_verdict("{'pred': 'yes', 'score': 4}") == Verdict("yes", 4)
    assert parse_verdict('Sure! {"pred": "No", "score": "2"} hope it helps') == Verdict("no", 2)
    assert parse_verdict("{'pred': 'yes', 'score': 4.8}") == Verdict("yes", 4)
    for bad in ["yes, 4", "{'pred': 'maybe', 'score': 3}", "{'pred': 'yes', 'score': 7}", "{'pred': 'yes'}", ""]:
        assert parse_verdict(bad) is None


def test_stand_in_rule_is_deterministic_token_overlap():
    assert rule_verdict("dog", "a dog") == {"pred": "yes", "score": 5}
    assert rule_verdict("red car", "a blue boat") == {"pred": "no", "score": 0}
    assert rule_verdict("cooking", "he is cooking") == {"pred": "yes", "score": 3}  # F1 = 2 * .5 / 1.5


def test_judge_all_gives_metrics_and_caches_verdicts(server, tmp_path):
    client = JudgeClient(_settings(server.url))
    records = judge_all(ITEMS, ANSWERS, client, tmp_path / "cache.jsonl")
    metrics, counts = videoqa_metrics(records, len(ITEMS))
    assert metrics == pytest.approx({"accuracy": 100 * 2 / 3, "score": (5 + 0 + 3) / 3})
    assert counts == {"questions": 3, "judged": 3, "yes": 2, "no": 1, "failed": 0, "unanswered": 0, "cached": 0}
    again = judge_all(ITEMS, ANSWERS, client, tmp_path / "cache.jsonl")
    assert all(r["cached"] for r in again.values()) and len(server.requests) == 3
    # a changed prediction is asked again; the others come from the cache
    judge_all(ITEMS, {**ANSWERS, "q1": "a red car"}, client, tmp_path / "cache.jsonl")
    assert server.asked("question 1?") == 2 and len(server.requests) == 4


@pytest.mark.parametrize("fault", ["delay:1.0", "429", "500", "malformed"])
def test_transient_faults_are_retried(server, tmp_path, fault):
    server.set_faults("question 0?", [fault])
    sleeps: list[float] = []
    client = JudgeClient(_settings(server.url, timeout_s=0.3), sleep=sleeps.append)
    outcome = client.judge("question 0?", "dog", "a dog")
    assert outcome.verdict == Verdict("yes", 5) and outcome.attempts == 2
    assert server.asked("question 0?") == 2
    assert len(sleeps) == 1 and 0.005 <= sleeps[0] <= 0.01


def test_malformed_verdicts_are_retried_then_counted_and_not_cached(server, tmp_path):
    server.set_faults("question 2?", ["malformed"] * 3)
    client = JudgeClient(_settings(server.url, max_retries=2))
    records = judge_all(ITEMS, ANSWERS, client, tmp_path / "cache.jsonl")
    assert records["q2"]["failure"] == "unparsable_verdict" and records["q2"]["attempts"] == 3
    assert server.asked("question 2?") == 3
    metrics, counts = videoqa_metrics(records, len(ITEMS))
    assert counts["failed"] == 1 and counts["judged"] == 2 and metrics["accuracy"] == 50.0
    cached = [json.loads(line)["question_id"] for line in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert sorted(cached) == ["q0", "q1"]
    records = judge_all(ITEMS, ANSWERS, client, tmp_path / "cache.jsonl")  # the rerun asks the failure again
    assert "failure" not in records["q2"] and server.asked("question 2?") == 4 and server.asked("question 0?") == 1


def test_client_errors_fail_fast_and_auth_errors_stop_the_run(server):
    client = JudgeClient(_settings(server.url))
    server.set_faults("question 0?", ["400"])
    outcome = client.judge("question 0?", "dog", "a dog")
    assert outcome.verdict is None and outcome.reason == "http_400" and outcome.attempts == 1
    server.set_faults("question 0?", ["401"])
    with pytest.raises(JudgeFatalError, match="HTTP 401"):
        client.judge("question 0?", "dog", "a dog")


def test_backoff_doubles_with_jitter_and_is_capped(server):
    client = JudgeClient(_settings(server.url, backoff_s=1.0, max_backoff_s=5.0), seed=0)
    for retry, cap in enumerate([1.0, 2.0, 4.0, 5.0, 5.0]):
        delays = [client.backoff(retry) for _ in range(50)]
        assert all(0.5 * cap <= d <= cap for d in delays) and len(set(delays)) > 1
    assert client.backoff(0, retry_after=3.0) == 3.0 and client.backoff(0, retry_after=99.0) == 5.0


def test_concurrency_is_bounded(server, tmp_path):
    items = [QAItem(f"c{k}", "vid", f"slow {k}?", "dog") for k in range(6)]
    for item in items:
        server.set_faults(item.question, ["delay:0.2"])
    client = JudgeClient(_settings(server.url, concurrency=2))
    records = judge_all(items, {item.item_id: "dog" for item in items}, client, tmp_path / "cache.jsonl")
    assert len(records) == 6 and server.max_in_flight == 2


def test_api_key_is_sent_but_never_written(server, tmp_path, monkeypatch, capsys):
    from pite.eval.run import run_eval

    secret = "sk-test-do-not-log-123"
    monkeypatch.setenv("PITE_TEST_JUDGE_KEY", secret)
    (tmp_path / "qa.json").write_text(json.dumps([{"video_id": 1, "question": "what?", "answer": "dog", "id": 7}]))
    config = tmp_path / "qa.yaml"
    config.write_text(f"task: videoqa\ndataset: {{format: qa_json, annotations: [{tmp_path}/qa.json]}}\n"
                      f"out_dir: {tmp_path}/out\njudge: {{base_url: '{server.url}', model: judge-x, "
                      f"api_key_env: PITE_TEST_JUDGE_KEY}}\n")
    assert run_eval(config, [], lambda items: ["a dog"] * len(items)) == 0
    assert server.authorizations == [f"Bearer {secret}"]
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["judge"]["model"] == "judge-x" and summary["metrics"]["accuracy"] == 100.0
    written = "".join(p.read_text() for p in (tmp_path / "out").iterdir()) + capsys.readouterr().out
    assert secret not in written and "PITE_TEST_JUDGE_KEY" in written
    monkeypatch.delenv("PITE_TEST_JUDGE_KEY")
    with pytest.raises(JudgeFatalError, match="PITE_TEST_JUDGE_KEY"):
        run_eval(config, ["out_dir=" + str(tmp_path / "out2")], lambda items: ["a dog"] * len(items))


_KILLED_RUN = """
import sys
from pite.eval.config import JudgeSettings
from pite.eval.datasets import QAItem
from pite.eval.videoqa import JudgeClient, judge_all
items = [QAItem(f"q{k}", "vid", f"question {k}?", "dog") for k in range(6)]
client = JudgeClient(JudgeSettings(base_url=sys.argv[1], model="judge-x", api_key_env="", concurrency=1,
                                   timeout_s=60.0))
judge_all(items, {i.item_id: "a dog" for i in items}, client, sys.argv[2])
"""


def test_a_killed_run_resumes_without_asking_answered_questions(server, tmp_path):
    cache = tmp_path / "cache.jsonl"
    server.set_faults("question 3?", ["delay:30"])  # the first run hangs on question 3
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, server.url, str(cache)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (cache.exists() and len(cache.read_text().splitlines()) == 3 and server.asked("question 3?")):
            assert proc.poll() is None and time.monotonic() < deadline, "the first run did not reach question 3"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert [server.asked(f"question {k}?") for k in range(6)] == [1, 1, 1, 1, 0, 0]
    items = [QAItem(f"q{k}", "vid", f"question {k}?", "dog") for k in range(6)]
    records = judge_all(items, {i.item_id: "a dog" for i in items}, JudgeClient(_settings(server.url)), cache)
    assert [server.asked(f"question {k}?") for k in range(6)] == [1, 1, 1, 2, 1, 1]
    assert [records[f"q{k}"]["cached"] for k in range(6)] == [True, True, True, False, False, False]
    assert all(r["pred"] == "yes" for r in records.values())
