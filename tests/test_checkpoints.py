"""pite.checkpoints: our stage folders and exports, official PiTe and VTimeLLM release folders, built by hand
from a tiny LLaMA, load back to the logits of the model they were built from."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from pite.checkpoints import CheckpointInfo, load_pite_checkpoint, load_weights, map_name
from pite.cli import UserError

VISION_DIM = 16
FRAMES = 6
LLM_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OFFICIAL_NAMES = {"adapter": "vision_adapter", "loc_head": "localization_projector",
                  "traj_head": "trajectory_projector"}


@pytest.fixture(scope="module")
def llm_path(kit_root):
    from pite import tinykit

    return tinykit.build("llm", root=kit_root)


def _fresh(llm_path):
    from pite.model import PiTeSettings, assemble_pite
    from pite.models import load_causal_lm

    llm, tokenizer = load_causal_lm(str(llm_path), dtype=torch.float32)
    return assemble_pite(llm, PiTeSettings(vision_dim=VISION_DIM)), tokenizer


@torch.no_grad()
def _randomize(module: torch.nn.Module, only_lora: bool = False) -> None:
    for name, param in module.named_parameters():
        if not only_lora or "lora_" in name:
            param.normal_(0.0, 0.05)


@torch.no_grad()
def outputs(model) -> dict[str, torch.Tensor]:
    """Logits and both heads' outputs on a fixed prompt with one video of FRAMES frames."""
    gen = torch.Generator().manual_seed(7)
    text = torch.randint(3, 200, (1, 9), generator=gen)
    ids = torch.cat([text[:, :3], torch.full((1, FRAMES), model.video_token_id), text[:, 3:]], dim=1)
    video = torch.randn(1, FRAMES, VISION_DIM, generator=gen)
    hidden, _ = model.hidden_states(ids, video_features=video)
    return {"logits": model.llm.get_output_embeddings()(hidden), "loc": model.loc_head(hidden),
            "traj": model.traj_head(hidden)}


def assert_same(a: dict, b: dict, keys=("logits", "loc", "traj")) -> None:
    for key in keys:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=f"{key} differ")


# ----------------------------------------------------------------------------- official releases


def _host(llm, model, names: dict[str, str]) -> None:
    for ours, theirs in names.items():
        llm.model.add_module(theirs, getattr(model, ours))


def _unhost(llm, names: dict[str, str]) -> None:
    for theirs in names.values():
        del llm.model._modules[theirs]


def build_official_pite(root, llm_path):
    """A PiTe release as the official trainer writes it: three LoRA stages over every linear layer (the adapter
    and heads included), non_lora_trainables.bin per stage, vision_adapter.bin in stage 1. Returns the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = _fresh(llm_path)
    llm = model.llm
    _host(llm, model, OFFICIAL_NAMES)
    trained = {1: ("vision_adapter", "localization_projector"), 2: ("trajectory_projector",), 3: ()}
    for stage in (1, 2, 3):
        folder = root / f"pite-vicuna-7b-v1.5-stage{stage}"
        for name in trained[stage]:  # what the stage trained besides LoRA
            _randomize(llm.model.get_submodule(name))
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                            target_modules=LLM_LINEARS + list(OFFICIAL_NAMES.values()))
        peft_model = get_peft_model(llm, config)
        _randomize(peft_model, only_lora=True)
        peft_model.save_pretrained(str(folder), safe_serialization=False)
        # stage 2 spells the LoRA-wrapped layer as newer peft does ("base_layer"), stage 1 as older peft
        infix = ".base_layer" if stage == 2 else ""
        non_lora = {f"base_model.model.model.{name}{infix}.{p}": getattr(llm.model.get_submodule(name), p).clone()
                    for name in trained[stage] for p in ("weight", "bias")}
        torch.save(non_lora, folder / "non_lora_trainables.bin")
        if stage == 1:
            torch.save({f"model.vision_adapter.{p}": getattr(model.adapter, p).clone() for p in ("weight", "bias")},
                       folder / "vision_adapter.bin")
        llm = peft_model.merge_and_unload()
    _unhost(llm, OFFICIAL_NAMES)
    model.llm = llm
    return model.eval()


def build_vtimellm(root, llm_path, extra_projector_entries: dict | None = None):
    """A VTimeLLM release: stage-1 mm_projector.bin, stage-2 and stage-3 LoRA folders over the LLM."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model, _ = _fresh(llm_path)
    stage1 = root / "vtimellm-vicuna-v1-5-7b-stage1"
    stage1.mkdir(parents=True)
    _randomize(model.adapter)
    projector = {f"model.mm_projector.{p}": getattr(model.adapter, p).clone() for p in ("weight", "bias")}
    torch.save({**projector, **(extra_projector_entries or {})}, stage1 / "mm_projector.bin")
    llm = model.llm
    for stage in (2, 3):
        folder = root / f"vtimellm-vicuna-v1-5-7b-stage{stage}"
        peft_model = get_peft_model(llm, LoraConfig(r=4, lora_alpha=8, target_modules=LLM_LINEARS,
                                                    task_type="CAUSAL_LM"))
        _randomize(peft_model, only_lora=True)
        peft_model.save_pretrained(str(folder), safe_serialization=stage == 3)
        if stage == 2:
            torch.save({}, folder / "non_lora_trainables.bin")
        llm = peft_model.merge_and_unload()
    model.llm = llm
    return model.eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory, llm_path):
    root = tmp_path_factory.mktemp("official-pite")
    return root, outputs(build_official_pite(root, llm_path))


@pytest.fixture(scope="module")
def vtimellm(tmp_path_factory, llm_path):
    root = tmp_path_factory.mktemp("vtimellm")
    return root, outputs(build_vtimellm(root, llm_path))


def test_official_pite_release_loads_to_the_same_logits_and_heads(official):
    root, expected = official
    model, tokenizer, info = load_pite_checkpoint(root)
    assert info.layout == "official-pite"
    assert [p.rsplit("-", 1)[-1] for p in info.merged] == ["stage1", "stage2", "stage3"]
    assert info.trained_heads == ["loc_head", "traj_head"]
    assert info.files[0].endswith("vision_adapter.bin")
    assert tokenizer is not None and not model.training
    assert_same(outputs(model), expected)


def test_the_base_llm_comes_from_adapter_config_or_from_base(official, llm_path, tmp_path):
    root, expected = official
    copy = tmp_path / "release"
    shutil.copytree(root, copy)
    for config_file in copy.glob("*/adapter_config.json"):
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = str(tmp_path / "somewhere-else" / "vicuna-7b-v1.5")
        config_file.write_text(json.dumps(config))
    with pytest.raises(UserError, match="--base"):
        load_pite_checkpoint(copy)
    model, _, info = load_pite_checkpoint(copy, base=str(llm_path))
    assert info.base == str(llm_path)
    assert_same(outputs(model), expected)


def test_vtimellm_release_loads_to_the_same_logits(vtimellm):
    root, expected = vtimellm
    model, _, info = load_pite_checkpoint(root)
    assert info.layout == "vtimellm"
    assert [p.rsplit("-", 1)[-1] for p in info.merged] == ["stage2", "stage3"]
    assert info.trained_heads == [] and any("untrained" in note for note in info.notes)
    assert_same(outputs(model), expected, keys=("logits",))


def test_pickled_objects_need_trust_pickle(tmp_path, llm_path):
    root = tmp_path / "release"
    expected = outputs(build_vtimellm(root, llm_path, {"args": argparse.Namespace(lr=1e-4)}))
    with pytest.raises(UserError, match="--trust-pickle"):
        load_pite_checkpoint(root)
    model, _, _ = load_pite_checkpoint(root, trust_pickle=True)
    assert_same(outputs(model), expected, keys=("logits",))


def test_unmapped_keys_are_listed_and_strict_false_skips_them(official, tmp_path):
    root, expected = official
    copy = tmp_path / "release"
    shutil.copytree(root, copy)
    file = copy / "pite-vicuna-7b-v1.5-stage3" / "non_lora_trainables.bin"
    torch.save({"base_model.model.model.region_decoder.weight": torch.zeros(2, 2)}, file)
    with pytest.raises(UserError, match="region_decoder"):
        load_pite_checkpoint(copy)
    model, _, info = load_pite_checkpoint(copy, strict=False)
    assert any("region_decoder" in note for note in info.notes)
    assert_same(outputs(model), expected)


@pytest.mark.parametrize("key, ours", [
    ("base_model.model.model.vision_adapter.weight", "adapter.weight"),
    ("model.mm_projector.bias", "adapter.bias"),
    ("base_model.model.model.localization_projector.base_layer.weight", "loc_head.weight"),
    ("model.localization_head.bias", "loc_head.bias"),
    ("base_model.model.model.traj_head.weight", "traj_head.weight"),
    ("trajectory_head.bias", "traj_head.bias"),
    ("model.layers.0.self_attn.q_proj.weight", None),
    ("model.vision_adapter.lora_A.default.weight", None),
    ("model.my_vision_adapter.weight", None),
])
def test_name_mapping_accepts_the_usual_variants(key, ours):
    assert map_name(key) == ours


def test_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pite_checkpoint(tmp_path / "missing")
    with pytest.raises(UserError, match="not a checkpoint"):
        load_pite_checkpoint(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a", "b"):
        (tmp_path / name / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="stage"):
        load_pite_checkpoint(tmp_path)


def test_load_weights_drops_non_tensors_only_when_trusted(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"w": torch.ones(2), "step": 3, "args": argparse.Namespace(a=1)}, path)
    with pytest.raises(UserError, match="trust-pickle"):
        load_weights(path)
    assert list(load_weights(path, trust_pickle=True)) == ["w"]


# ----------------------------------------------------------------------------- ours


def build_our_stages(root, llm_path):
    """Two stage folders written by the trainer's own code (stage 2 init_from stage 1). Returns the model."""
    from training.config import LoraSettings
    from training.lora import add_lora, merge_lora
    from training.stage_weights import save_stage_weights, stage_meta

    torch.manual_seed(2)
    model, _ = _fresh(llm_path)
    settings = {"vision_dim": VISION_DIM, "num_trajectories": 3, "num_frames": 100, "video_token": "<video>",
                "video_token_id": model.video_token_id}
    previous = ""
    for stage in (1, 2):
        model.llm = add_lora(model.llm, LoraSettings(r=4, alpha=8.0, dropout=0.0))
        _randomize(model.llm, only_lora=True)
        _randomize(model.adapter if stage == 1 else model.traj_head)
        if stage == 1:
            _randomize(model.loc_head)
        folder = root / f"stage{stage}"
        meta = stage_meta(stage=stage, llm=str(llm_path), model_settings=settings, lora={"r": 4},
                          init_from=previous, step=3)
        save_stage_weights(model, folder, meta)
        model.llm = merge_lora(model.llm)
        previous = str(folder)
    return model.eval()


@pytest.fixture(scope="module")
def ours(tmp_path_factory, llm_path):
    root = tmp_path_factory.mktemp("ours")
    return root, outputs(build_our_stages(root, llm_path))


def test_our_stage_folder_loads_its_lora_chain(ours):
    root, expected = ours
    model, _, info = load_pite_checkpoint(root / "stage2")
    assert isinstance(info, CheckpointInfo) and info.layout == "pite-stage"
    assert [p.rsplit("/", 1)[-1] for p in info.merged] == ["stage1", "stage2"]
    assert info.trained_heads == ["loc_head", "traj_head"]
    assert_same(outputs(model), expected)


def test_our_merged_export_loads_to_the_same_outputs(ours, tmp_path):
    from training.export import export_merged

    root, expected = ours
    out = export_merged(root / "stage2", tmp_path / "export", dtype="fp32")
    model, _, info = load_pite_checkpoint(out)
    assert info.layout == "pite-export" and info.base is None
    assert_same(outputs(model), expected)


def test_a_training_run_without_final_weights_loads_its_newest_checkpoint(ours, tmp_path):
    root, expected = ours
    run = tmp_path / "run"
    for step in (2, 3):
        shutil.copytree(root / "stage2", run / "checkpoints" / f"step-{step:08d}")
    model, _, info = load_pite_checkpoint(run)
    assert info.path.endswith("step-00000003") and "newest checkpoint" in info.notes[-1]
    assert_same(outputs(model), expected)
