"""The one place that loads pretrained models, real and tiny alike.

Every loader takes a *reference*:

- a local path (a ``save_pretrained`` folder, or a SAM ``.pth`` file);
- a Hugging Face repo id such as ``lmsys/vicuna-7b-v1.5``, read from the HF cache (with
  ``HF_HUB_OFFLINE=1`` nothing is downloaded: ``local_files_only=True``);
- ``tinykit://<name>``, the offline kit's tiny model, built on first use (:mod:`pite.tinykit`).

:func:`locate` answers "is this model on disk, and if not, how do I get it?" without touching the
network; ``pite doctor`` calls it for every model a config names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pite import tinykit

KINDS = ("llm", "clip", "gdino", "sam", "parser")

_KIND_HINTS = {
    "llm": (
        "The paper's LLM is Vicuna v1.5 (7B or 13B). Download it once, e.g. "
        "`hf download lmsys/vicuna-7b-v1.5 --local-dir models/vicuna-7b-v1.5` "
        "(older hubs: `huggingface-cli download ...`), then point the config at that folder "
        "or keep the repo id, which is then read from the Hugging Face cache."
    ),
    "clip": (
        "The vision tower is CLIP ViT-L/14 at 224 px: "
        "`hf download openai/clip-vit-large-patch14 --local-dir models/clip-vit-large-patch14`, "
        "then point the config at that folder (or keep the repo id)."
    ),
    "gdino": (
        "The default grounder is GroundingDINO: "
        "`hf download IDEA-Research/grounding-dino-tiny --local-dir models/grounding-dino-tiny` "
        "(or grounding-dino-base), then point the config at that folder (or keep the repo id)."
    ),
    "sam": (
        "SAM checkpoints come from the segment-anything release (README, 'Model Checkpoints'): "
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth (vit_h; also "
        "sam_vit_l_0b3195.pth, sam_vit_b_01ec64.pth). Point the config at the .pth file and set "
        "model_type to match (vit_h / vit_l / vit_b)."
    ),
    "parser": (
        "SuPar downloads pretrained parsers such as `crf-con-en` from GitHub into ~/.cache/supar "
        "on first use. Offline, copy the parser file there (or anywhere, and point the config at "
        "it), or train one with SuPar's `crf-con train` and point the config at the saved file."
    ),
}


def describe_kind(kind: str) -> str:
    """How to obtain the real weights for a model ``kind`` (one of :data:`KINDS`)."""
    if kind not in _KIND_HINTS:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    return _KIND_HINTS[kind]


# ----------------------------------------------------------------------------- references


@dataclass(frozen=True)
class LocateResult:
    """Where a model reference points on this machine.

    found: the weights are on disk now.
    where: the local folder/file that would be loaded (``None`` when unknown).
    hint: what to do when ``found`` is false (empty otherwise).
    source: how the reference was read: ``"path"``, ``"hf"``, ``"tinykit"`` or ``"supar"``.
    """

    found: bool
    where: str | None
    hint: str
    source: str = "path"


class ModelNotFoundError(FileNotFoundError):
    """A model reference that cannot be loaded here; the message says how to get the weights."""


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads, read now."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_repo_id(ref: str) -> bool:
    """``owner/name`` that is not an existing local path and does not look like one."""
    return bool(_REPO_ID.match(ref)) and not Path(ref).exists() and not ref.endswith((".pth", ".pt"))


def locate(ref: str, kind: str | None = None) -> LocateResult:
    """Where ``ref`` is on disk, with a hint when it is missing. Never touches the network.

    ``kind`` (one of :data:`KINDS`) selects the hint and lets parser names such as ``crf-con-en``
    be looked up in SuPar's cache.
    """
    how = describe_kind(kind) if kind else "Point the config at a local copy of the weights."
    if tinykit.is_ref(ref):
        name = ref[len(tinykit.SCHEME):].partition("/")[0]
        if name not in tinykit.names():
            return LocateResult(False, None, f"unknown tiny-kit model {name!r}; known: "
                                f"{', '.join(tinykit.names())}", "tinykit")
        try:
            where = str(tinykit.kit_dir(name))
        except OSError as err:  # the builder's sources are missing from this install
            return LocateResult(False, None, f"the tiny-kit builder for {name!r} is missing: {err}", "tinykit")
        if tinykit.is_built(name):
            return LocateResult(True, where, "", "tinykit")
        return LocateResult(False, where, "A tiny offline model: it is built on demand on first "
                            "use (seconds, no download).", "tinykit")
    path = Path(ref).expanduser()
    if path.exists():
        return LocateResult(True, str(path), "", "path")
    if kind == "parser" and "/" not in ref and path.suffix == "":
        return _locate_supar(ref, how)
    if kind != "sam" and is_repo_id(ref):
        where = _hf_cached_snapshot(ref)
        if where is not None:
            return LocateResult(True, where, "", "hf")
        return LocateResult(False, None, f"{ref!r} is neither a local folder nor in the Hugging Face "
                            f"cache ({_hf_cache_dir()}). {how}", "hf")
    return LocateResult(False, str(path), f"{ref!r} does not exist. {how}", "path")


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_cached_snapshot(repo_id: str) -> str | None:
    """The cached snapshot folder holding ``config.json`` of ``repo_id``, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # HFValidationError: not a valid repo id after all
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def _locate_supar(name: str, how: str) -> LocateResult:
    """SuPar caches ``<NAME[name]>.zip`` and the extracted parser file under ``~/.cache/supar``."""
    cache = Path("~/.cache/supar").expanduser()
    try:
        import supar
    except ImportError:
        return LocateResult(False, None, "SuPar is not installed: pip install 'pite[pipeline]'.", "supar")
    stem = supar.NAME.get(name)
    if stem is None:
        return LocateResult(False, None, f"{name!r} is neither a file nor a SuPar pretrained name "
                            f"(known: {', '.join(sorted(supar.NAME))}). {how}", "supar")
    for candidate in (cache / stem, cache / f"{stem}.zip"):
        if candidate.exists():
            return LocateResult(True, str(candidate), "", "supar")
    return LocateResult(False, str(cache / stem), f"SuPar parser {name!r} is not in {cache}. {how}", "supar")


def resolve(ref: str, kind: str | None = None) -> str:
    """``ref`` as something ``from_pretrained`` / ``torch.load`` can open: tiny-kit refs are built,
    ``~`` is expanded; a missing local path raises :class:`ModelNotFoundError` with a hint."""
    if tinykit.is_ref(ref):
        return tinykit.resolve(ref)
    path = Path(ref).expanduser()
    if path.exists() or (kind != "sam" and is_repo_id(ref)):
        return str(path) if path.exists() else ref
    raise ModelNotFoundError(locate(ref, kind).hint)


def _pretrained(kind: str, ref: str, load, **kwargs):
    """Call ``load(path, **kwargs)`` (a ``from_pretrained``), offline when HF_HUB_OFFLINE is set,
    turning "not found" into a :class:`ModelNotFoundError` that says how to get the weights."""
    path = resolve(ref, kind)
    if hf_offline():
        kwargs["local_files_only"] = True
    try:
        return load(path, **kwargs)
    except OSError as err:
        raise ModelNotFoundError(f"cannot load {kind} model {ref!r}: {err}\n{describe_kind(kind)}") from err


# ----------------------------------------------------------------------------- loaders


def load_causal_lm(ref: str, dtype=None):
    """``(model, tokenizer)`` of a causal LM (Vicuna, or ``tinykit://llm``), model in eval mode.

    dtype: a ``torch.dtype`` (e.g. ``torch.bfloat16``) or None for the checkpoint's own dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype if dtype is not None else "auto"}
    model = _pretrained("llm", ref, AutoModelForCausalLM.from_pretrained, **kwargs).eval()
    tokenizer = _pretrained("llm", ref, AutoTokenizer.from_pretrained)
    return model, tokenizer


def load_clip_vision(ref: str):
    """``(CLIPVisionModelWithProjection, CLIPImageProcessor)``; the model maps
    ``pixel_values`` (B, 3, S, S) to ``image_embeds`` (B, projection_dim)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    model = _pretrained("clip", ref, CLIPVisionModelWithProjection.from_pretrained).eval()
    processor = _pretrained("clip", ref, CLIPImageProcessor.from_pretrained)
    return model, processor


def load_grounding_dino(ref: str):
    """``(GroundingDinoForObjectDetection, GroundingDinoProcessor)`` via the zero-shot auto classes."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model = _pretrained("gdino", ref, AutoModelForZeroShotObjectDetection.from_pretrained).eval()
    processor = _pretrained("gdino", ref, AutoProcessor.from_pretrained)
    return model, processor


# ----------------------------------------------------------------------------- SAM


@dataclass(frozen=True)
class SamArch:
    """Dimensions of a segment-anything model; the defaults are SAM's fixed ones (ViT-H/L/B differ
    only in the image encoder). Saved as ``sam_config.json`` next to a tiny ``sam.pth``."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SamArch:
        fields = json.loads(text)
        fields["encoder_global_attn_indexes"] = tuple(fields["encoder_global_attn_indexes"])
        return cls(**fields)


# The release checkpoints' architectures (segment_anything.build_sam.sam_model_registry).
SAM_ARCHS = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
}
SAM_ARCHS["default"] = SAM_ARCHS["vit_h"]

SAM_WEIGHTS, SAM_CONFIG = "sam.pth", "sam_config.json"


def build_sam(arch: SamArch):
    """A randomly initialised ``segment_anything.Sam`` in eval mode, wired as in segment-anything's
    ``build_sam.py`` (for the presets in :data:`SAM_ARCHS` the modules are the registry's)."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(ref: str, model_type: str = "vit_h"):
    """A ``segment_anything.Sam`` in eval mode on CPU (move it with ``.to(device)``).

    ref: a release checkpoint such as ``sam_vit_h_4b8939.pth`` (architecture from ``model_type``),
    or a folder with ``sam.pth`` + ``sam_config.json`` (the tiny kit's; ``model_type`` is ignored).
    Weights are read with ``torch.load(weights_only=True)``: a plain state dict, no pickled code.
    """
    import torch

    path = Path(resolve(ref, "sam"))
    if path.is_dir():
        if not (path / SAM_CONFIG).exists():
            raise ModelNotFoundError(
                f"{path} has no {SAM_CONFIG}; pass the .pth file itself. {describe_kind('sam')}"
            )
        arch, weights = SamArch.from_json((path / SAM_CONFIG).read_text()), path / SAM_WEIGHTS
    else:
        if model_type not in SAM_ARCHS:
            raise ValueError(f"unknown SAM model_type {model_type!r}; known: {', '.join(SAM_ARCHS)}")
        arch, weights = SAM_ARCHS[model_type], path
    state = torch.load(weights, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # check the shapes before paying for a real-size random init
        expected = {k: tuple(v.shape) for k, v in build_sam(arch).state_dict().items()}
    if expected != {k: tuple(v.shape) for k, v in state.items()}:
        wanted = "the architecture in sam_config.json" if path.is_dir() else f"model_type={model_type!r}"
        raise ValueError(f"{weights} does not fit {wanted}: {_sam_arch_guess(state)}")
    sam = build_sam(arch)
    sam.load_state_dict(state)
    return sam


def _sam_arch_guess(state: dict) -> str:
    """A human hint on which ``model_type`` a state dict is, from its patch-embedding width."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None:
        return "it is not a segment-anything state dict (no image_encoder.patch_embed)."
    width = int(weight.shape[0])
    sizes = {name: arch.encoder_embed_dim for name, arch in SAM_ARCHS.items() if name != "default"}
    match = [name for name, dim in sizes.items() if dim == width]
    if match:
        return f"its image encoder is {width} wide, which is model_type={match[0]!r}."
    known = ", ".join(f"{name} {dim}" for name, dim in sizes.items())
    return f"its image encoder is {width} wide; the release models are {known}."
