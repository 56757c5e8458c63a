"""Stage datasets and collator with the tiny LLM tokenizer, checked against hand-built expectations."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pite.feature_store import FeatureStore, FeatureWriter
from pite.model.build import video_token_id_of
from pite.schema import Event, Phrase, VideoRecord, empty_trajectory, write_shard
from training.data import (
    Collator,
    CollatorSettings,
    Conversation,
    ConversationSettings,
    LengthGroupedBatchSampler,
    LengthGroupedSampler,
    Stage1Dataset,
    Stage2Dataset,
    Stage3Dataset,
    Target,
    TokenizationMismatch,
    build_stage_data,
    encode,
    model_inputs,
)
from training.data.conversation import VICUNA_SYSTEM
from training.data.stage1 import word_locations
from training.data.stage2 import DEFAULT_QUESTIONS, pick

DIM = 8
FRAMES = 100


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    from pite import tinykit
    from pite.models import load_causal_lm

    return load_causal_lm(str(tinykit.build("llm", root=tmp_path_factory.mktemp("kit"))))


@pytest.fixture(scope="session")
def tok(tiny_lm):
    return tiny_lm[1]


@pytest.fixture(scope="session")
def vid(tok):
    return video_token_id_of(tok)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> FeatureStore:
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    with FeatureWriter(root, model="test") as writer:
        for key in ("v1", "v2", "v3"):
            writer.add(key, rng.standard_normal((FRAMES, DIM)))
        writer.add("img1", rng.standard_normal((1, DIM)))
    return FeatureStore(root)


def write_json(path, items, jsonl=False):
    path.write_text("".join(json.dumps(i) + "\n" for i in items) if jsonl else json.dumps(items))
    return path


def labelled_runs(item) -> list[list[int]]:
    """Contiguous runs of labelled token ids; also checks labels equal the input ids there."""
    labels, ids = item["labels"], item["input_ids"]
    mask = labels != -100
    assert torch.equal(labels[mask], ids[mask])
    runs, current = [], []
    for keep, token in zip(mask.tolist(), labels.tolist()):
        if keep:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


def assistant_texts(tok, item) -> list[str]:
    """The decoded labelled runs: each must be " {answer}</s>" exactly (Vicuna labels the space after
    "ASSISTANT:", which the model writes at inference)."""
    return [tok.decode(run) for run in labelled_runs(item)]


def expanded(tok, vid, text: str, frames: int = FRAMES) -> list[int]:
    """Ids of ``text`` tokenised whole, with its one <video> token replaced by ``frames`` video ids."""
    ids = tok(text)["input_ids"]
    assert ids.count(vid) == 1
    k = ids.index(vid)
    return ids[:k] + [vid] * frames + ids[k + 1:]


def decode_positions(tok, ids: torch.Tensor, positions) -> str:
    return tok.decode(ids[torch.as_tensor(positions)].tolist())


# ----------------------------------------------------------------------------- stage 3


VTIMELLM_ITEM = {
    "id": "v1", "source": "test",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat happens from <s0> to <e0>?"},
        {"from": "gpt", "value": "A man rides a bicycle."},
        {"from": "human", "value": "When does he stop?"},
        {"from": "gpt", "value": "From <s1> to <e1>."},
    ],
    "meta": {"duration": 20.0, "token": {"<s0>": 0.0, "<e0>": 9.9, "<s1>": 15.0, "<e1>": 20.0}},
}


def test_stage3_vicuna_labels_video_block_and_time_tokens(tmp_path, tok, vid, store):
    path = write_json(tmp_path / "s3.json", [VTIMELLM_ITEM, {"video_id": "v2", "q": "What is happening?",
                                                             "a": "a dog runs on the grass."}])
    data = Stage3Dataset(path, store, tok, video_token_id=vid)
    assert len(data) == 2 and not data.skipped
    first, second = data[0], data[1]
    text = (f"{VICUNA_SYSTEM} USER: <video>\nWhat happens from 00 to 50? ASSISTANT: A man rides a bicycle.</s>"
            "USER: When does he stop? ASSISTANT: From 75 to 99.</s>")  # 9.9 s of 20 -> 49.5 -> 50; 20 s -> 99
    assert first["input_ids"].tolist() == expanded(tok, vid, text)
    assert assistant_texts(tok, first) == [" A man rides a bicycle.</s>", " From 75 to 99.</s>"]
    assert first["sample_id"] == "v1" and first["video_features"].dtype == torch.float16
    np.testing.assert_array_equal(first["video_features"].numpy(), store.get("v1"))
    video = (first["input_ids"] == vid).nonzero().flatten()
    assert len(video) == FRAMES and torch.equal(video, torch.arange(video[0], video[0] + FRAMES))
    assert tok.decode(first["input_ids"][: video[0]].tolist()).endswith("USER: ")
    assert (first["labels"][video] == -100).all()
    text2 = f"{VICUNA_SYSTEM} USER: <video>\nWhat is happening? ASSISTANT: a dog runs on the grass.</s>"
    assert second["input_ids"].tolist() == expanded(tok, vid, text2)
    assert assistant_texts(tok, second) == [" a dog runs on the grass.</s>"]
    assert second["sample_id"] == "v2#1" and "traj_pos" not in second and "loc_pos" not in second
    assert data.lengths == [len(first["input_ids"]), len(second["input_ids"])]


def test_bad_samples_are_counted_and_skipped_never_replaced(tmp_path, tok, vid, store):
    items = [
        VTIMELLM_ITEM,
        {**VTIMELLM_ITEM, "id": "v2", "meta": {"duration": 20.0, "token": {"<s0>": 1.0}}},  # <e0> unknown
        "just a string",
        {"video_id": "absent", "q": "What?", "a": "Nothing."},  # no features
        {"video_id": "v2", "q": "<video> and <video>?", "a": "Two videos."},  # two placeholders
        {"id": "v1", "conversations": [{"from": "gpt", "value": "I start."}]},  # assistant first
        {"video_id": "v2", "q": "What is happening?", "a": "a dog runs."},
        {"id": "v3", "conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "?"}]},
    ]
    data = Stage3Dataset(write_json(tmp_path / "s3.json", items), store, tok, video_token_id=vid)
    assert len(data) == 2
    assert [data[i]["sample_id"] for i in range(len(data))] == ["v1", "v2#6"]
    assert dict(data.skipped) == {"bad_record": 5, "missing_feature": 1}
    lines = tmp_path / "s3.jsonl"
    lines.write_text(json.dumps(VTIMELLM_ITEM) + "\n{broken\n")
    assert dict(Stage3Dataset(lines, store, tok, video_token_id=vid).skipped) == {"bad_record": 1}


def test_truncation_keeps_labels_or_skips(tmp_path, tok, vid, store):
    path = write_json(tmp_path / "s3.json", [{"video_id": "v1", "q": "What?", "a": "a man rides a bicycle."}])
    full = Stage3Dataset(path, store, tok, video_token_id=vid)[0]
    first_label = int((full["labels"] != -100).nonzero()[0])
    cut = Stage3Dataset(path, store, tok, video_token_id=vid,
                        conversation=ConversationSettings(max_length=first_label + 2))
    assert len(cut) == 1 and cut.counts["truncated"] == 1 and cut.lengths == [first_label + 2]
    assert torch.equal(cut[0]["input_ids"], full["input_ids"][: first_label + 2])
    assert (cut[0]["labels"] != -100).sum() == 2
    none_left = Stage3Dataset(path, store, tok, video_token_id=vid,
                              conversation=ConversationSettings(max_length=first_label))
    assert len(none_left) == 0 and dict(none_left.skipped) == {"too_long": 1}


# ----------------------------------------------------------------------------- stage 2


def trajectory(start: int, end: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Valid (3, 100, 2) float16 points on frames start..end, -1 elsewhere (as the schema requires)."""
    traj, vis = empty_trajectory()
    rng = np.random.default_rng(seed)
    traj[:, start:end + 1] = rng.uniform(0.05, 0.95, (3, end + 1 - start, 2)).astype(np.float16)
    vis[:, start:end + 1] = True
    return traj, vis


def phrase(caption: str, text: str, traj: tuple[np.ndarray, np.ndarray]) -> Phrase:
    start = caption.index(text)
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    from pite.masks import encode_mask

    return Phrase(text, start, start + len(text), (0.25, 0.25, 0.625, 0.625), encode_mask(mask), 0.9, *traj)


@pytest.fixture()
def shard(tmp_path):
    cap1, cap2 = "a man rides a red bicycle", "a dog runs on the grass."
    e1 = Event(0.0, 4.0, cap1, [phrase(cap1, "a man", trajectory(0, 40, 1)),
                                phrase(cap1, "a red bicycle", trajectory(0, 40, 2))])
    e2 = Event(5.0, 10.0, cap2, [phrase(cap2, "a dog", trajectory(50, 99, 3)),
                                 phrase(cap2, "the grass", empty_trajectory())])  # never visible: no target
    records = [VideoRecord("v1", "v1.mp4", 10.0, 25.0, 64, 48, [e2, e1]),  # events out of order on purpose
               VideoRecord("absent", "absent.mp4", 10.0, 25.0, 64, 48, [e1])]
    return write_shard(records, tmp_path / "shard-00000.parquet"), records


def test_stage2_events_and_trajectories_on_phrase_tokens(shard, tok, vid, store):
    path, records = shard
    data = Stage2Dataset(path, store, tok, video_token_id=vid, seed=0)
    assert len(data) == 1 and dict(data.skipped) == {"missing_feature": 1}
    assert data.counts["phrases_without_points"] == 1  # "the grass" (counted for both records)
    item = data[0]
    question = pick(DEFAULT_QUESTIONS, "v1", 0)
    answer = "From 00 to 40, a man rides a red bicycle. From 50 to 99, a dog runs on the grass."
    text = f"{VICUNA_SYSTEM} USER: <video>\n{question} ASSISTANT: {answer}</s>"
    assert item["input_ids"].tolist() == expanded(tok, vid, text)
    assert assistant_texts(tok, item) == [f" {answer}</s>"]
    ids, pos, target = item["input_ids"], item["traj_pos"], item["traj_target"]
    assert target.shape == (len(pos), 3, 100, 2) and target.dtype == torch.float32
    expected = {"a man": records[0].events[1].phrases[0], "a red bicycle": records[0].events[1].phrases[1],
                "a dog": records[0].events[0].phrases[0]}
    groups: dict[str, list[int]] = {}
    for k in range(len(pos)):  # consecutive positions with one trajectory form one phrase
        key = next(name for name, p in expected.items() if np.array_equal(target[k].numpy(), p.trajectory))
        groups.setdefault(key, []).append(int(pos[k]))
    for name, positions in groups.items():
        assert positions == list(range(positions[0], positions[-1] + 1))
        assert decode_positions(tok, ids, positions) == f" {name}"  # exactly the phrase's tokens
        assert tok.decode([int(ids[positions[0] - 1])]) in (",", " rides")  # the token before is not in it
    assert set(groups) == set(expected)


def test_question_pick_is_deterministic_and_seeded():
    picks = [pick(DEFAULT_QUESTIONS, f"video{i}", 0) for i in range(50)]
    assert picks == [pick(DEFAULT_QUESTIONS, f"video{i}", 0) for i in range(50)]
    assert len(set(picks)) > 1 and picks != [pick(DEFAULT_QUESTIONS, f"video{i}", 1) for i in range(50)]


def test_stage2_target_lost_to_truncation_skips_the_sample(shard, tok, vid, store):
    path, _ = shard
    item = Stage2Dataset(path, store, tok, video_token_id=vid)[0]
    settings = ConversationSettings(max_length=int(item["traj_pos"].max()))
    data = Stage2Dataset(path, store, tok, video_token_id=vid, conversation=settings)
    assert len(data) == 0 and data.skipped["too_long"] == 1


def test_mismatch_raises_with_the_sample_id(tmp_path, tok, vid, store):
    answer = "a man rides a bicycle."
    cut = answer.index("bicycle")
    conv = Conversation("clip-42", [("user", "<video>\nWhat?"), ("assistant", answer)], "v1",
                        [Target(1, cut, cut + 4, "traj", trajectory(0, 9, 0)[0])])  # "bicy" cuts a token
    with pytest.raises(TokenizationMismatch, match="clip-42") as err:
        encode(conv, tok, ConversationSettings(), video_token_id=vid, frames_per_video=FRAMES)
    assert err.value.sample_id == "clip-42" and "bicy" in str(err.value)
    # the same through a dataset: a phrase "bicy" that the schema accepts but no token boundary matches
    cap = "a man rides a bicycle"
    bad = VideoRecord("v3", "v3.mp4", 10.0, 25.0, 64, 48, [Event(0.0, 4.0, cap, [
        Phrase("bicy", cap.index("bicy"), cap.index("bicy") + 4, (0.1, 0.1, 0.5, 0.5),
               phrase(cap, "a man", trajectory(0, 40, 0)).mask_rle, 0.9, *trajectory(0, 40, 5))])])
    path = write_shard([bad], tmp_path / "bad.parquet")
    with pytest.raises(TokenizationMismatch, match="'v3'"):
        Stage2Dataset(path, store, tok, video_token_id=vid)
    skip = ConversationSettings(on_mismatch="skip")
    skipping = Stage2Dataset(path, store, tok, video_token_id=vid, conversation=skip)
    assert len(skipping) == 0 and dict(skipping.skipped) == {"tokenization_mismatch": 1}


# ----------------------------------------------------------------------------- stage 1


def narrative(caption: str, words: list[tuple[str, float, float]], **extra) -> dict:
    times = np.arange(0.05, 2.0, 0.1)
    trace = [{"x": float(t / 2), "y": float(1 - t / 2), "t": float(t)} for t in times]
    return {"image_id": "img1", "annotator_id": 7, "caption": caption,
            "timed_caption": [{"utterance": w, "start_time": s, "end_time": e} for w, s, e in words],
            "traces": [trace[:10], trace[10:]], **extra}


def test_stage1_word_locations_on_word_tokens(tmp_path, tok, vid, store):
    caption = "A brown dog sits on the grass."
    words = [("A", 0.0, 0.3), ("brown", 0.3, 0.6), ("dog", 0.6, 1.0), ("cat", 1.0, 1.1),  # "cat" is not there
             ("sits", 1.0, 1.2), ("on", 1.2, 1.3), ("the", 1.3, 1.4), ("grass.", 1.4, 2.0)]
    lines = [json.dumps(narrative(caption, words)), "{broken", json.dumps({"image_id": "img1"})]
    path = tmp_path / "ln.jsonl"
    path.write_text("\n".join(lines) + "\n")
    data = Stage1Dataset(path, store, tok, video_token_id=vid)
    assert len(data) == 1 and dict(data.skipped) == {"bad_record": 2} and data.counts["unaligned_words"] == 1
    item = data[0]
    text = f"{VICUNA_SYSTEM} USER: <video>\nDescribe the image in detail. ASSISTANT: {caption}</s>"
    assert item["input_ids"].tolist() == expanded(tok, vid, text, frames=1)
    assert item["sample_id"] == "img1/7" and item["video_features"].shape == (1, DIM)
    assert assistant_texts(tok, item) == [f" {caption}</s>"]
    ids, pos, target = item["input_ids"], item["loc_pos"].tolist(), item["loc_target"]
    located = {}
    for p, xy in zip(pos, target.tolist()):
        located.setdefault(tuple(round(v, 4) for v in xy), []).append(p)
    by_word = {decode_positions(tok, ids, ps).strip(): xy for xy, ps in located.items()}
    assert set(by_word) == {"A", "brown", "dog", "sits", "on", "the", "grass"}  # "grass." without the "."
    # "dog" was spoken from 0.6 to 1.0 s: points at t = 0.65 .. 0.95, x = t / 2, y = 1 - t / 2
    assert by_word["dog"] == pytest.approx((0.4, 0.6), abs=1e-4)
    assert by_word["grass"] == pytest.approx((0.85, 0.15), abs=1e-4)


def test_word_locations_clip_and_skip_words_without_points():
    traces = [[{"x": 1.4, "y": -0.2, "t": 0.1}, {"x": 1.2, "y": 0.2, "t": 0.2}]]
    words = word_locations("Sky, then sea", [{"utterance": "Sky,", "start_time": 0, "end_time": 0.3},
                                              {"utterance": "then", "start_time": 0.5, "end_time": 0.6},
                                              {"utterance": "SEA", "start_time": 0.0, "end_time": 0.3}], traces)
    assert [(s, e) for s, e, _ in words] == [(0, 3), (10, 13)]  # "Sky" trimmed; "SEA" found ignoring case
    np.testing.assert_allclose(words[0][2], [1.0, 0.0])  # mean (1.3, 0.0) clipped into the image


# ----------------------------------------------------------------------------- templates and tokenizers


def test_chat_template_labels_the_assistant_turns(tmp_path, tok, vid, store):
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    path = write_json(tmp_path / "s3.json", [VTIMELLM_ITEM])
    settings = ConversationSettings(template="chat_template", system="Be brief.")
    item = Stage3Dataset(path, store, chat_tok, video_token_id=vid, conversation=settings)[0]
    text = ("<|system|>\nBe brief.</s>\n<|user|>\n<video>\nWhat happens from 00 to 50?</s>\n"
            "<|assistant|>\nA man rides a bicycle.</s>\n<|user|>\nWhen does he stop?</s>\n"
            "<|assistant|>\nFrom 75 to 99.</s>\n")
    assert item["input_ids"].tolist() == expanded(chat_tok, vid, text)[1:]  # no BOS: the template owns the text
    assert [chat_tok.decode(run) for run in labelled_runs(item)] == ["A man rides a bicycle.</s>\n",
                                                                     "From 75 to 99.</s>\n"]


def sentencepiece_like_tokenizer():
    """A Vicuna-style tokenizer: Metaspace pieces whose offsets include the leading space, no <video> token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    raw.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    corpus = [VICUNA_SYSTEM + " USER: What is it? ASSISTANT: From 05 to 23, a man rides a red bicycle."] * 3
    raw.train_from_iterator(corpus + ["<> video \n"], trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_sentencepiece_style_tokenizer_without_video_token(store):
    sp = sentencepiece_like_tokenizer()
    video_id = video_token_id_of(sp)
    assert video_id == -200 and "<video>" not in sp.get_added_vocab()
    answer = "From 05 to 23, a man rides a red bicycle."
    start = answer.index("a red bicycle")
    conv = Conversation("sp-1", [("user", "<video>\nWhat is it?"), ("assistant", answer)], "v1",
                        [Target(1, start, start + len("a red bicycle"), "loc", np.array([0.5, 0.5]))])
    sample = encode(conv, sp, ConversationSettings(), video_token_id=video_id, frames_per_video=FRAMES)
    ids = sample.input_ids.tolist()
    assert ids.count(video_id) == FRAMES
    k = ids.index(video_id)
    assert sp.decode(ids[:k]).rstrip().endswith("USER:") and sp.decode(ids[k + FRAMES:]).startswith("\nWhat is it?")
    labels = [t for t in sample.labels.tolist() if t != -100]
    assert sp.decode(labels) == answer + "</s>"  # Metaspace decoding drops the leading "▁" of the first piece
    assert sp.convert_ids_to_tokens(labels[0]) == "\u2581From"  # the separator space is labelled, in the piece
    # this vocabulary merges "bicycle." into one piece: it carries the target (only punctuation overhangs)
    assert sp.convert_ids_to_tokens(int(sample.input_ids[sample.loc_pos[-1]])) == "\u2581bicycle."
    assert sp.decode(sample.input_ids[sample.loc_pos].tolist()).strip() == "a red bicycle."
    cut = answer.index("icycle")
    with pytest.raises(TokenizationMismatch, match="sp-1"):  # but a span that cuts a word is a mismatch
        encode(Conversation("sp-1", conv.turns, "v1", [Target(1, cut, cut + 6, "loc", np.zeros(2))]), sp,
               ConversationSettings(), video_token_id=video_id, frames_per_video=FRAMES)


# ----------------------------------------------------------------------------- collator and sampler


@pytest.fixture()
def mixed_items(tmp_path, shard, tok, vid, store):
    items = [{"video_id": "v2", "q": "What?", "a": "a dog."},
             {"video_id": "v3", "q": "What is happening in the video?", "a": "a man rides a red bicycle."}]
    data3 = Stage3Dataset(write_json(tmp_path / "s3.json", [VTIMELLM_ITEM, *items]), store, tok, video_token_id=vid)
    data2 = Stage2Dataset(shard[0], store, tok, video_token_id=vid)
    return [data3[i] for i in range(3)], data2[0]


def unpack(batch, item_lengths):
    """Per row, per item: (input_ids, labels, position_ids) slices, read back by the row layout."""
    out = []
    for r, ids in enumerate(batch["sample_ids"]):
        column = 0
        for sid in ids:
            n = item_lengths[sid]
            pos = batch["position_ids"][r, column:column + n] if "position_ids" in batch else torch.arange(n)
            out.append((sid, batch["input_ids"][r, column:column + n], batch["labels"][r, column:column + n], pos))
            column += n
    return out


@pytest.mark.parametrize("mode", ["pack", "pad"])
def test_collator_keeps_every_item_exactly(mixed_items, mode, tok, store):
    items, _ = mixed_items
    collate = Collator(tok.pad_token_id, CollatorSettings(mode=mode, max_length=512, pad_to_multiple_of=8))
    batch = collate(items)
    lengths = {it["sample_id"]: len(it["input_ids"]) for it in items}
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["num_tokens"] == sum(lengths.values())
    by_id = {it["sample_id"]: it for it in items}
    order = []
    for sid, ids, labels, pos in unpack(batch, lengths):
        assert torch.equal(ids, by_id[sid]["input_ids"]) and torch.equal(labels, by_id[sid]["labels"])
        assert torch.equal(pos, torch.arange(len(ids)))
        order.append(sid)
    assert sorted(order) == sorted(lengths)
    expected_videos = torch.stack([torch.from_numpy(store.get(it.split("#")[0])) for it in order])
    assert torch.equal(batch["video_features"], expected_videos)  # in flattened-batch order
    if mode == "pack":
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # 3 items fit one row of 512
        assert set(model_inputs(batch)) == {"input_ids", "labels", "video_features", "position_ids"}
    else:
        mask = batch["attention_mask"]
        assert batch["input_ids"].shape[0] == 3 and "position_ids" not in batch
        assert mask.sum().item() == sum(lengths.values())
        assert (batch["labels"][mask == 0] == -100).all() and (batch["input_ids"][mask == 0] == tok.pad_token_id).all()


def test_packed_and_padded_batches_give_the_same_loss(mixed_items, tiny_lm, vid, tok):
    from pite.model import LossSettings, PiTeSettings, assemble_pite

    llm, _ = tiny_lm
    stage3, stage2 = mixed_items
    items = [stage2, stage3[0], stage3[1]]
    torch.manual_seed(0)
    model = assemble_pite(llm, PiTeSettings(vision_dim=DIM, video_token_id=vid, loss=LossSettings())).eval()
    losses = {}
    for mode in ("pack", "pad"):
        batch = Collator(tok.pad_token_id, CollatorSettings(mode=mode, max_length=1024))(items)
        # the traj targets point at the phrase tokens in either layout
        flat = batch["input_ids"].reshape(-1)[batch["traj_index"]]
        assert torch.equal(flat, stage2["input_ids"][stage2["traj_pos"]])
        assert torch.equal(batch["traj_target"], stage2["traj_target"])
        with torch.no_grad():
            out = model(**model_inputs(batch))
        losses[mode] = (out.ce_loss.item(), out.l1_loss.item(), out.num_label_tokens, out.num_head_targets)
    pack, pad = losses["pack"], losses["pad"]
    assert pack[2:] == pad[2:] and pack[3] == len(stage2["traj_pos"])
    assert pack[0] == pytest.approx(pad[0], abs=1e-4) and pack[1] == pytest.approx(pad[1], abs=1e-4)


def test_collator_packs_into_rows_of_max_length(mixed_items, tok):
    items, _ = mixed_items
    lengths = [len(it["input_ids"]) for it in items]
    row = max(lengths) + min(lengths)  # room for two items, never three
    batch = Collator(tok.pad_token_id, CollatorSettings(mode="pack", max_length=row))(items)
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape[1] <= row
    assert sorted(len(r) for r in batch["sample_ids"]) == [1, 2]


def test_length_grouped_sampler_is_deterministic_grouped_and_resumable():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2000, 240).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3, mega_batch_mult=5)
    sampler.set_epoch(1)
    first = list(sampler)
    assert first == list(sampler) and sorted(first) == list(range(240))
    sampler.set_epoch(2)
    assert list(sampler) != first
    sampler.set_epoch(1, start=10)
    assert list(sampler) == first[10:] and len(sampler) == 230
    assert lengths[first[0]] == max(lengths)  # the longest batch comes first
    spread = np.mean([np.ptp([lengths[i] for i in first[k:k + 4]]) for k in range(0, 240, 4)])
    random_spread = np.mean([np.ptp(lengths[k:k + 4]) for k in range(0, 240, 4)])
    assert spread < random_spread / 4
    ranks = [LengthGroupedSampler(lengths[:238], batch_size=4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    parts = [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == 120  # 238 filled up to whole global batches of 8
    assert set(parts[0]) | set(parts[1]) == set(range(238))


def test_datasets_pickle_for_loader_workers(tmp_path, tok, vid, store):
    import pickle

    from torch.utils.data import DataLoader

    path = write_json(tmp_path / "s3.json", [VTIMELLM_ITEM, {"video_id": "v2", "q": "What?", "a": "a dog."}])
    data = Stage3Dataset(path, store, tok, video_token_id=vid)
    store.get("v1")  # an open shard handle must not travel
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[1]["input_ids"], data[1]["input_ids"]) and clone.lengths == data.lengths
    sampler = LengthGroupedSampler(data.lengths, batch_size=2, seed=0)
    loader = DataLoader(data, batch_size=2, sampler=sampler, collate_fn=Collator(tok.pad_token_id))
    [batch] = list(loader)
    assert sorted(sid for row in batch["sample_ids"] for sid in row) == ["v1", "v2#1"]


def test_job_batch_sampler_gives_whole_grouped_micro_batches():
    lengths = np.random.default_rng(1).integers(10, 500, 50).tolist()
    sampler = LengthGroupedBatchSampler(lengths, micro_batch=4, seed=0, mega_batch_mult=3)
    sampler.set_epoch(3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 12 and all(len(b) == 4 for b in batches)  # 2 dropped
    assert len({i for b in batches for i in b}) == 48 and batches == list(sampler)


def test_build_stage_data_from_a_train_config(shard, tok, vid, store, tmp_path):
    from training.config import DataSettings, ModelSettings, OptimSettings, TrainConfig

    for packing in (True, False):
        cfg = TrainConfig(out_dir=str(tmp_path / "run"), model=ModelSettings(vision_dim=DIM),
                          data=DataSettings(stage=2, shards=str(shard[0]), features=str(store.root), packing=packing,
                                            max_length=512),
                          optim=OptimSettings(micro_batch=1))
        dataset, collate, sampler = build_stage_data(cfg, tok, video_token_id=vid)
        assert len(dataset) == 1 and dataset.settings.max_length == 512
        assert collate.settings.mode == ("pack" if packing else "pad")
        assert (sampler is None) == packing
        batch = collate([dataset[0]])
        assert batch["traj_index"].numel() == len(dataset[0]["traj_pos"])
