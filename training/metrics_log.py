"""Training metrics: one JSON line per logged step, TensorBoard, optional W&B, and a console line.

``metrics.jsonl`` (in the run's out_dir) is the record tests and scripts read (:func:`read_metrics`); each
line holds ``step``, ``epoch``, ``loss``, ``ce``, ``l1`` (when the stage has a head loss), ``lr``,
``grad_norm``, ``samples_per_s``, ``tokens_per_s`` and, on GPUs with a known peak, ``mfu``.
On resume, lines after the resumed step are dropped (and TensorBoard purges them), so the record reads like
one uninterrupted run. Only rank 0 writes.

MFU is the usual estimate ``6 * N_params * tokens/s / (peak FLOP/s x GPUs)``: 6 FLOPs per parameter and
token for the forward and backward passes (frozen LoRA bases skip their weight gradients, so this
over-counts the work done; it is the common yardstick all the same).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from training.config import LoggingSettings

METRICS_FILE = "metrics.jsonl"

# Dense bf16 tensor-core peaks (FLOP/s) by GPU name, most specific first (NVIDIA data sheets).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX A6000", 155e12),
)


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Peak dense FLOP/s of one GPU for ``precision`` ("bf16"), or None when unknown."""
    if precision != "bf16":
        return None
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


def model_flops_utilization(num_params: int, tokens_per_s: float, num_devices: int, peak: float | None):
    """``6 N tokens/s / (peak x devices)`` in [0, 1], or None without a peak."""
    if not peak or num_devices < 1:
        return None
    return 6.0 * num_params * tokens_per_s / (peak * num_devices)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a file or the run folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Writes metrics on rank 0 (``enabled``); on other ranks every call does nothing.

    Args:
        out_dir: the run folder.
        settings: the config's logging section.
        enabled: True on rank 0.
        resume_step: the step the run resumes after (0 for a fresh run, which clears an old record).
        run_config: the run's config as plain data (for W&B).
    """

    def __init__(self, out_dir: Path, settings: LoggingSettings, *, enabled: bool, resume_step: int = 0,
                 run_config: dict | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS_FILE
        self._tensorboard = self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if self.path.exists() else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept) if resume_step else "")
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(Path(out_dir) / "tensorboard"),
                                              purge_step=resume_step + 1 if resume_step else None)
        if settings.wandb:
            import wandb  # optional: imported only when asked for

            self._wandb = wandb.init(project=settings.wandb_project, name=settings.run_name or Path(out_dir).name,
                                     config=run_config, resume="allow")

    def log(self, step: int, metrics: dict, total_steps: int | None = None) -> None:
        """Record ``metrics`` (numbers, or None for absent ones) of optimizer step ``step``."""
        if not self.enabled:
            return
        record = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(f"train/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in numbers.items()}, step=step)
        print(_console_line(record, total_steps), flush=True)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _console_line(record: dict, total_steps: int | None) -> str:
    parts = [f"step {record['step']}" + (f"/{total_steps}" if total_steps else "")]
    for key, fmt in (("loss", "{:.4f}"), ("ce", "{:.4f}"), ("l1", "{:.4f}"), ("lr", "{:.2e}"),
                     ("grad_norm", "{:.3f}"), ("samples_per_s", "{:.1f}"), ("tokens_per_s", "{:.0f}")):
        value = record.get(key)
        if value is not None and math.isfinite(value):
            parts.append(f"{key} " + fmt.format(value))
    if record.get("mfu") is not None:
        parts.append(f"mfu {100 * record['mfu']:.1f}%")
    return " | ".join(parts)
