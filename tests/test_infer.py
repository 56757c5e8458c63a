"""pite.infer: batched greedy answers, trajectories of answer phrases, `pite chat` and a resumable `pite infer`,
on a tiny checkpoint written by the trainer's own code and a tiny feature store."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import torch

from pite import cli
from pite.infer import Predictor, StoreFeatures, add_chat_commands, token_spans
from pite.model import PiTeModel

CLIP_DIM = 32  # tinykit://clip image_embeds
FRAMES = 8
QUESTIONS = ["What is happening in the video?", "Describe the video in detail.",
             "When does the woman open the door in the park at night?"]


@pytest.fixture(scope="module")
def llm_path(kit_root):
    from pite import tinykit

    return tinykit.build("llm", root=kit_root)


def write_stage(folder, llm_path, stage: int) -> None:
    """A trained-looking stage folder: random LoRA, adapter and heads, saved by training.stage_weights."""
    from pite.model import PiTeSettings, assemble_pite
    from pite.models import load_causal_lm
    from training.config import LoraSettings
    from training.lora import add_lora
    from training.stage_weights import save_stage_weights, stage_meta

    torch.manual_seed(stage)
    llm, _ = load_causal_lm(str(llm_path), dtype=torch.float32)
    model = assemble_pite(llm, PiTeSettings(vision_dim=CLIP_DIM))
    model.llm = add_lora(model.llm, LoraSettings(r=4, alpha=8.0, dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or not name.startswith("llm."):
                param.normal_(0.0, 0.05)
    settings = {"vision_dim": CLIP_DIM, "num_trajectories": 3, "num_frames": 100, "video_token": "<video>",
                "video_token_id": model.video_token_id}
    save_stage_weights(model, folder, stage_meta(stage=stage, llm=str(llm_path), model_settings=settings,
                                                 lora={"r": 4}, init_from="", step=1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, llm_path):
    folder = tmp_path_factory.mktemp("ckpt") / "stage2"
    write_stage(folder, llm_path, stage=2)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from pite.feature_store import FeatureWriter

    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    with FeatureWriter(root, model="tinykit://clip") as writer:
        for i in range(4):
            writer.add(f"v{i}", rng.normal(size=(FRAMES, CLIP_DIM)))
    return root


@pytest.fixture(scope="module")
def predictor(checkpoint, store):
    return Predictor.from_checkpoint(str(checkpoint), StoreFeatures(store), device="cpu", max_new_tokens=10,
                                     batch_size=3)


@pytest.fixture
def generate_rows(monkeypatch):
    """Counts the prompts that reach PiTeModel.generate."""
    calls = []
    original = PiTeModel.generate

    def counting(self, input_ids, *args, **kwargs):
        calls.append(int(input_ids.shape[0]))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(PiTeModel, "generate", counting)
    return calls


def pite(argv: list[str], monkeypatch, stdin: str | None = None) -> int:
    """Run `pite ARGV` through pite.cli.main, with chat/infer registered if the CLI does not have them yet."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "chat" not in sub.choices:
        add_chat_commands(sub)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(argv)


# ----------------------------------------------------------------------------- the predictor


def test_a_batch_answers_as_each_question_alone(predictor, generate_rows):
    requests = [(f"v{i}", q) for i, q in enumerate(QUESTIONS)]
    batched = predictor.answer(requests, trajectories=True)
    alone = [predictor.answer([r], trajectories=True)[0] for r in requests]
    assert generate_rows == [3, 1, 1, 1]
    for a, b in zip(batched, alone):
        assert a.text == b.text and a.text
        assert [p.text for p in a.phrases] == [p.text for p in b.phrases]
        for pa, pb in zip(a.phrases, b.phrases):
            assert pa.trajectory.shape == (3, 100, 2)
            np.testing.assert_allclose(pa.trajectory, pb.trajectory, atol=1e-5)


def test_phrase_trajectories_are_the_head_on_the_phrase_tokens(predictor):
    from training.data.conversation import ConversationSettings

    from pite.infer import encode_prompt

    [answer] = predictor.answer([("v1", QUESTIONS[0])], trajectories=True)
    assert answer.phrases
    model, tok = predictor.model, predictor.tokenizer
    features = torch.from_numpy(StoreFeatures(predictor.features.store.root).get("v1").astype(np.float32))[None]
    prompt = encode_prompt(QUESTIONS[0], tok, ConversationSettings(), model.video_token_id, FRAMES)
    generated = model.generate(torch.tensor([prompt]), video_features=features, do_sample=False,
                               max_new_tokens=10, pad_token_id=tok.pad_token_id)[0].tolist()
    generated = generated[:generated.index(tok.eos_token_id)] if tok.eos_token_id in generated else generated
    text = tok.decode(generated, skip_special_tokens=True)
    assert text.strip() == answer.text
    spans = token_spans(tok, generated)
    shift = len(text) - len(text.lstrip())
    for phrase in answer.phrases:
        assert answer.text[phrase.char_start:phrase.char_end] == phrase.text
        covered = "".join(text[spans[t][0]:spans[t][1]] for t in phrase.tokens)
        assert text[phrase.char_start + shift:phrase.char_end + shift] in covered
        index = torch.tensor([len(prompt) + t for t in phrase.tokens])
        full = torch.tensor([prompt + generated])
        expected = model.predict_heads(full, index, video_features=features).mean(0).numpy()
        np.testing.assert_allclose(phrase.trajectory, expected, atol=1e-5)


def test_phrases_are_noun_phrases_with_a_parser_else_content_words(kit_root):
    from pite import tinykit
    from pite.infer import noun_phrase_finder, word_phrases

    caption = "From 05 to 23, a woman is counting money with a pen on a white table."
    tinykit.build("parser", root=kit_root)
    [found] = noun_phrase_finder("tinykit://parser")([caption])
    assert {("a pen", 46, 51), ("a white table", 55, 68)} <= set(found)
    assert [w for w, _, _ in word_phrases([caption])[0]] == ["woman", "counting", "money", "pen", "white", "table"]


def test_predict_fn_serves_the_eval_harness(predictor):
    from pite.eval.registry import PromptItem

    items = [PromptItem("a", "v0", QUESTIONS[0]), PromptItem("b", "v2", QUESTIONS[1])]
    expected = [a.text for a in predictor.answer([("v0", QUESTIONS[0]), ("v2", QUESTIONS[1])])]
    assert predictor.predict_fn(items) == expected
    assert predictor.predict_fn([{"video_id": "v0", "prompt": QUESTIONS[0]}]) == expected[:1]


# ----------------------------------------------------------------------------- pite chat


def test_chat_answers_a_question_with_trajectories(checkpoint, store, predictor, monkeypatch, capsys):
    code = pite(["chat", "--checkpoint", str(checkpoint), "--features", str(store), "--video", "v1",
                 "--question", QUESTIONS[0], "--show-trajectories", "--max-new-tokens", "10"], monkeypatch)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == predictor.answer([("v1", QUESTIONS[0])])[0].text
    assert any(line.strip().startswith("trajectory 3: 00 (") for line in out)


def test_chat_interactive_reads_questions_until_an_empty_line(checkpoint, store, monkeypatch, capsys,
                                                               generate_rows):
    code = pite(["chat", "--checkpoint", str(checkpoint), "--features", str(store), "--video", "v0",
                 "--interactive", "--max-new-tokens", "4"], monkeypatch, stdin="first?\nsecond?\n\nnever asked\n")
    assert code == 0 and generate_rows == [1, 1]
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_chat_on_a_video_file_runs_clip(checkpoint, monkeypatch, capsys):
    from pite.footage import real_sample_clip

    try:
        clip = real_sample_clip("bikes.mp4")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    code = pite(["chat", "--checkpoint", str(checkpoint), "--video", str(clip), "--clip", "tinykit://clip",
                 "--question", "What happens?", "--max-new-tokens", "3"], monkeypatch)
    assert code == 0 and capsys.readouterr().out.strip()


def test_bad_input_is_a_clear_error_with_exit_code_2(checkpoint, store, tmp_path, llm_path, monkeypatch, capsys):
    common = ["--features", str(store), "--question", "Why?"]
    assert pite(["chat", "--checkpoint", str(tmp_path / "nope"), "--video", "v0", *common], monkeypatch) == 2
    assert "does not exist" in capsys.readouterr().err
    assert pite(["chat", "--checkpoint", str(checkpoint), "--video", "v9", *common], monkeypatch) == 2
    assert "'v9' has no features" in capsys.readouterr().err
    write_stage(tmp_path / "stage1", llm_path, stage=1)
    assert pite(["chat", "--checkpoint", str(tmp_path / "stage1"), "--video", "v0", "--show-trajectories",
                 *common], monkeypatch) == 2
    assert "no trained trajectory head" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pite infer


def test_infer_writes_jsonl_and_a_rerun_resumes(checkpoint, store, tmp_path, monkeypatch, generate_rows):
    rows = [{"id": f"q{i}", "video_id": f"v{i}", "question": q} for i, q in enumerate(QUESTIONS)]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["infer", "--checkpoint", str(checkpoint), "--features", str(store), "--input", str(source),
            "--output", str(out), "--batch-size", "2", "--max-new-tokens", "6", "--show-trajectories"]
    assert pite(argv, monkeypatch) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in first] == ["q0", "q1", "q2"] and generate_rows == [2, 1]
    assert all(r["answer"] and isinstance(r["phrases"], list) for r in first)

    out.write_text(out.read_text().splitlines(keepends=True)[0] + '{"id": "q1", "ans')  # killed mid-line
    generate_rows.clear()
    assert pite(argv, monkeypatch) == 0
    assert generate_rows == [2]  # only q1 and q2 again
    assert [json.loads(line) for line in out.read_text().splitlines()] == first

    generate_rows.clear()
    assert pite(argv, monkeypatch) == 0 and generate_rows == []


def test_infer_refuses_an_output_of_another_input(checkpoint, store, tmp_path, monkeypatch, capsys):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"id": "q0", "video_id": "v0", "question": "Why?"}) + "\n")
    out.write_text(json.dumps({"id": "q0", "video": "v0", "question": "How?", "answer": "x"}) + "\n")
    argv = ["infer", "--checkpoint", str(checkpoint), "--features", str(store), "--input", str(source),
            "--output", str(out)]
    assert pite(argv, monkeypatch) == 2
    assert "another input" in capsys.readouterr().err
