"""Noun-phrase extraction: exact offsets, lowest-level NPs, filtering, and the shipped tiny parser."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import nltk
import pytest
import torch

from pite.nounphrases import (
    CaptionPhrases,
    DroppedPhrase,
    NounPhrase,
    NounPhraseExtractor,
    NounPhraseSettings,
    drop_counts,
    load_parser,
    lowest_noun_phrases,
    parse_tokens,
    parser_tokens,
    tokenize_with_offsets,
    trusted_supar_load,
)
from pite import tinykit
from pite.models import ModelNotFoundError

TREEBANK = Path(tinykit.__file__).parent / "treebank"
PTB_TAGS = set("CC CD DT EX FW IN JJ JJR JJS LS MD NN NNS NNP NNPS PDT POS PRP PRP$ RB RBR RBS RP SYM TO UH "
               "VB VBD VBG VBN VBP VBZ WDT WP WP$ WRB , . : `` '' -LRB- -RRB- # $".split())

COUNTING = "a woman is counting money with a pen on a white table"
COUNTING_TREE = ("(TOP (S (NP (DT a) (NN woman)) (VP (VBZ is) (VP (VBG counting) (NP (NN money)) "
                 "(PP (IN with) (NP (NP (DT a) (NN pen)) (PP (IN on) (NP (DT a) (JJ white) (NN table)))))))))")


def _texts(phrases) -> list[str]:
    return [p.text for p in phrases]


def _assert_exact(caption: str, phrases) -> None:
    for p in phrases:
        assert caption[p.char_start:p.char_end] == p.text and p.text == p.text.strip() and p.text


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("caption", [
    'a man\'s hand holds a "big" cup.',
    "café  au lait, on a table!",
    "a dog  \t runs\u00a0fast (really) -- and doesn't stop...",
    "“smart” quotes and ‘single’ ones",
    "  leading and trailing spaces  ",
    "Mr. Smith's 3 cats' toys at 5:30 p.m.",
])
def test_token_offsets_are_exact_and_ordered(caption):
    tokens = tokenize_with_offsets(caption)
    assert tokens
    previous_end = 0
    for text, start, end in tokens:
        assert caption[start:end] == text and text.strip() == text and text
        assert start >= previous_end
        previous_end = end
    # every non-space character belongs to exactly one token
    covered = "".join(text for text, _, _ in tokens)
    assert covered == re.sub(r"\s", "", caption)


def test_parser_tokens_use_ptb_quotes_and_keep_the_count():
    tokens = tokenize_with_offsets('a sign that says "stop" and "go"')
    words = parser_tokens(tokens)
    assert len(words) == len(tokens)
    assert words[4:7] == ["``", "stop", "''"] and words[8:11] == ["``", "go", "''"]
    assert [t for t, _, _ in tokens][4] == '"'  # the offsets still point at the raw character


def test_empty_caption_has_no_tokens():
    assert tokenize_with_offsets("") == [] and tokenize_with_offsets(" \t\n") == []


# ----------------------------------------------------------------------------- lowest-level NPs


def test_lowest_noun_phrases_skip_nps_that_contain_nps():
    tree = nltk.Tree.fromstring(COUNTING_TREE)
    phrases = lowest_noun_phrases(tree, tokenize_with_offsets(COUNTING), COUNTING)
    assert _texts(phrases) == ["a woman", "money", "a pen", "a white table"]
    assert "a pen on a white table" not in _texts(phrases)
    assert phrases[2] == NounPhrase("a pen", 31, 36)
    _assert_exact(COUNTING, phrases)


def test_lowest_noun_phrases_keep_odd_spacing_and_trim_possessives_and_punctuation():
    caption = "The  man's dog , on a   café\u00a0table."
    tree = nltk.Tree.fromstring(
        "(TOP (S (NP (NP (DT The) (NN man) (POS 's)) (NN dog)) (, ,) (PP (IN on) "
        "(NP (DT a) (NN café) (NN table))) (. .)))")
    phrases = lowest_noun_phrases(tree, tokenize_with_offsets(caption), caption)
    assert _texts(phrases) == ["The  man", "a   café\u00a0table"]
    _assert_exact(caption, phrases)


def test_function_tagged_nps_count_and_other_labels_do_not():
    caption = "the dog chases a cat"
    tree = nltk.Tree.fromstring("(TOP (S (NP-SBJ (DT the) (NN dog)) (VP (VBZ chases) (NML (DT a) (NN cat)))))")
    assert _texts(lowest_noun_phrases(tree, tokenize_with_offsets(caption), caption)) == ["the dog"]


def test_unary_np_chain_gives_one_phrase():
    caption = "in front of a house"
    tree = nltk.Tree.fromstring("(TOP (PP (IN in) (NP (NP (NP (NN front))) (PP (IN of) (NP (DT a) (NN house))))))")
    assert _texts(lowest_noun_phrases(tree, tokenize_with_offsets(caption), caption)) == ["front", "a house"]


def test_tree_and_tokens_must_agree():
    tree = nltk.Tree.fromstring("(TOP (NP (DT a) (NN cat)))")
    with pytest.raises(ValueError, match="leaves"):
        lowest_noun_phrases(tree, tokenize_with_offsets("a black cat"), "a black cat")


# ----------------------------------------------------------------------------- filtering


def _extractor(**overrides) -> NounPhraseExtractor:
    return NounPhraseExtractor(NounPhraseSettings(parser="unused-in-this-test", **overrides))


def _phrase(caption: str, text: str) -> NounPhrase:
    start = caption.index(text)
    return NounPhrase(text, start, start + len(text))


@pytest.mark.parametrize("text, reason", [
    ("he", "pronoun"), ("Someone", "pronoun"), ("there", "pronoun"), ("each other", "pronoun"),
    ("front", "stop_phrase"), ("the camera", "stop_phrase"), ("The  Left", "stop_phrase"),
    ("the night", "stop_phrase"), ("a close up", "stop_phrase"),
    ("a", "no_noun"), ("the", "no_noun"),
    ("a very old man with a long grey beard and hat", "too_long"),
    ("a man", None), ("two dogs", None), ("a white table", None), ("his phone", None),
])
def test_drop_reasons(text, reason):
    assert _extractor().drop_reason(NounPhrase(text, 0, len(text))) == reason


def test_filter_settings_switch_rules_off():
    keep_all = _extractor(drop_pronouns=False, stop_phrases=[], max_words=None)
    for text in ["he", "front", "the camera", "a very old man with a long grey beard and hat"]:
        assert keep_all.drop_reason(NounPhrase(text, 0, len(text))) is None
    custom = _extractor(stop_phrases=["Table"])
    assert custom.drop_reason(NounPhrase("the table", 0, 9)) == "stop_phrase"
    assert custom.drop_reason(NounPhrase("front", 0, 5)) is None


def test_filter_splits_kept_and_dropped_in_order():
    caption = "he stands in front of a house"
    found = [_phrase(caption, "he"), _phrase(caption, "front"), _phrase(caption, "a house")]
    result = _extractor().filter(found)
    assert result.phrases == [_phrase(caption, "a house")]
    assert result.drops == [DroppedPhrase(found[0], "pronoun"), DroppedPhrase(found[1], "stop_phrase")]
    assert drop_counts([result, result]) == {"pronoun": 2, "stop_phrase": 2}


# ----------------------------------------------------------------------------- the extractor (stub parser)


class _EveryTokenIsAnNP:
    """Stands in for a SuPar parser: each token becomes its own NP; records the batches it saw."""

    def __init__(self):
        self.batches: list[list[list[str]]] = []

    def predict(self, sentences, lang=None, verbose=True, **kwargs):
        assert lang is None  # pre-tokenised input: no tokenizer download
        self.batches.append(sentences)
        trees = [nltk.Tree("TOP", [nltk.Tree("NP", [nltk.Tree("_", [w])]) for w in words]) for words in sentences]
        return type("Predicted", (), {"trees": trees})()


def test_extract_batches_captions_and_skips_empty_ones():
    extractor = _extractor(batch_size=2)
    stub = extractor._parser = _EveryTokenIsAnNP()
    captions = ["dogs run", "", "he sings", "   ", "cats  sleep", "birds"]
    results = extractor.extract_with_drops(captions)
    assert [len(b) for b in stub.batches] == [2, 2]  # 4 non-empty captions, 2 per call
    assert all(isinstance(r, CaptionPhrases) for r in results)
    assert [_texts(r.phrases) for r in results] == [["dogs", "run"], [], ["sings"], [], ["cats", "sleep"], ["birds"]]
    assert [(d.phrase.text, d.reason) for d in results[2].drops] == [("he", "pronoun")]
    for caption, result in zip(captions, results):
        _assert_exact(caption, result.phrases)
    assert extractor.extract(["dogs run"]) == [[NounPhrase("dogs", 0, 4), NounPhrase("run", 5, 8)]]


def test_empty_captions_never_load_the_parser():
    extractor = NounPhraseExtractor(NounPhraseSettings(parser="/no/such/parser.pt"))
    assert extractor.extract(["", " ", "\t\n"]) == [[], [], []]
    assert extractor._parser is None


def test_extractor_pickles_without_its_parser():
    extractor = _extractor(batch_size=3)
    extractor._parser = _EveryTokenIsAnNP()
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone._parser is None and clone.settings == extractor.settings
    assert clone.drop_reason(NounPhrase("front", 0, 5)) == "stop_phrase"


def test_settings_are_checked():
    with pytest.raises(ValueError, match="batch_size"):
        NounPhraseSettings(batch_size=0)
    with pytest.raises(ValueError, match="max_words"):
        NounPhraseSettings(max_words=0)


# ----------------------------------------------------------------------------- loading


def test_load_parser_explains_missing_files_and_unknown_names(tmp_path):
    for ref in [str(tmp_path / "missing.pt"), "no-such-parser"]:
        with pytest.raises(ModelNotFoundError, match="tinykit://parser"):
            load_parser(ref)
    with pytest.raises(ModelNotFoundError, match="parser.pt"):
        load_parser(str(tmp_path))  # a folder without parser.pt


def test_trusted_supar_load_is_scoped_to_supar_and_the_block():
    import supar.parsers.parser as supar_parser

    assert supar_parser.torch is torch
    with pytest.raises(RuntimeError):
        with trusted_supar_load():
            assert supar_parser.torch.load.keywords == {"weights_only": False}
            assert supar_parser.torch.tensor is torch.tensor  # everything else forwards
            assert torch.load.__module__ == "torch.serialization"  # torch itself is untouched
            raise RuntimeError("boom")
    assert supar_parser.torch is torch


# ----------------------------------------------------------------------------- the shipped treebank


def _read(split: str) -> list[nltk.Tree]:
    return [nltk.Tree.fromstring(line) for line in (TREEBANK / f"{split}.pid").read_text().splitlines()]


def test_treebank_is_well_formed_and_splits_are_disjoint():
    splits = {name: _read(name) for name in ("train", "dev", "test")}
    assert sum(map(len, splits.values())) >= 200 and len(splits["test"]) >= 30
    sentences = {}
    for name, trees in splits.items():
        for tree in trees:
            assert tree.label() == "TOP" and len(tree) == 1
            for sub in tree.subtrees():
                if len(sub) == 1 and isinstance(sub[0], str):
                    assert sub.label() in PTB_TAGS and sub[0].strip() == sub[0] != ""
                else:
                    assert all(isinstance(child, nltk.Tree) for child in sub), sub
            sentences.setdefault(" ".join(tree.leaves()).lower(), set()).add(name)
    assert all(len(names) == 1 for names in sentences.values())  # no sentence in two splits
    assert len(sentences) == sum(map(len, splits.values()))  # no duplicates within a split either


# ----------------------------------------------------------------------------- the tiny parser (slow)


@pytest.fixture(scope="session")
def tiny_parser_dir(tmp_path_factory) -> Path:
    """The kit's parser, built once per session (trains for about 20-30 s on 2 cores)."""
    return tinykit.build("parser", tmp_path_factory.mktemp("pite-cache") / "tinykit")


def _caption(words: list[str]) -> str:
    """A natural caption whose Treebank tokens are ``words``."""
    text = " ".join(words)
    text = re.sub(r"`` (.*?) ''", r'"\1"', text)
    return re.sub(r" (?=(?:'s|n't|[,.!?])(?: |$))", "", text)


@pytest.mark.slow
def test_tiny_parser_finds_the_lowest_noun_phrases_of_held_out_captions(tiny_parser_dir):
    trees = _read("test")
    captions = [_caption(tree.leaves()) for tree in trees]
    expected = []
    for caption, tree in zip(captions, trees):
        tokens = tokenize_with_offsets(caption)
        assert [t for t, _, _ in tokens] == [w if w not in ("``", "''") else '"' for w in tree.leaves()]
        expected.append(set(lowest_noun_phrases(tree, tokens, caption)))

    extractor = NounPhraseExtractor(NounPhraseSettings(parser=str(tiny_parser_dir), batch_size=16,
                                                       drop_pronouns=False, stop_phrases=[], max_words=None))
    found = [set(phrases) for phrases in extractor.extract(captions)]
    hits = sum(len(f & e) for f, e in zip(found, expected))
    recall = hits / sum(map(len, expected))
    precision = hits / sum(map(len, found))
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    for caption, phrases in zip(captions, found):
        _assert_exact(caption, phrases)

    counting = extractor.extract([COUNTING])[0]  # the paper's example (a training sentence)
    assert _texts(counting) == ["a woman", "money", "a pen", "a white table"]


@pytest.mark.slow
def test_tiny_parser_reloads_and_reports_its_scores(tiny_parser_dir, monkeypatch):
    report = json.loads((tiny_parser_dir / "eval.json").read_text())
    assert report["n_test"] == len(_read("test"))
    assert report["labelled_f1"] >= 0.75 and report["np_f1"] >= 0.8 and report["lowest_np_f1"] >= 0.85

    monkeypatch.setenv("PITE_CACHE", str(tiny_parser_dir.parent.parent))
    for ref in [str(tiny_parser_dir), str(tiny_parser_dir / "parser.pt"), "tinykit://parser"]:
        parser = load_parser(ref)
        tree = parse_tokens(parser, [["a", "dog", "runs"]])[0]
        assert tree.leaves() == ["a", "dog", "runs"]
    assert tinykit.resolve("tinykit://parser") == str(tiny_parser_dir)  # reused, not rebuilt
