"""PiTeModel around tiny LLaMA and Qwen2 models built from configs (no downloads)."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pite.model import (
    LossSettings,
    PiTeSettings,
    assemble_pite,
    init_trajectory_from_localization,
    set_trainable,
)
from pite.model.packing import block_causal_mask, first_fit_decreasing, packed_position_ids, sequence_ids

VOCAB, HIDDEN, FRAMES, VISION = 64, 32, 4, 12
VIDEO = -200


def tiny_llm(kind: str):
    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    if kind == "llama":
        llm = LlamaForCausalLM(LlamaConfig(**common))
    else:
        llm = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    llm.config._attn_implementation = "sdpa"
    return llm.eval()


def tiny_pite(kind="llama", **loss):
    settings = PiTeSettings(vision_dim=VISION, video_token_id=VIDEO, loss=LossSettings(**loss))
    torch.manual_seed(1)
    return assemble_pite(tiny_llm(kind), settings).eval()


def sample(length: int, video_at: int | None, seed: int) -> torch.Tensor:
    """Token ids (length,) in 3..VOCAB-1 with FRAMES video tokens starting at ``video_at``."""
    ids = torch.randint(3, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))
    if video_at is not None:
        ids[video_at : video_at + FRAMES] = VIDEO
    return ids


@pytest.fixture(params=["llama", "qwen2"])
def model(request):
    return tiny_pite(request.param)


def test_trajectory_head_starts_as_repeated_localization_head(model):
    assert torch.equal(model.traj_head.weight, model.loc_head.weight.repeat(300, 1))
    assert torch.equal(model.traj_head.bias, model.loc_head.bias.repeat(300))
    hidden = torch.randn(5, HIDDEN)
    traj, loc = model.traj_head(hidden), model.loc_head(hidden)
    assert traj.shape == (5, 3, 100, 2)
    torch.testing.assert_close(traj, loc[:, None, None, :].expand(5, 3, 100, 2))
    with torch.no_grad():
        model.loc_head.weight.add_(1.0)
    init_trajectory_from_localization(model.traj_head, model.loc_head)
    torch.testing.assert_close(model.traj_head(hidden), model.loc_head(hidden)[:, None, None].expand(5, 3, 100, 2))


def test_splicing_puts_adapter_outputs_at_video_positions(model):
    offsets = [1, 5, 9]
    input_ids = torch.stack([sample(16, at, seed=i) for i, at in enumerate(offsets)])
    features = torch.randn(3, FRAMES, VISION)
    embeds = model.embed(input_ids, features)
    projected = model.adapter(features)
    table = model.llm.get_input_embeddings().weight
    for b, at in enumerate(offsets):
        torch.testing.assert_close(embeds[b, at : at + FRAMES], projected[b])
        text = torch.ones(16, dtype=torch.bool)
        text[at : at + FRAMES] = False
        torch.testing.assert_close(embeds[b, text], table[input_ids[b, text]])
    embeds.sum().backward()
    assert model.adapter.weight.grad is not None


def test_splicing_errors_name_the_sample(model):
    input_ids = torch.stack([sample(12, 2, 0), sample(12, 3, 1)])
    input_ids[1, 3] = 5  # sample 1 now has FRAMES - 1 video tokens
    with pytest.raises(ValueError, match="sample 1 has 3 video tokens"):
        model.embed(input_ids, torch.randn(2, FRAMES, VISION))
    with pytest.raises(ValueError, match="video_features has 3 videos"):
        model.embed(torch.stack([sample(12, 2, 0), sample(12, 3, 1)]), torch.randn(3, FRAMES, VISION))
    with pytest.raises(ValueError, match="no video_features"):
        model.embed(input_ids)


def _single_run(model, ids, labels, feats, traj_index=None, traj_target=None):
    """The same sample alone, without padding or packing."""
    return model(ids[None], labels=labels[None], video_features=feats, traj_index=traj_index, traj_target=traj_target)


def test_packed_batch_equals_each_sample_alone(model):
    lengths, video_at = [9, 6, 11], [2, None, 4]
    samples = [sample(n, at, seed=10 + i) for i, (n, at) in enumerate(zip(lengths, video_at))]
    labels = [s.masked_fill(s == VIDEO, -100) for s in samples]
    feats = [torch.randn(1, FRAMES, VISION) if at is not None else None for at in video_at]
    rows = [[0, 1], [2]]  # row 0 = samples 0 and 1 (15 tokens), row 1 = sample 2 (11) + padding
    row_len = 16
    position_ids = packed_position_ids([[lengths[i] for i in row] for row in rows], row_len)
    input_ids = torch.zeros(2, row_len, dtype=torch.long)
    packed_labels = torch.full((2, row_len), -100)
    starts = {}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            input_ids[r, at : at + lengths[i]] = samples[i]
            packed_labels[r, at : at + lengths[i]] = labels[i]
            starts[i] = (r, at)
            at += lengths[i]
    video_features = torch.cat([feats[0], feats[2]])  # order of appearance: sample 0 (row 0), sample 2 (row 1)

    hidden, _ = model.hidden_states(input_ids, position_ids=position_ids, video_features=video_features)
    total_ce, total_tokens = 0.0, 0
    for i in range(3):
        alone, _ = model.hidden_states(samples[i][None], video_features=feats[i])
        r, at = starts[i]
        torch.testing.assert_close(hidden[r, at : at + lengths[i]], alone[0], rtol=1e-5, atol=1e-5)
        out = _single_run(model, samples[i], labels[i], feats[i])
        total_ce += out.ce_loss.item() * out.num_label_tokens
        total_tokens += out.num_label_tokens

    packed = model(input_ids, labels=packed_labels, position_ids=position_ids, video_features=video_features)
    assert packed.num_label_tokens == total_tokens  # each sample's first token is never a target
    assert float(packed.ce_loss) == pytest.approx(total_ce / total_tokens, rel=1e-5)


def test_right_padding_equals_sample_alone(model):
    ids = sample(10, 3, seed=3)
    batch = torch.zeros(2, 14, dtype=torch.long)
    batch[0, :10] = ids
    batch[1] = sample(14, 0, seed=4)
    mask = (torch.arange(14) < torch.tensor([[10], [14]])).long()
    labels = batch.masked_fill((batch == VIDEO) | (mask == 0), -100)
    feats = torch.randn(2, FRAMES, VISION)
    padded = model(batch[:1], labels=labels[:1], attention_mask=mask[:1], video_features=feats[:1])
    alone = _single_run(model, ids, labels[0, :10], feats[:1])
    assert padded.num_label_tokens == alone.num_label_tokens
    torch.testing.assert_close(padded.ce_loss, alone.ce_loss, rtol=1e-5, atol=1e-6)


def test_ce_matches_full_logits_loss(model):
    ids = torch.stack([sample(12, 2, 5), sample(12, 6, 6)])
    labels = ids.masked_fill(ids == VIDEO, -100)
    feats = torch.randn(2, FRAMES, VISION)
    model.loss = LossSettings(label_smoothing=0.1, ce_chunk_size=5)
    out = model(ids, labels=labels, video_features=feats)
    hidden, _ = model.hidden_states(ids, video_features=feats)
    logits = model.llm.get_output_embeddings()(hidden)[:, :-1]
    want = F.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(out.ce_loss, want, rtol=1e-5, atol=1e-6)
    model.loss = LossSettings(label_smoothing=0.1, ce_chunk_size=5, ce_impl="checkpointed")
    torch.testing.assert_close(model(ids, labels=labels, video_features=feats).ce_loss, want, rtol=1e-5, atol=1e-6)


def test_heads_run_only_at_target_positions_and_losses_add_up(model):
    ids = torch.stack([sample(12, 1, 7), sample(12, 4, 8)])
    labels = ids.masked_fill(ids == VIDEO, -100)
    feats = torch.randn(2, FRAMES, VISION)
    seen = []
    model.traj_head.register_forward_hook(lambda mod, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    traj_index = torch.tensor([7, 12 + 10, 12 + 11])  # target tokens: (0, 7), (1, 10), (1, 11)
    traj_target = torch.rand(3, 3, 100, 2)
    traj_target[0, :, 50:] = -1.0
    model.loss = LossSettings(label_smoothing=0.0, traj_weight=0.5)
    out = model(ids, labels=labels, video_features=feats, traj_index=traj_index, traj_target=traj_target)
    assert seen == [((3, HIDDEN), (3, 3, 100, 2))]
    assert out.num_head_targets == 3
    hidden, _ = model.hidden_states(ids, video_features=feats)
    pred = model.traj_head(hidden[[0, 1, 1], [6, 9, 10]])  # shifted: hidden at t predicts token t+1
    valid = traj_target[..., 0] != -1
    torch.testing.assert_close(out.l1_loss, (pred - traj_target).abs()[valid].mean())
    torch.testing.assert_close(out.loss, out.ce_loss + 0.5 * out.l1_loss)
    out.loss.backward()
    assert model.traj_head.weight.grad is not None and model.loc_head.weight.grad is None


def test_localization_head_and_official_unmasked_switch(model):
    ids = torch.stack([sample(10, None, 9), sample(10, None, 10)])
    loc_index, loc_target = torch.tensor([3, 10 + 5]), torch.tensor([[0.2, 0.4], [-1.0, -1.0]])
    masked = model(ids, loc_index=loc_index, loc_target=loc_target)
    hidden, _ = model.hidden_states(ids)
    pred = model.loc_head(hidden[[0, 1], [2, 4]])
    torch.testing.assert_close(masked.l1_loss, (pred[0] - loc_target[0]).abs().mean())
    assert masked.ce_loss is None and masked.num_head_targets == 2

    model.loss = LossSettings(official_unmasked=True)
    official = model(ids, loc_index=loc_index, loc_target=loc_target)
    dense_label = -torch.ones(2, 9, 2)
    dense_label[0, 2], dense_label[1, 4] = loc_target[0], loc_target[1]
    want = (model.loc_head(hidden[:, :-1]) - dense_label).abs().mean()
    torch.testing.assert_close(official.l1_loss, want)


def test_head_target_at_sequence_start_is_rejected(model):
    ids = sample(8, None, 11)[None]
    with pytest.raises(ValueError, match="first token"):
        model(ids, loc_index=torch.tensor([0]), loc_target=torch.zeros(1, 2))


def test_generate_and_trajectories_of_generated_tokens(model):
    prompts = [sample(9, 2, 12), sample(6, 1, 13)]
    batch = torch.zeros(2, 9, dtype=torch.long)  # left padding for generation
    mask = torch.zeros(2, 9, dtype=torch.long)
    for b, p in enumerate(prompts):
        batch[b, 9 - len(p) :], mask[b, 9 - len(p) :] = p, 1
    feats = torch.randn(2, FRAMES, VISION)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = model.generate(batch, mask, feats, **kwargs)
    assert out.shape == (2, 4) and out.dtype == torch.long
    for b, p in enumerate(prompts):  # batched left-padded generation = each prompt alone
        assert torch.equal(model.generate(p[None], None, feats[b : b + 1], **kwargs)[0], out[b])
    traj = model.generated_trajectories(batch, out, torch.tensor([[0, 1], [1, 3]]), mask, feats)
    assert traj.shape == (2, 3, 100, 2)
    alone = model.predict_heads(torch.cat([prompts[1], out[1]])[None], torch.tensor([6 + 3]), video_features=feats[1:])
    torch.testing.assert_close(traj[1], alone[0], rtol=1e-5, atol=1e-5)


def test_set_trainable_per_stage_without_lora():
    model = tiny_pite()
    assert set(set_trainable(model, 1)) == {"adapter.weight", "adapter.bias", "loc_head.weight", "loc_head.bias"}
    assert set(set_trainable(model, 2)) == {"traj_head.weight", "traj_head.bias"}
    assert set_trainable(model, 3) == []
    with pytest.raises(ValueError):
        set_trainable(model, 4)


def test_works_with_peft_lora():
    from peft import LoraConfig, get_peft_model

    model = tiny_pite("llama")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model.llm = get_peft_model(model.llm, lora)
    names = set_trainable(model, 2)
    assert "traj_head.weight" in names and any("lora_" in n for n in names) and "adapter.weight" not in names
    assert all("lora_" in n for n in names if n.startswith("llm."))
    ids = torch.stack([sample(10, 2, 14), sample(10, 5, 15)])
    feats = torch.randn(2, FRAMES, VISION)
    out = model(ids, labels=ids.masked_fill(ids == VIDEO, -100), video_features=feats,
                traj_index=torch.tensor([8]), traj_target=torch.rand(1, 3, 100, 2))
    out.loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert model.adapter.weight.grad is None
    assert model.generate(ids[:1], None, feats[:1], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 3)


def test_packing_helpers():
    assert first_fit_decreasing([5, 9, 3, 4], 10) == [[1], [0, 3], [2]]
    pos = packed_position_ids([[3, 2], [4]], 6)
    assert pos.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert sequence_ids(pos).tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]]
    mask = block_causal_mask(pos)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False]
    with pytest.raises(ValueError, match="sample 0"):
        first_fit_decreasing([11], 10)


def test_build_pite_from_tinykit(tmp_path, monkeypatch):
    monkeypatch.setenv("PITE_CACHE", str(tmp_path))
    from pite.model import build_pite

    model, tokenizer = build_pite("tinykit://llm", PiTeSettings(vision_dim=VISION))
    assert model.video_token_id == tokenizer.convert_tokens_to_ids("<video>")
    ids = tokenizer("a woman opens the door", return_tensors="pt").input_ids
    video = torch.full((1, FRAMES), model.video_token_id)
    ids = torch.cat([ids[:, :1], video, ids[:, 1:]], dim=1)
    labels = ids.masked_fill(ids == model.video_token_id, -100)
    out = model(ids, labels=labels, video_features=torch.randn(1, FRAMES, VISION))
    assert out.loss is not None and out.num_label_tokens == ids.shape[1] - 1 - FRAMES


def test_loss_settings_per_stage():
    assert LossSettings.for_stage(1, lam=2.0).label_smoothing == 0.1
    stage2 = LossSettings.for_stage(2, lam=2.0)
    assert stage2.label_smoothing == 0.0 and stage2.traj_weight == 2.0
    with pytest.raises(ValueError, match="ce_impl"):
        LossSettings(ce_impl="dense")


def test_packed_attention_splits_rows_and_matches_samples_alone(model, monkeypatch):
    import pite.model.packing as packing

    assert model.llm.config._attn_implementation == packing.PACKED_SDPA
    calls = []
    real_bounds = packing.segment_bounds
    monkeypatch.setattr(packing, "segment_bounds", lambda pos: calls.append(pos.shape) or real_bounds(pos))
    lengths = [7, 5, 9]
    samples = [sample(n, None, seed=20 + i) for i, n in enumerate(lengths)]
    row = torch.cat(samples)[None]
    positions = packed_position_ids([lengths], row_length=24)
    row = torch.cat([row, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # padding tail
    with torch.no_grad():
        packed, _ = model.hidden_states(row, None, positions)
        assert len(calls) == model.llm.config.num_hidden_layers  # the per-sequence path ran in every layer
        start = 0
        for ids in samples:
            alone, _ = model.hidden_states(ids[None], None, None)
            torch.testing.assert_close(packed[0, start : start + len(ids)], alone[0], rtol=1e-5, atol=1e-5)
            start += len(ids)
        # Same as transformers' dense block-diagonal mask (plain sdpa).
        model.llm.config._attn_implementation = "sdpa"
        dense, _ = model.hidden_states(row, None, positions)
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-5)


def test_packed_attention_keeps_padded_batches_exact(model):
    short, long = sample(6, None, seed=30), sample(10, None, seed=31)
    ids = torch.stack([torch.cat([short, torch.zeros(4, dtype=torch.long)]), long])
    mask = torch.tensor([[1] * 6 + [0] * 4, [1] * 10])
    with torch.no_grad():
        padded, _ = model.hidden_states(ids, mask, None)
        for b, alone_ids in enumerate([short, long]):
            alone, _ = model.hidden_states(alone_ids[None], None, None)
            torch.testing.assert_close(padded[b, : len(alone_ids)], alone[0], rtol=1e-5, atol=1e-5)


def test_enable_packed_attention_is_idempotent_and_only_replaces_sdpa():
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from pite.model.packing import PACKED_SDPA, enable_packed_attention, packed_sdpa_attention

    llm = tiny_llm("llama")
    assert enable_packed_attention(llm) and enable_packed_attention(llm)
    assert llm.config._attn_implementation == PACKED_SDPA
    assert ALL_ATTENTION_FUNCTIONS[PACKED_SDPA] is packed_sdpa_attention
    assert PACKED_SDPA in ALL_MASK_ATTENTION_FUNCTIONS
    eager = tiny_llm("qwen2")
    eager.config._attn_implementation = "eager"
    assert not enable_packed_attention(eager)
    assert eager.config._attn_implementation == "eager"
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_llm("qwen2"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert enable_packed_attention(wrapped) and wrapped.get_base_model().config._attn_implementation == PACKED_SDPA
    no_switch = assemble_pite(tiny_llm("llama"), PiTeSettings(vision_dim=VISION, packed_attention=False))
    assert no_switch.llm.config._attn_implementation == "sdpa"
