"""Tiny GroundingDINO: ``GroundingDinoForObjectDetection`` + processor, all built from configs.

Stands in for ``IDEA-Research/grounding-dino-tiny``. Nothing points at a hub checkpoint: the
Swin backbone and the BERT text encoder are built from their configs with random weights, and
the BERT WordPiece vocab is learned here from detection prompts.

GroundingDINO's modeling code hard-codes ``bert-base-uncased`` ids for the tokens that split a
prompt into phrases (``[CLS]`` 101, ``[SEP]`` 102, ``.`` 1012, ``?`` 1029), so the trained vocab
is laid out with those tokens (and ``[PAD]`` 0, ``[UNK]`` 100, ``[MASK]`` 103) at BERT's ids;
the phrase masks of ``"a cat. a dog."`` are then exactly the real model's.

Images are resized to 64 px (shortest and longest edge); ``logits`` are (B, 8, 256) and
``pred_boxes`` (B, 8, 4) for 8 queries.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SIZE = 64
NUM_QUERIES = 8

# bert-base-uncased ids the model relies on (see module docstring).
FIXED_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}

_OBJECTS = """
person woman man girl boy child baby dog cat horse bird cow sheep car truck bus bicycle
motorcycle boat train table chair sofa bed desk door window wall floor road street tree grass
flower sky water river beach ball pen money cup glass bottle plate bowl knife fork spoon phone
laptop book bag hat shirt shoe hand face hair guitar piano drum camera box shelf sink kitchen
field fence kite umbrella pool mirror lamp sponge brush engine wheel rope ladder stage
""".split()
_ADJECTIVES = "a the white black red blue green small big old young wooden two".split()


def corpus() -> list[str]:
    """Detection prompts in GroundingDINO's ``"a cat. a dog."`` form, lower case."""
    lines = []
    for i, obj in enumerate(_OBJECTS):
        adj = _ADJECTIVES[i % len(_ADJECTIVES)]
        nxt = _OBJECTS[(i * 7 + 3) % len(_OBJECTS)]
        lines.append(f"{adj} {obj}. a {nxt}. the {obj}s?")
    return lines


def train_vocab() -> dict[str, int]:
    """WordPiece vocab learned from :func:`corpus`, laid out with :data:`FIXED_IDS`.

    The vocab is every word of the (BERT-normalised, BERT-pre-tokenised) corpus by frequency,
    every character alone and as a ``##`` continuation, and common ``##`` suffixes, so WordPiece
    splits unseen words the way BERT does. It is counted here rather than with ``tokenizers``'
    WordPieceTrainer, whose tie-breaking between equally frequent pieces changes run to run.
    Unused ids are filled with ``[unusedN]`` as in BERT.
    """
    import string
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(
        word
        for line in corpus()
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))
    )
    alphabet = set(string.ascii_lowercase + string.digits + string.punctuation)
    chars = sorted({c for word in counts for c in word} | alphabet)
    pieces = sorted(counts, key=lambda w: (-counts[w], w)) + chars + [f"##{c}" for c in chars]
    pieces += ["##s", "##es", "##ed", "##ing", "##er", "##ly"]
    learned = [p for p in dict.fromkeys(pieces) if p not in FIXED_IDS]
    size = max(max(FIXED_IDS.values()) + 1, 104 + len(learned) + 1)
    by_id: list[str | None] = [None] * size
    for token, idx in FIXED_IDS.items():
        by_id[idx] = token
    free = (i for i in range(104, size) if by_id[i] is None)
    for token in learned:
        by_id[next(free)] = token
    unused = 0
    for i, token in enumerate(by_id):
        if token is None:
            by_id[i] = f"[unused{unused}]"
            unused += 1
    return {token: i for i, token in enumerate(by_id)}


def build(out_dir: Path) -> None:
    """Write the model (``config.json``, ``model.safetensors``) and processor files into ``out_dir``."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = BertTokenizer(vocab=train_vocab(), do_lower_case=True, model_max_length=256)
    backbone = SwinConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=64,  # GroupNorm(32 groups) on a 1x1 top level needs >= 2 channels per group
        num_queries=NUM_QUERIES,
        encoder_layers=1,
        decoder_layers=2,  # 1 raises a tie-weights ValueError
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,
    )
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(out_dir)
    size = {"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}
    image_processor = GroundingDinoImageProcessor(size=size)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
