"""LoRA on any Hugging Face causal LM, via peft.

PiTe follows VTimeLLM: r 64, alpha 128, dropout 0.05 on every linear layer of the LLM except its output
embedding (``lm_head``). The layers are found by type, so the same code serves LLaMA/Vicuna, Qwen2, Mistral...
Each stage merges the previous stage's LoRA into the weights (:func:`merge_lora`) and adds a fresh one.
"""

from __future__ import annotations

from torch import nn

from training.config import LoraSettings


def lora_target_modules(llm: nn.Module) -> list[str]:
    """Names of the layers to adapt: every ``nn.Linear`` in ``llm`` except ``llm.get_output_embeddings()``.

    Returns the short names (``["down_proj", "gate_proj", "k_proj", ...]``), which peft matches as name
    suffixes, unless a short name is shared with the output embedding; then the full module names.
    """
    output = llm.get_output_embeddings()
    linear, output_names = [], []
    for name, module in llm.named_modules():
        if module is output:
            output_names.append(name)
        elif isinstance(module, nn.Linear):
            linear.append(name)
    if not linear:
        raise ValueError(f"{type(llm).__name__} has no nn.Linear layers besides its output embedding to adapt")
    short = {name.rsplit(".", 1)[-1] for name in linear}
    if short & {name.rsplit(".", 1)[-1] for name in output_names}:
        return sorted(linear)
    return sorted(short)


def add_lora(llm: nn.Module, settings: LoraSettings):
    """Wrap ``llm`` (a plain HF causal LM) in a fresh peft LoRA; returns the ``PeftModel``.

    The new ``lora_B`` weights are zero, so the wrapped model computes exactly what ``llm`` did.
    """
    from peft import LoraConfig, get_peft_model

    if _is_peft(llm):
        raise ValueError("the LLM already carries a LoRA: merge it first (training.lora.merge_lora)")
    targets = list(settings.target_modules) or lora_target_modules(llm)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, config)


def merge_lora(llm: nn.Module) -> nn.Module:
    """Fold a peft model's LoRA into its base weights; returns the plain HF model (unchanged if not peft)."""
    if not _is_peft(llm):
        return llm
    return llm.merge_and_unload()


def _is_peft(llm: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(llm, PeftModel)
