"""Tiny SuPar CRF constituency parser, trained on the kit's own caption treebank.

The treebank (``treebank/{train,dev,test}.pid``) holds hand-bracketed, PTB-style trees of
video-caption sentences, one per line. :func:`build` trains SuPar's ``CRFConstituencyParser``
with our own config (``supar_con.ini``: BiLSTM encoder with character features, so nothing is
downloaded) on ``train.pid``, keeps the epoch that scores best on ``dev.pid``, and scores the
result on the held-out ``test.pid`` (``eval.json``). The parser is saved as ``parser.pt`` and is
loaded back by :func:`pite.nounphrases.load_parser`, the same loader that reads real parsers.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from configparser import ConfigParser
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
TREEBANK = HERE / "treebank"
CONFIG = HERE / "supar_con.ini"

# SuPar's own evaluation conventions (EVALB): ignore the root and punctuation brackets.
EVAL_DELETE = {"TOP", "S1", "-NONE-", ",", ":", "``", "''", ".", "?", "!", ""}
EVAL_EQUAL = {"ADVP": "PRT"}


def read_config(path: Path | None = None) -> dict:
    """The ``.ini`` (default: ``supar_con.ini``) as one flat dict of Python values (SuPar's format)."""
    from ast import literal_eval

    parser = ConfigParser()
    parser.read(path or CONFIG)
    return {key: literal_eval(value) for section in parser.sections() for key, value in parser.items(section)}


def read_trees(path: Path) -> list:
    """The ``nltk.Tree`` of every non-empty line of a bracketed treebank file."""
    import nltk

    return [nltk.Tree.fromstring(line) for line in path.read_text().splitlines() if line.strip()]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(out_dir: Path) -> None:
    """Train the parser into ``out_dir/parser.pt`` and score it on the held-out test trees.

    Writes ``out_dir/eval.json``: labelled/unlabelled bracket F1 (EVALB conventions), NP F1 and
    the F1 of the lowest-level noun phrases the pipeline extracts, all on ``test.pid``.
    """
    from pite.nounphrases import load_parser

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "parser.pt"
    cfg = read_config()
    threads = torch.get_num_threads()
    # One thread: this model's ops are tiny, so more threads only add contention (about 30x
    # slower on a busy 2-core machine), and a fixed thread count keeps the result reproducible.
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        train(path, cfg)
        train_seconds = time.perf_counter() - started
        report = evaluate(load_parser(str(path)), TREEBANK / "test.pid")
    finally:
        torch.set_num_threads(threads)
    report.update(train_seconds=round(train_seconds, 2), n_train=len(read_trees(TREEBANK / "train.pid")),
                  n_dev=len(read_trees(TREEBANK / "dev.pid")), config=cfg)
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


def train(path: Path, cfg: dict) -> None:
    """Train on ``train.pid``, select on ``dev.pid``, save the best epoch to ``path``.

    ``cfg`` is :func:`read_config`'s dict. ``test.pid`` is never read here: SuPar's per-epoch
    "test" score is computed on dev again.
    """
    from supar import CRFConstituencyParser

    from pite.nounphrases import quiet_supar_warnings, trusted_supar_load

    cfg = dict(cfg)
    run = {k: cfg.pop(k) for k in ("epochs", "patience", "batch_size", "buckets", "update_steps", "seed")}
    train_file, dev_file = str(TREEBANK / "train.pid"), str(TREEBANK / "dev.pid")
    _seed_everything(run["seed"])
    # SuPar reloads the best checkpoint at the end of train(), which needs trusted_supar_load.
    with trusted_supar_load(), quiet_supar_warnings():
        parser = CRFConstituencyParser.build(path=str(path), build=True, checkpoint=False, train=train_file,
                                             unk="unk", **cfg)
        # SuPar writes the file only when the dev score improves; save the initial model too, so
        # the final reload can never fail whatever the scores do.
        parser.save(str(path))
        # mbr=False while training skips computing span marginals that the loss does not use;
        # prediction (parser.predict) decodes with MBR, SuPar's default.
        parser.train(train=train_file, dev=dev_file, test=dev_file, mbr=False, delete=EVAL_DELETE,
                     equal=EVAL_EQUAL, verbose=False, **run)


def evaluate(parser, treebank: Path) -> dict:
    """Bracket, NP and lowest-NP scores of ``parser`` on the gold trees in ``treebank``.

    ``labelled_f1`` / ``unlabelled_f1``: SuPar's EVALB-style span scores.
    ``np_f1``: precision/recall of NP spans (leaf index ranges) against the gold NPs.
    ``lowest_np_f1``: exact match of the phrases :func:`pite.nounphrases.lowest_noun_phrases`
    extracts from predicted vs gold trees (what the annotation pipeline keeps).
    """
    from supar.utils.transform import Tree

    from pite.nounphrases import lowest_noun_phrases, parse_tokens

    gold = read_trees(treebank)
    predicted = parse_tokens(parser, [tree.leaves() for tree in gold])
    labelled, unlabelled, nps, lowest = _Counts(), _Counts(), _Counts(), _Counts()
    exact = 0
    for g, p in zip(gold, predicted):
        gold_spans = Tree.factorize(g, EVAL_DELETE, EVAL_EQUAL)
        pred_spans = Tree.factorize(p, EVAL_DELETE, EVAL_EQUAL)
        labelled.add(pred_spans, gold_spans)
        unlabelled.add([s[:2] for s in pred_spans], [s[:2] for s in gold_spans])
        nps.add([s for s in pred_spans if s[2] == "NP"], [s for s in gold_spans if s[2] == "NP"])
        exact += sorted(pred_spans) == sorted(gold_spans)
        caption, tokens = _caption_of(g.leaves())
        lowest.add(lowest_noun_phrases(p, tokens, caption), lowest_noun_phrases(g, tokens, caption))
    return {
        "n_test": len(gold), "exact_trees": exact,
        "labelled_f1": labelled.f1, "labelled_precision": labelled.precision, "labelled_recall": labelled.recall,
        "unlabelled_f1": unlabelled.f1,
        "np_f1": nps.f1, "np_precision": nps.precision, "np_recall": nps.recall,
        "lowest_np_f1": lowest.f1, "lowest_np_precision": lowest.precision, "lowest_np_recall": lowest.recall,
    }


def _caption_of(words: list[str]) -> tuple[str, list[tuple[str, int, int]]]:
    """``" ".join(words)`` and each word's span in it."""
    spans, pos = [], 0
    for word in words:
        spans.append((word, pos, pos + len(word)))
        pos += len(word) + 1
    return " ".join(words), spans


class _Counts:
    """Multiset precision / recall / F1 over predicted and gold items."""

    def __init__(self):
        self.tp = self.pred = self.gold = 0

    def add(self, pred: list, gold: list) -> None:
        self.tp += sum((Counter(pred) & Counter(gold)).values())
        self.pred += len(pred)
        self.gold += len(gold)

    @property
    def precision(self) -> float:
        return round(self.tp / self.pred, 4) if self.pred else 0.0

    @property
    def recall(self) -> float:
        return round(self.tp / self.gold, 4) if self.gold else 0.0

    @property
    def f1(self) -> float:
        return round(2 * self.tp / (self.pred + self.gold), 4) if self.pred + self.gold else 0.0
