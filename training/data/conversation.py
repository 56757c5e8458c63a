"""Conversation templates, and the one tokenisation of a training sample.

A sample is a :class:`Conversation`: alternating user / assistant turns, the id of its video's features, and
head targets on character spans of assistant turns. :func:`render` writes its text with a template and notes
where each assistant part is; :func:`align` maps that onto the tokens of **one** tokenisation of the whole text
(``return_offsets_mapping=True``). Nothing is tokenised in pieces.

Templates
    ``vicuna_v1`` (FastChat's, as Vicuna v1.5 / VTimeLLM / PiTe use it)::

        {system} USER: <video>\\n{question} ASSISTANT: {answer}</s>USER: {question 2} ASSISTANT: {answer 2}</s>

    The labelled part of a turn is `` {answer}</s>``, the space included: inference prompts end with
    "ASSISTANT:" (FastChat's), so the model must learn to write the space (glued to the first word, "▁From",
    or alone, "Ġ" + "A", as the tokenizer has it). "USER:", "ASSISTANT:" and everything the user says are
    masked (-100). BOS is added by the tokenizer. ``chat_template`` uses ``tokenizer.apply_chat_template``:
    an assistant turn's labelled part is what rendering it adds after the generation prompt (its text plus
    the template's end-of-turn marker), which needs a template that renders conversations prefix-stably.

Token rules (``align``)
    - A token's *core* is its offset span without surrounding whitespace (tokenizers differ in whether
      "▁word" / "Ġword" offsets include the space). A token is labelled when its core lies inside an assistant
      part; a whitespace-only token when its characters do (a zero-width one, as trimmed offsets give, when
      it sits strictly inside).
    - A token whose core crosses the edge of an assistant part, an assistant part with no token, a head target
      whose span cuts a token or covers none, and a ``<video>`` that shares a token with other text all raise
      :class:`TokenizationMismatch` naming the sample: a silent mismatch would train on a zero loss.
    - Every token overlapping ``<video>`` becomes the video block: ``frames_per_video`` copies of the
      model's video token id (100 for a video, 1 for an image), never labelled. The text needs no ``<video>``
      entry in the vocabulary (Vicuna has none: its pieces "<", "video", ">" are replaced together).
    - A head target goes on **every** token whose core lies in its span (all tokens of the phrase or word).
      A token that holds the end of a target plus punctuation ("dog." for the word "dog", as SentencePiece
      vocabularies merge) counts as covering it; one that cuts a word ("do|g" for "do") is a mismatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pite.config import option
from pite.schema import TRAJECTORY_SHAPE

VIDEO_PLACEHOLDER = "<video>"
IGNORE_INDEX = -100
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
ROLES = ("user", "assistant")


class BadSample(ValueError):
    """A sample whose structure cannot be rendered (turn order, ``<video>`` count or place); skipped and counted."""


class TokenizationMismatch(ValueError):
    """Text and tokens disagree for one sample; ``sample_id`` says which."""

    def __init__(self, sample_id: str, problem: str):
        super().__init__(f"sample {sample_id!r}: {problem}")
        self.sample_id = sample_id


@dataclass
class ConversationSettings:
    template: Literal["vicuna_v1", "chat_template"] = option(
        "vicuna_v1", "vicuna_v1 (Vicuna v1.5, the paper's), or the tokenizer's own chat template.")
    system: str = option(VICUNA_SYSTEM, "System prompt ('' for none).")
    max_length: int = option(2048, "Longest sample in tokens, video tokens included; longer ones are cut "
                             "at the end, or skipped when that would lose the video or a head target.", ge=16)
    on_mismatch: Literal["raise", "skip"] = option(
        "raise", "A tokenisation mismatch stops with the sample id (raise), or skips and counts it (skip).")


@dataclass
class Target:
    """A head target on characters ``[start, end)`` of the text of assistant turn ``turn``.

    ``value``: (2,) for "loc" (x, y), (P, N, 2) for "traj"; (-1, -1) points mean "no target there".
    """

    turn: int
    start: int
    end: int
    kind: Literal["loc", "traj"]
    value: np.ndarray


@dataclass
class Conversation:
    """One training sample: ``turns`` are ``(role, text)`` alternating user, assistant, ...; the first user
    turn holds the one ``<video>``; ``video_id`` keys the feature store."""

    sample_id: str
    turns: list[tuple[str, str]]
    video_id: str
    targets: list[Target] = field(default_factory=list)


@dataclass
class Rendered:
    """A conversation as text: assistant parts ``[start, end)`` to label, and where each turn's text starts."""

    text: str
    assistant_spans: list[tuple[int, int]]
    turn_offsets: list[int]
    add_special_tokens: bool


@dataclass
class EncodedSample:
    """Token-level sample. input_ids / labels (L,) int64 with the video block expanded; ``*_pos`` (K,) are
    token positions within the sample, ``loc_target`` (K, 2) and ``traj_target`` (K, P, N, 2) float32."""

    sample_id: str
    video_id: str
    input_ids: np.ndarray
    labels: np.ndarray
    loc_pos: np.ndarray
    loc_target: np.ndarray
    traj_pos: np.ndarray
    traj_target: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def check_turns(conv: Conversation) -> None:
    """BadSample unless turns alternate user/assistant starting with the user and end with the assistant."""
    roles = [role for role, _ in conv.turns]
    expected = [ROLES[i % 2] for i in range(len(roles))]
    if not roles or roles != expected or roles[-1] != "assistant":
        raise BadSample(f"sample {conv.sample_id!r}: turns must alternate user/assistant and end with the "
                         f"assistant, got {roles}")


def render(conv: Conversation, tokenizer, settings: ConversationSettings) -> Rendered:
    """The text of ``conv`` under ``settings.template`` (see the module docstring)."""
    check_turns(conv)
    if settings.template == "vicuna_v1":
        eos = tokenizer.eos_token or "</s>"
        text, spans, offsets = (settings.system + " ") if settings.system else "", [], []
        for role, content in conv.turns:
            text += "USER: " if role == "user" else "ASSISTANT:"
            start = len(text)
            if role == "assistant":
                text += " "
            offsets.append(len(text))
            text += content
            if role == "assistant":
                text += eos
                spans.append((start, len(text)))
            else:
                text += " "
        return Rendered(text, spans, offsets, add_special_tokens=True)
    return _render_chat_template(conv, tokenizer, settings)


def _render_chat_template(conv: Conversation, tokenizer, settings: ConversationSettings) -> Rendered:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'chat_template' needs a tokenizer with a chat template; this one has none")
    messages = [{"role": "system", "content": settings.system}] if settings.system else []
    messages += [{"role": role, "content": content} for role, content in conv.turns]
    first = len(messages) - len(conv.turns)

    def chat(upto: int, generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)

    text = chat(len(messages))
    spans, offsets, cursor = [], [], 0
    for k, (role, content) in enumerate(conv.turns):
        m = first + k
        begin = len(chat(m, generation_prompt=True)) if role == "assistant" else cursor
        done = chat(m + 1)
        if not text.startswith(done) or (role == "assistant" and not done.startswith(chat(m, True))):
            raise ValueError("the chat template does not render conversations prefix-stably; use vicuna_v1")
        where = text.find(content, max(begin, cursor))
        if where < 0 or where >= len(done):
            raise BadSample(f"sample {conv.sample_id!r}: the chat template changes the text of turn {k}")
        offsets.append(where)
        if role == "assistant":
            spans.append((begin, len(done)))
        cursor = len(done)
    return Rendered(text, spans, offsets, add_special_tokens=False)


def tokenize(texts: list[str], tokenizer, add_special_tokens: bool) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """One call of the (fast) tokenizer over whole texts: per text, (ids, character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("training needs a fast tokenizer (offset mappings); load it with use_fast=True")
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]


def _cores(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """int64 (L, 2) offsets without surrounding whitespace; (-1, -1) for whitespace-only and empty tokens."""
    cores = []
    for s, e in offsets:
        piece = text[s:e]
        core = piece.strip()
        lead = len(piece) - len(piece.lstrip()) if core else 0
        cores.append((s + lead, s + lead + len(core)) if core else (-1, -1))
    return np.asarray(cores, dtype=np.int64).reshape(-1, 2)


def align(conv: Conversation, rendered: Rendered, ids: list[int], offsets: list[tuple[int, int]], *,
          video_token_id: int, frames_per_video: int) -> EncodedSample:
    """Labels, the video block and head-target positions from one tokenisation (see the module docstring)."""
    sid, text = conv.sample_id, rendered.text
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    cores = _cores(text, offsets)
    core_lo, core_hi, has_core = cores[:, 0], cores[:, 1], cores[:, 0] >= 0

    def fail(problem: str):
        raise TokenizationMismatch(sid, problem)

    def covered(lo: int, hi: int, what: str, lenient: bool = False) -> np.ndarray:
        """Tokens whose core lies in [lo, hi); a core crossing its edge is a mismatch, unless ``lenient`` and
        what it has outside is punctuation only."""
        overlap = has_core & (core_lo < hi) & (core_hi > lo)
        for t in np.flatnonzero(overlap & ((core_lo < lo) | (core_hi > hi))):
            a, b = int(core_lo[t]), int(core_hi[t])
            if not lenient or any(c.isalnum() for c in text[a:lo] + text[hi:b]):
                fail(f"token {text[a:b]!r} at chars [{a}, {b}) crosses the edge of {what} {text[lo:hi]!r} "
                     f"at [{lo}, {hi})")
        if not overlap.any():
            fail(f"{what} {text[lo:hi]!r} at [{lo}, {hi}) covers no token")
        return np.flatnonzero(overlap)

    labelled = np.zeros(len(ids), dtype=bool)
    starts, ends = spans[:, 0], spans[:, 1]
    for lo, hi in rendered.assistant_spans:
        labelled[covered(lo, hi, "the assistant part")] = True
        blank_inside = np.where(ends > starts, (lo <= starts) & (ends <= hi), (lo < starts) & (starts < hi))
        labelled |= ~has_core & blank_inside
    places = [m.start() for m in re.finditer(re.escape(VIDEO_PLACEHOLDER), text)]
    if len(places) != 1:
        raise BadSample(f"sample {sid!r}: expected exactly one {VIDEO_PLACEHOLDER} in the text, found {len(places)}")
    lo, hi = places[0], places[0] + len(VIDEO_PLACEHOLDER)
    if any(a < hi and lo < b for a, b in rendered.assistant_spans):
        raise BadSample(f"sample {sid!r}: {VIDEO_PLACEHOLDER} must be in a user turn, not in the assistant's")
    video = np.flatnonzero((starts < hi) & (ends > lo))
    if not len(video):
        fail(f"{VIDEO_PLACEHOLDER} at [{lo}, {hi}) covers no token")
    for t in video:
        if labelled[t] or (has_core[t] and (core_lo[t] < lo or core_hi[t] > hi)):
            fail(f"token {text[starts[t]:ends[t]]!r} joins {VIDEO_PLACEHOLDER} to the text around it")
    # expand: the video tokens -> one block of frames_per_video ids
    first, last = int(video[0]), int(video[-1])
    ids_arr = np.asarray(ids, dtype=np.int64)
    labels = np.where(labelled, ids_arr, IGNORE_INDEX)
    block = np.full(frames_per_video, video_token_id, dtype=np.int64)
    input_ids = np.concatenate([ids_arr[:first], block, ids_arr[last + 1:]])
    labels = np.concatenate([labels[:first], np.full(frames_per_video, IGNORE_INDEX), labels[last + 1:]])
    shift = frames_per_video - (last + 1 - first)
    heads: dict[str, tuple[list[int], list[np.ndarray]]] = {"loc": ([], []), "traj": ([], [])}
    for target in conv.targets:
        a = rendered.turn_offsets[target.turn] + target.start
        b = rendered.turn_offsets[target.turn] + target.end
        tokens = covered(a, b, f"the {target.kind} target", lenient=True)
        if not labelled[tokens].all():
            fail(f"{target.kind} target {text[a:b]!r} at [{a}, {b}) is not inside an assistant part")
        positions, values = heads[target.kind]
        positions += [int(t) + shift if t > last else int(t) for t in tokens]
        values += [np.asarray(target.value, dtype=np.float32)] * len(tokens)
    loc_pos, loc = heads["loc"]
    traj_pos, traj = heads["traj"]
    return EncodedSample(
        sid, conv.video_id, input_ids, labels,
        np.asarray(loc_pos, dtype=np.int64), np.stack(loc) if loc else np.zeros((0, 2), np.float32),
        np.asarray(traj_pos, dtype=np.int64), np.stack(traj) if traj else np.zeros((0, *TRAJECTORY_SHAPE), np.float32),
    )


def encode(conv: Conversation, tokenizer, settings: ConversationSettings, *, video_token_id: int,
           frames_per_video: int) -> EncodedSample:
    """render + tokenize (once, whole text) + align."""
    rendered = render(conv, tokenizer, settings)
    [(ids, offsets)] = tokenize([rendered.text], tokenizer, rendered.add_special_tokens)
    return align(conv, rendered, ids, offsets, video_token_id=video_token_id, frames_per_video=frames_per_video)


def truncate(sample: EncodedSample, max_length: int, video_token_id: int) -> EncodedSample | None:
    """Keep the first ``max_length`` tokens; None when that would lose a video token, a head target or every
    label (the sample is then skipped, never trained on a partial target)."""
    if len(sample) <= max_length:
        return sample
    cut = lambda a: a[:max_length]  # noqa: E731
    lost_video = (sample.input_ids[max_length:] == video_token_id).any()
    lost_target = (sample.loc_pos >= max_length).any() or (sample.traj_pos >= max_length).any()
    if lost_video or lost_target or not (cut(sample.labels) != IGNORE_INDEX).any():
        return None
    return EncodedSample(sample.sample_id, sample.video_id, cut(sample.input_ids), cut(sample.labels),
                         sample.loc_pos, sample.loc_target, sample.traj_pos, sample.traj_target)


def render_prompt(question: str, tokenizer, settings: ConversationSettings) -> str:
    """Inference prompt for one user turn (``question`` holds the ``<video>``), ending where the assistant's
    answer starts ("... ASSISTANT:"); tokenise it with ``add_special_tokens`` as for training."""
    if settings.template == "vicuna_v1":
        system = (settings.system + " ") if settings.system else ""
        return f"{system}USER: {question} ASSISTANT:"
    messages = [{"role": "system", "content": settings.system}] if settings.system else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
