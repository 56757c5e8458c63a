"""Lowest-level noun phrases of captions, with exact character offsets (SuPar constituency parses).

The paper keeps only the noun phrases that contain no other noun phrase: "a woman is counting
money with a pen on a white table" gives "a woman", "money", "a pen" and "a white table", never
"a pen on a white table". Every phrase carries ``char_start``/``char_end`` into its caption, and
``caption[char_start:char_end] == text`` always holds: offsets come from the tokenizer's spans,
never from re-joining tokens.

The flow for a batch of captions:

1. :func:`tokenize_with_offsets` splits each caption with NLTK's Treebank tokenizer (no NLTK data
   needed) and keeps each token's character span;
2. the SuPar parser (:func:`load_parser`) parses the pre-tokenised captions (``lang=None``);
3. :func:`lowest_noun_phrases` maps each lowest ``NP`` subtree back to characters;
4. :class:`NounPhraseExtractor` drops pronouns, non-object phrases ("front", "the camera", ...) and
   overlong phrases, and reports every drop with its reason.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

if TYPE_CHECKING:
    import nltk

TokenSpan = tuple[str, int, int]
"""A token and its character span in the caption: ``(text, start, end)``, ``caption[start:end] == text``."""

PARSER_FILE = "parser.pt"

# Phrases that name no object to ground: positions, the recording itself, and times of day.
# Matching is on the lower-cased phrase, or the phrase without its leading determiner (see
# NounPhraseExtractor), so "front" also drops "the front".
DEFAULT_STOP_PHRASES: tuple[str, ...] = (
    "front", "back", "camera", "the camera", "background", "foreground", "left", "right", "side",
    "middle", "center", "top", "bottom", "distance", "end", "beginning", "start", "day", "night",
    "morning", "afternoon", "evening", "sunset", "sunrise", "time", "moment", "video", "clip",
    "scene", "view", "screen", "close up", "close-up", "closeup", "shot", "footage", "air",
)

# Pronouns and pronoun-like words: a phrase made of one of these alone is dropped.
PRONOUNS = frozenset(
    "i me you he him she her it we us they them myself yourself himself herself itself ourselves "
    "themselves this that these those there someone somebody something anyone anybody anything "
    "everyone everybody everything nobody nothing one ones each other another".split()
)

_RECIPROCALS = frozenset({"each other", "one another"})
_ARTICLES = frozenset({"a", "an", "the"})
_DETERMINERS = frozenset("a an the this that these those some his her its their my your our".split())
_POSSESSIVE_ENDINGS = ("'s", "\u2019s", "'", "\u2019")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase of a caption; ``caption[char_start:char_end] == text``."""

    text: str
    char_start: int
    char_end: int


class DroppedPhrase(NamedTuple):
    """A phrase the filter removed, and why: ``"pronoun"``, ``"stop_phrase"``, ``"too_long"`` or
    ``"no_noun"`` (an article alone, a parse error)."""

    phrase: NounPhrase
    reason: str


class CaptionPhrases(NamedTuple):
    """What one caption gave: the kept phrases (in caption order) and the dropped ones."""

    phrases: list[NounPhrase]
    drops: list[DroppedPhrase]


# ----------------------------------------------------------------------------- tokens


def tokenize_with_offsets(caption: str) -> list[TokenSpan]:
    """Treebank tokens of ``caption`` with their exact character spans.

    Quotes keep their raw characters here (``"`` stays ``"``); :func:`parser_tokens` converts them
    to the PTB forms the parser was trained on. Whitespace of any kind (double spaces, tabs,
    non-breaking spaces) only separates tokens and never shifts an offset.
    """
    from nltk.tokenize import TreebankWordTokenizer

    try:
        spans = list(TreebankWordTokenizer().span_tokenize(caption))
    except ValueError:  # NLTK could not align its tokens with the text; split plainly instead
        spans = [m.span() for m in re.finditer(r"\w+(?:['\u2019]\w+)*|[^\w\s]", caption)]
    return [(caption[start:end], start, end) for start, end in spans]


def parser_tokens(tokens: Iterable[TokenSpan]) -> list[str]:
    """The words handed to the parser: PTB quotes (`````` / ``''``) and brackets, otherwise unchanged."""
    words, open_quote = [], True
    for text, _, _ in tokens:
        if text == '"':
            words.append("``" if open_quote else "''")
            open_quote = not open_quote
        elif text in ("(", ")"):
            words.append(text)  # SuPar maps bare brackets to -LRB-/-RRB- itself
        else:
            words.append(text.replace("(", "-LRB-").replace(")", "-RRB-"))
    return words


# ----------------------------------------------------------------------------- trees


def _is_np(label: str) -> bool:
    """``NP`` and PTB function-tagged variants such as ``NP-SBJ``."""
    return not label.startswith("-") and label.split("-")[0] == "NP"


def lowest_noun_phrases(tree: "nltk.Tree", token_spans: list[TokenSpan], caption: str) -> list[NounPhrase]:
    """The ``NP`` subtrees of ``tree`` with no ``NP`` below them, as phrases of ``caption``.

    ``token_spans`` are the caption's tokens (:func:`tokenize_with_offsets`), one per leaf of
    ``tree`` in order. Punctuation at a phrase's edges and a trailing possessive ending
    ("a man's" -> "a man") are trimmed. A phrase's text is ``caption[char_start:char_end]``, cut
    from the caption itself, so odd spacing inside a phrase is kept exactly. Phrases come in
    caption order.
    """
    import nltk

    if len(tree.leaves()) != len(token_spans):
        raise ValueError(f"the tree has {len(tree.leaves())} leaves but {len(token_spans)} tokens were "
                         "given; parse exactly the tokens of tokenize_with_offsets(caption)")
    leaf_spans: list[tuple[int, int]] = []

    def visit(node, start: int) -> tuple[int, bool]:
        """Leaf index just after ``node``, and whether ``node`` is or holds an NP."""
        if not isinstance(node, nltk.Tree):
            return start + 1, False
        end, np_below = start, False
        for child in node:
            end, child_has_np = visit(child, end)
            np_below |= child_has_np
        is_np = _is_np(node.label()) and not _is_preterminal(node)
        if is_np and not np_below:
            leaf_spans.append((start, end))
        return end, is_np or np_below

    visit(tree, 0)
    phrases = []
    for start, end in sorted(leaf_spans):
        kept = _trim(token_spans[start:end])
        if kept:
            char_start, char_end = kept[0][1], kept[-1][2]
            phrases.append(NounPhrase(caption[char_start:char_end], char_start, char_end))
    return phrases


def _is_preterminal(node: "nltk.Tree") -> bool:
    return len(node) == 1 and isinstance(node[0], str)


def _trim(tokens: list[TokenSpan]) -> list[TokenSpan]:
    """Drop punctuation-only tokens at both edges and a trailing possessive ending."""
    def is_punct(text: str) -> bool:
        return not any(ch.isalnum() for ch in text)

    tokens = list(tokens)
    while tokens and is_punct(tokens[0][0]):
        tokens.pop(0)
    while tokens and (is_punct(tokens[-1][0]) or tokens[-1][0].lower() in _POSSESSIVE_ENDINGS):
        tokens.pop()
    return tokens


# ----------------------------------------------------------------------------- the parser

# SuPar's loader calls ``torch.load`` through its own module; ``trusted_supar_load`` swaps that one
# reference for the duration of a block. The lock keeps two threads from interleaving the swap.
_SUPAR_LOAD_LOCK = threading.RLock()


class _TorchWithFullUnpickling:
    """Forwards to ``torch``, except that ``load`` unpickles whole objects (``weights_only=False``)."""

    def __init__(self, torch_module):
        self._torch = torch_module
        self.load = functools.partial(torch_module.load, weights_only=False)

    def __getattr__(self, name: str):
        return getattr(self._torch, name)


@contextlib.contextmanager
def trusted_supar_load() -> Iterator[None]:
    """Let SuPar load its own parser files inside this block, and nowhere else.

    SuPar 1.1.4 pickles whole Python objects (its ``Config``, fields and transform) into a parser
    file, which ``torch.load`` refuses under its ``weights_only=True`` default (torch >= 2.6).
    Inside the block, SuPar's loader -- and only SuPar's loader -- reads full pickles; ``torch.load``
    everywhere else keeps its safe default, and the swap is undone on exit. Use it only for parser
    files you trust (pickles can run code).
    """
    import supar.parsers.parser as supar_parser

    with _SUPAR_LOAD_LOCK:
        original = supar_parser.torch
        supar_parser.torch = _TorchWithFullUnpickling(original)
        try:
            yield
        finally:
            supar_parser.torch = original


def load_parser(name_or_path: str):
    """A SuPar constituency parser from a local file or folder, a SuPar name, or ``tinykit://parser``.

    - a file: a SuPar parser file (``parser.pt``, or any file ``Parser.save`` wrote);
    - a folder holding ``parser.pt`` (what :mod:`pite.tinykit.parser` builds);
    - ``tinykit://parser``: the offline tiny parser, built on first use;
    - a SuPar pretrained name such as ``crf-con-en``: read from ``~/.cache/supar``, downloaded from
      GitHub on first use (needs internet once).

    Raises ``pite.models.ModelNotFoundError`` with instructions when nothing can be loaded.
    """
    from pite import tinykit
    from pite.models import ModelNotFoundError, describe_kind

    try:
        import supar
    except ImportError as err:
        raise ModelNotFoundError("SuPar is not installed: pip install 'pite[pipeline]'.") from err

    offline_hint = f"{describe_kind('parser')} For an offline tiny parser use 'tinykit://parser'."
    ref = tinykit.resolve(name_or_path) if tinykit.is_ref(name_or_path) else name_or_path
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / PARSER_FILE
        if not path.is_file():
            raise ModelNotFoundError(f"{ref!r} is a folder without {PARSER_FILE}. {offline_hint}")
    if path.is_file():
        with trusted_supar_load():
            return supar.Parser.load(str(path))
    if ref not in supar.MODEL["github"]:
        looks_like_path = bool(path.suffix) or "/" in ref or "\\" in ref
        what = (f"parser file {ref!r} does not exist." if looks_like_path else
                f"{ref!r} is neither a parser file, a folder with {PARSER_FILE}, nor a SuPar pretrained "
                f"name (known: {', '.join(sorted(supar.NAME))}).")
        raise ModelNotFoundError(f"{what} {offline_hint}")
    try:
        with trusted_supar_load():
            return supar.Parser.load(ref)
    except Exception as err:  # download failures surface as RuntimeError / URLError / OSError
        raise ModelNotFoundError(f"could not load SuPar parser {ref!r}: {err}. {offline_hint}") from err


@contextlib.contextmanager
def quiet_supar_warnings() -> Iterator[None]:
    """Silence the deprecation warnings SuPar 1.1.4 triggers in current torch, inside this block."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"supar\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"supar\.")
        yield


def parse_tokens(parser, sentences: list[list[str]]) -> list["nltk.Tree"]:
    """Constituency trees of pre-tokenised ``sentences`` (each non-empty), in input order."""
    if not sentences:
        return []
    with quiet_supar_warnings():
        trees = list(parser.predict(sentences, lang=None, verbose=False).trees)
    if len(trees) != len(sentences):
        raise RuntimeError(f"the parser returned {len(trees)} trees for {len(sentences)} sentences")
    return trees


# ----------------------------------------------------------------------------- the extractor


@dataclass
class NounPhraseSettings:
    """How captions become noun phrases. Plain and picklable."""

    parser: str = "crf-con-en"
    """SuPar parser: a pretrained name (``crf-con-en``), a parser file or folder, or ``tinykit://parser``."""
    batch_size: int = 64
    """Captions per parser call."""
    drop_pronouns: bool = True
    """Drop phrases that are a lone pronoun ("he", "it", "someone", "there", ...)."""
    stop_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_STOP_PHRASES))
    """Lower-case phrases that name no object. A phrase is dropped when its lower-cased text, or that
    text without a leading determiner ("the", "a", "his", ...), equals one of them."""
    max_words: int | None = 8
    """Drop phrases of more than this many tokens; ``None`` keeps all."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_words is not None and self.max_words < 1:
            raise ValueError(f"max_words must be >= 1 or None, got {self.max_words}")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class NounPhraseExtractor:
    """Lowest-level noun phrases of captions, filtered; the parser loads on first use.

    The object pickles without its parser, so it is cheap to send to workers.
    """

    def __init__(self, settings: NounPhraseSettings):
        self.settings = settings
        self._stop = frozenset(_normalise(p) for p in settings.stop_phrases)
        self._parser = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_parser": None}

    @property
    def parser(self):
        if self._parser is None:
            self._parser = load_parser(self.settings.parser)
        return self._parser

    def extract(self, captions: list[str]) -> list[list[NounPhrase]]:
        """The kept phrases of each caption, in caption order."""
        return [result.phrases for result in self.extract_with_drops(captions)]

    def extract_with_drops(self, captions: list[str]) -> list[CaptionPhrases]:
        """Per caption: the kept phrases and the dropped ones with their reasons.

        Captions that are empty or only whitespace give no phrases and are not sent to the parser.
        """
        tokens = [tokenize_with_offsets(c) if c and c.strip() else [] for c in captions]
        todo = [i for i, toks in enumerate(tokens) if toks]
        trees: dict[int, "nltk.Tree"] = {}
        for lo in range(0, len(todo), self.settings.batch_size):
            chunk = todo[lo:lo + self.settings.batch_size]
            for i, tree in zip(chunk, parse_tokens(self.parser, [parser_tokens(tokens[i]) for i in chunk])):
                trees[i] = tree
        results = []
        for i, caption in enumerate(captions):
            found = lowest_noun_phrases(trees[i], tokens[i], caption) if tokens[i] else []
            results.append(self.filter(found))
        return results

    def filter(self, phrases: list[NounPhrase]) -> CaptionPhrases:
        """Split ``phrases`` into kept ones and :class:`DroppedPhrase` entries."""
        kept, drops = [], []
        for phrase in phrases:
            reason = self.drop_reason(phrase)
            if reason is None:
                kept.append(phrase)
            else:
                drops.append(DroppedPhrase(phrase, reason))
        return CaptionPhrases(kept, drops)

    def drop_reason(self, phrase: NounPhrase) -> str | None:
        """Why ``phrase`` is dropped (see :class:`DroppedPhrase`), or ``None`` to keep it."""
        words = _normalise(phrase.text).split()
        text = " ".join(words)
        if self.settings.drop_pronouns and (text in PRONOUNS or text in _RECIPROCALS):
            return "pronoun"
        if all(word in _ARTICLES for word in words):  # a parse error: "a" or "the" alone
            return "no_noun"
        without_determiner = " ".join(words[1:]) if len(words) > 1 and words[0] in _DETERMINERS else text
        if text in self._stop or without_determiner in self._stop:
            return "stop_phrase"
        n_tokens = len(tokenize_with_offsets(phrase.text))
        if self.settings.max_words is not None and n_tokens > self.settings.max_words:
            return "too_long"
        return None


def drop_counts(results: Iterable[CaptionPhrases]) -> dict[str, int]:
    """How many phrases were dropped for each reason, over many captions."""
    return dict(Counter(drop.reason for result in results for drop in result.drops))
