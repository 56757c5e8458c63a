"""A STAND-IN judge: a small real HTTP server with a deterministic rule-based verdict. Not an LLM.

It exists so that the demo and the tests exercise the whole VideoQA protocol over HTTP (the same
client, retries and cache as with a real judge) without network access or model weights. Its
numbers mean nothing about a model's quality: never report them as VideoQA results.

It serves, on 127.0.0.1 only:

* ``POST /v1/chat/completions``: reads "Question:", "Correct Answer:" and "Predicted Answer:" from
  the last user message (the Video-ChatGPT judge prompt) and replies with a chat completion whose
  content is a dict string such as ``{'pred': 'yes', 'score': 4}`` (see :func:`rule_verdict`);
* ``GET /v1/models``: the one model, :data:`STAND_IN_MODEL`.

Test hooks: ``faults`` maps a question to the behaviour of its successive requests, one entry per
request, then normal answers: an HTTP status such as ``"429"`` or ``"500"`` (an error reply; 429
carries ``Retry-After: 0``), ``"malformed"`` (a reply with no readable verdict), ``"delay:<seconds>"``
(wait, then answer normally). ``requests`` logs the question of every request received,
``authorizations`` its ``Authorization`` header, and ``max_in_flight`` the most requests handled
at once.

Run it alone with ``python -m pite.eval.judge_server --port 8765``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STAND_IN_MODEL = "pite-stand-in-judge (rule-based token overlap, NOT an LLM)"
_STOPWORDS = frozenset("a an the is are was were be been it its of in on at to and or this that there".split())
_FIELD = {  # one line each, except the prediction, which runs to the blank line before the instructions
    "question": re.compile(r"^Question:[ \t]*(.*)$", re.MULTILINE),
    "answer": re.compile(r"^Correct Answer:[ \t]*(.*)$", re.MULTILINE),
    "prediction": re.compile(r"^Predicted Answer:[ \t]*(.*?)(?:\n\n|\Z)", re.MULTILINE | re.DOTALL),
}


def _tokens(text: str) -> set[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {w for w in words if w not in _STOPWORDS} or set(words)


def rule_verdict(answer: str, prediction: str) -> dict:
    """The stand-in's verdict from normalised token overlap (lower case, alphanumeric words, a few
    stop words dropped): recall = shared / answer tokens, precision = shared / prediction tokens.

    ``pred`` is "yes" when recall >= 0.5; ``score`` = round(5 × F1) (0..5).
    """
    gold, pred = _tokens(answer), _tokens(prediction)
    shared = len(gold & pred)
    recall = shared / len(gold) if gold else 0.0
    precision = shared / len(pred) if pred else 0.0
    f1 = 2 * precision * recall / (precision + recall) if shared else 0.0
    return {"pred": "yes" if recall >= 0.5 else "no", "score": int(round(5 * f1))}


class _QuietServer(ThreadingHTTPServer):
    """Threads are daemons, and a client that gave up (timed out) is not an error worth printing."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def _read_fields(body: dict) -> dict[str, str]:
    messages = body.get("messages") or []
    text = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    fields = {}
    for name, pattern in _FIELD.items():
        match = pattern.search(text)
        fields[name] = match.group(1).strip() if match else ""
    return fields


class StandInJudge:
    """The stand-in judge server on 127.0.0.1, in a background thread. Context manager.

    Args:
        port: 0 picks a free port; ``url`` gives the OpenAI-style base ("http://127.0.0.1:PORT/v1").
        faults: question -> list of behaviours for its successive requests (see the module doc).
    """

    def __init__(self, port: int = 0, faults: dict[str, list[str]] | None = None):
        self._lock = threading.Lock()
        self._faults = {q: list(actions) for q, actions in (faults or {}).items()}
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._server = _QuietServer(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def asked(self, question: str) -> int:
        """How many requests this question has received."""
        with self._lock:
            return self.requests.count(question)

    def set_faults(self, question: str, actions: list[str]) -> None:
        with self._lock:
            self._faults[question] = list(actions)

    def start(self) -> "StandInJudge":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="stand-in-judge", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "StandInJudge":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_action(self, question: str, authorization: str) -> str:
        with self._lock:
            self.requests.append(question)
            self.authorizations.append(authorization)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            actions = self._faults.get(question)
            return actions.pop(0) if actions else "ok"

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler_class(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server naming
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": STAND_IN_MODEL, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": {"message": "body is not JSON"}})
                    return
                fields = _read_fields(body)
                action = judge._next_action(fields["question"], self.headers.get("Authorization", ""))
                try:
                    self._answer(action, fields, body)
                finally:
                    judge._done()

            def _answer(self, action: str, fields: dict[str, str], body: dict) -> None:
                if action.isdigit():
                    headers = {"Retry-After": "0"} if action == "429" else None
                    self._send(int(action), {"error": {"message": f"injected {action}"}}, headers)
                    return
                if action.startswith("delay:"):
                    time.sleep(float(action.split(":", 1)[1]))
                if action == "malformed":
                    content = "I think the prediction is mostly right."
                else:
                    content = repr(rule_verdict(fields["answer"], fields["prediction"]))
                self._send(200, {
                    "id": "chatcmpl-stand-in", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model") or STAND_IN_MODEL,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                })

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the rule-based STAND-IN VideoQA judge on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    with StandInJudge(port=args.port) as judge:
        print(f"stand-in judge (rule-based, NOT an LLM) at {judge.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
