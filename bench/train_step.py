"""One PiTe stage-2 training step: our formulation vs a naive reference, samples/s, tokens/s and peak memory.

    PYTHONPATH=. python bench/train_step.py                  # tiny + 100M configs on CPU (5-8 min on 2 cores)
    PYTHONPATH=. python bench/train_step.py --quick          # tiny config only, 1 timed step (smoke run)
    PYTHONPATH=. python bench/train_step.py --configs 100M --steps 3 --threads 2
    PYTHONPATH=. python bench/train_step.py --gpu-7b         # also a 7B-shape LoRA step on CUDA (tokens/s, MFU)

Workload: 8 stage-2 samples (100 video tokens + text, lengths uniform in 200..2048, fixed seed, vocab 32k,
10 noun-phrase tokens per sample with a (3, 100, 2) trajectory target, 20% of its points -1).
The step is stage 2's: LoRA (r 64, alpha 128, dropout 0 so both sides are deterministic) on every linear layer
of the LLM but lm_head, plus rho, trainable; forward + backward + torch AdamW, in both formulations.

- ours: ``PiTeModel.forward`` on first-fit-decreasing packed rows (attention_mask=None, restarting position
  ids), video tokens expanded in input_ids, flat traj_index/traj_target, fused chunked CE, rho only at targets.
- naive (``bench/train_step_naive.py``): per-sample splicing loop, padding to the longest sample with a 2-D
  mask, full (B, L, V) logits + ``F.cross_entropy``, dense (B, L, 3, 100, 2) targets, rho on all positions.

Each (config, formulation) runs in a fresh subprocess that builds the same seeded weights (a fingerprint of
them is compared) and the same samples; the first step's loss is compared (before any optimizer update).
Memory is measured over that first step with glibc mmapping every block above 64 KiB, time over the next
steps with glibc's default steady state (see ``worker``). The last line printed is one JSON object
(``speedup_vs_naive`` and ``peak_memory_ratio_vs_naive`` of the 100M config).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repository root

import torch  # noqa: E402

from bench.train_step_naive import (  # noqa: E402
    PAD_TOKEN_ID, Sample, Workload, collate_padded, make_samples, naive_loss,
)
from pite.model.losses import IGNORE_INDEX  # noqa: E402
from pite.model.packing import first_fit_decreasing, packed_position_ids  # noqa: E402

WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}
"""Blocks > 64 KiB mmapped (for the memory step, see ``worker``); idle OpenMP threads sleep instead of
spinning, so process CPU time measures work on a shared machine."""
DEFAULT_STEPS = {"tiny": 3, "100M": 2}


@dataclass
class ModelShape:
    """A LLaMA shape plus PiTe's parts around it."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 32000
    lora_r: int = 64
    vision_dim: int = 768
    dtype: str = "float32"


SHAPES = {
    "tiny": ModelShape(hidden=64, layers=2, heads=4, intermediate=176, lora_r=8, vision_dim=32),
    "100M": ModelShape(hidden=768, layers=12, heads=12, intermediate=2048, dtype="bfloat16"),
    "7B": ModelShape(hidden=4096, layers=32, heads=32, intermediate=11008, dtype="bfloat16"),
}


def collate_packed(samples: list[Sample], row_length: int, video_token_id: int) -> dict[str, torch.Tensor]:
    """Our collation: first-fit-decreasing rows, restarting positions, flat head targets (PiTeModel kwargs)."""
    rows = first_fit_decreasing([s.input_ids.numel() for s in samples], row_length)
    position_ids = packed_position_ids([[samples[i].input_ids.numel() for i in row] for row in rows])
    length = position_ids.shape[1]
    input_ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    videos, traj_index, traj_target = [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            s, n = samples[i], samples[i].input_ids.numel()
            input_ids[r, offset : offset + n] = s.input_ids
            labels[r, offset : offset + n] = s.labels
            videos.append(s.video)  # row-major order of appearance, as PiTeModel.embed expects
            traj_index.append(r * length + offset + s.traj_pos)
            traj_target.append(s.traj_target)
            offset += n
    return dict(input_ids=input_ids, labels=labels, position_ids=position_ids, video_features=torch.stack(videos),
                traj_index=torch.cat(traj_index), traj_target=torch.cat(traj_target))


def build_model(shape: ModelShape, device: str = "cpu", seed: int = 0):
    """Seeded random LLaMA + PiTe parts in ``shape.dtype``, LoRA added, stage-2 trainables set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pite.model import LossSettings, PiTeSettings, assemble_pite, set_trainable
    from training.config import LoraSettings
    from training.lora import add_lora

    dtype = getattr(torch, shape.dtype)
    config = LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, intermediate_size=shape.intermediate, vocab_size=shape.vocab,
        max_position_embeddings=4096, attn_implementation="sdpa", pad_token_id=PAD_TOKEN_ID,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in dtype: no float32 copy inflates the baseline
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(config)
            model = assemble_pite(llm, PiTeSettings(vision_dim=shape.vision_dim, loss=LossSettings.for_stage(2)))
            model.llm = add_lora(model.llm, LoraSettings(r=shape.lora_r, alpha=2.0 * shape.lora_r, dropout=0.0))
    finally:
        torch.set_default_dtype(previous)
    model.to(dtype)  # peft keeps adapters in float32; a bf16 run (like DeepSpeed bf16) has them in bf16
    set_trainable(model, 2)
    return model.train()


def fingerprint(model) -> float:
    """Sum of |w| over every parameter (float64): equal fingerprints = equal weights, in practice."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def make_step(model, formulation: str, batch, update: bool = True):
    """A closure running forward + backward (+ an AdamW step when ``update``);
    returns (loss, ce, l1, gradient norm) as floats."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0) if update else None

    def step():
        if formulation == "ours":
            out = model(**batch)
            loss, ce, l1 = out.loss, out.ce_loss, out.l1_loss
        else:
            loss, ce, l1 = naive_loss(model, batch)
        loss.backward()
        grads = [p.grad.float().norm() for p in params if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(grads)))
        if optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        return loss.item(), ce.item(), l1.item(), grad_norm

    return step


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def default_malloc_steady_state() -> None:
    """Undo ``MALLOC_MMAP_THRESHOLD_=65536`` for timing: glibc's default dynamic threshold settles, once blocks
    of 32 MiB and more have been freed (every training step), at its maximum, 32 MiB mmap / 64 MiB trim
    threshold on 64-bit; mallopt sets exactly that."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 64 * 2**20)  # M_TRIM_THRESHOLD


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (ru_maxrss) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """Run one (config, formulation) in this fresh process, started with ``MALLOC_MMAP_THRESHOLD_=65536``.

    1. build the seeded model and samples; warm up (forward + backward of 2 short samples, no update);
       fingerprint the weights.
    2. memory: the RSS is the baseline and the kernel's high-water mark is reset to it; collate the batch and
       run one step with a fresh AdamW: peak = ru_maxrss - baseline (batch, activations, logits, gradients,
       AdamW state and temporaries count; the model does not). Every block above 64 KiB is mmapped, so
       freed memory leaves the RSS at once and the high-water mark is the peak of live memory. This first
       step's loss (weights still equal on both sides) is the one compared.
    3. time: back to glibc's default steady state, ``steps`` more steps (wall and process CPU time).
    """
    torch.set_num_threads(spec["threads"])
    shape, work, form = ModelShape(**spec["shape"]), Workload(**spec["workload"]), spec["formulation"]
    model = build_model(shape, seed=work.seed)
    samples = make_samples(work, shape.vocab, shape.vision_dim, model.video_token_id)
    if form == "ours":
        collate = lambda items: collate_packed(items, work.max_len, model.video_token_id)  # noqa: E731
    else:
        collate = collate_padded
    warm = Workload(samples=2, min_len=160, max_len=256, seed=work.seed + 1)
    make_step(model, form, collate(make_samples(warm, shape.vocab, shape.vision_dim, model.video_token_id)),
              update=False)()
    fp = fingerprint(model)
    gc.collect()
    baseline = current_rss_mib()
    reset_ok = reset_peak_rss()
    first = make_step(model, form, collate(samples))()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    default_malloc_steady_state()
    batch = collate(samples)
    computed = (batch["input_ids"] if form == "ours" else batch.input_ids).numel()
    step = make_step(model, form, batch)
    wall, cpu = [], []
    for _ in range(spec["steps"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    real, step_s = sum(s.input_ids.numel() for s in samples), statistics.median(wall)
    return dict(
        step_s=step_s, times_s=wall, cpu_s=statistics.median(cpu), cpu_times_s=cpu,
        samples_per_s=len(samples) / step_s, tokens_per_s=real / step_s, real_tokens=real, computed_tokens=computed,
        peak_mib=peak - baseline, baseline_mib=baseline, peak_reset=reset_ok,
        loss=first[0], ce=first[1], l1=first[2], grad_norm=first[3], fingerprint=fp,
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def run_worker(name: str, formulation: str, args, work: Workload) -> dict:
    """``worker`` in a fresh Python process (its own ru_maxrss) with ``WORKER_ENV`` and the thread count."""
    shape = SHAPES[name] if args.dtype == "auto" else ModelShape(**{**asdict(SHAPES[name]), "dtype": args.dtype})
    spec = dict(shape=asdict(shape), workload=asdict(work), formulation=formulation,
                steps=args.steps or (1 if args.quick else DEFAULT_STEPS[name]), threads=args.threads)
    env = {**os.environ, **WORKER_ENV, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}/{formulation} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["dtype"], result["steps"] = shape.dtype, spec["steps"]
    return result


def compare(name: str, ours: dict, naive: dict) -> dict:
    """Ratios and the fairness checks of one config."""
    if ours["fingerprint"] != naive["fingerprint"]:
        raise RuntimeError(f"{name}: the two formulations did not start from the same weights")
    tol = 1e-4 if ours["dtype"] == "float32" else 2e-2  # relative; bf16 sums in a different order
    checks = {k: abs(ours[k] - naive[k]) / max(abs(naive[k]), 1e-12) for k in ("loss", "ce", "l1", "grad_norm")}
    return dict(
        speedup_vs_naive=naive["step_s"] / ours["step_s"],
        speedup_vs_naive_cpu_time=naive["cpu_s"] / ours["cpu_s"],
        peak_memory_ratio_vs_naive=ours["peak_mib"] / naive["peak_mib"],
        loss_abs_diff=abs(ours["loss"] - naive["loss"]), rel_diff=checks, tolerance=tol,
        same_loss=all(v <= tol for v in checks.values()),
    )


def print_table(results: dict) -> None:
    print(f"\n{'config':<6} {'form':<5} {'dtype':<8} {'step s':>7} {'cpu s':>7} {'samples/s':>9} {'tokens/s':>8} "
          f"{'computed':>8} {'peak MiB':>8} {'loss':>9}")
    for name, r in results.items():
        for form in ("ours", "naive"):
            m = r[form]
            print(f"{name:<6} {form:<5} {m['dtype']:<8} {m['step_s']:>7.2f} {m['cpu_s']:>7.2f} "
                  f"{m['samples_per_s']:>9.3f} {m['tokens_per_s']:>8.0f} {m['computed_tokens']:>8} "
                  f"{m['peak_mib']:>8.0f} {m['loss']:>9.5f}")
        c = r["compare"]
        print(f"{name:<6} ours vs naive: speedup {c['speedup_vs_naive']:.2f}x wall "
              f"({c['speedup_vs_naive_cpu_time']:.2f}x CPU time), peak memory {c['peak_memory_ratio_vs_naive']:.3f}x"
              f" | |loss diff| {c['loss_abs_diff']:.1e}, "
              "relative " + ", ".join(f"{k} {v:.1e}" for k, v in c["rel_diff"].items())
              + f": {'same' if c['same_loss'] else 'MISMATCH'} at {c['tolerance']:g}")


PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}
"""Dense bf16 peaks (no sparsity) by device-name substring, first match wins; others need --peak-tflops."""


def lora_step_flops(shape: ModelShape, samples: list[Sample], lora_params: int) -> float:
    """Model FLOPs of one LoRA step on ``samples`` (recomputation by gradient checkpointing not counted).

    Frozen base weights need no weight gradient: forward 2*N*T + input gradient 2*N*T for the decoder's
    linear layers (N weights, multi-head attention as in SHAPES, T real tokens); LoRA 6*N_lora*T; lm_head
    4*V*d per labelled token; causal attention 6*d*L^2 per layer and sample (forward 2*d*L^2, backward 2x).
    """
    d, layers = shape.hidden, shape.layers
    base = layers * (4 * d * d + 3 * d * shape.intermediate)
    tokens = sum(s.input_ids.numel() for s in samples)
    labelled = sum(int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples)
    attention = 6 * d * layers * sum(s.input_ids.numel() ** 2 for s in samples)
    return 4 * base * tokens + 6 * lora_params * tokens + 4 * shape.vocab * d * labelled + attention


def gpu_lora_step(shape: ModelShape, work: Workload, steps: int, grad_ckpt: bool, peak_tflops: float | None):
    """Our stage-2 step at ``shape`` (random weights, bf16, LoRA r 64) on CUDA: tokens/s, MFU, peak memory."""
    model = build_model(shape, device="cuda", seed=work.seed)
    if grad_ckpt:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    samples = make_samples(work, shape.vocab, shape.vision_dim, model.video_token_id)
    batch = {k: v.cuda() for k, v in collate_packed(samples, work.max_len, model.video_token_id).items()}
    step = make_step(model, "ours", batch)
    step()  # warm-up: kernels, allocator, AdamW state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()  # ends with .item(): synchronised
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    flops = lora_step_flops(shape, samples, lora)
    name = torch.cuda.get_device_name()
    peak = peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = dict(device=name, grad_ckpt=grad_ckpt, step_s=step_s, times_s=times,
                  tokens_per_s=sum(s.input_ids.numel() for s in samples) / step_s,
                  model_tflops_per_step=flops / 1e12, achieved_tflops=flops / step_s / 1e12, peak_tflops=peak,
                  mfu=flops / step_s / (peak * 1e12) if peak else None,
                  peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
                  params=sum(p.numel() for p in model.parameters()), lora_params=lora)
    mfu = "n/a (give --peak-tflops)" if peak is None else f"{result['mfu']:.1%} of {peak:g} TFLOP/s"
    print(f"\n7B-shape LoRA step on {name} (bf16, ours, gradient checkpointing {grad_ckpt}): "
          f"{result['tokens_per_s']:.0f} tokens/s, {step_s:.2f} s/step, {result['achieved_tflops']:.0f} model "
          f"TFLOP/s, MFU {mfu} (FLOPs: see lora_step_flops), peak {result['peak_memory_gib']:.1f} GiB")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, choices=["tiny", "100M"],
                        help="CPU configs to run (default: tiny 100M; --quick: tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"timed steps per formulation, median reported (default {DEFAULT_STEPS}; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config only, 1 timed step")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads / OMP_NUM_THREADS")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: float32 for tiny, bfloat16 for 100M and 7B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-7b", action="store_true", help="also time a 7B-shape LoRA step on CUDA")
    parser.add_argument("--gpu-steps", type=int, default=3)
    parser.add_argument("--no-grad-ckpt", action="store_true", help="7B: no gradient checkpointing")
    parser.add_argument("--peak-tflops", type=float, default=None, help="7B MFU: the GPU's dense bf16 peak")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    configs = args.configs or (["tiny"] if args.quick else ["tiny", "100M"])
    work = Workload(seed=args.seed)
    print(f"workload: {work}")
    print(f"threads: {args.threads} (torch.set_num_threads, OMP_NUM_THREADS; OMP_WAIT_POLICY=PASSIVE) per worker")
    print("step: stage 2 (LoRA, r 64 (tiny: 8), on all linear layers but lm_head, plus rho, trainable); forward "
          "+ backward + torch AdamW on both sides. time: median over the timed steps (after a 2-short-sample "
          "warm-up and the memory step), wall clock and process CPU time; samples/s, tokens/s (real tokens) "
          "from wall clock")
    print("peak memory: each formulation in a fresh subprocess started with MALLOC_MMAP_THRESHOLD_=65536 (freed "
          "blocks leave the RSS); peak = ru_maxrss over the first step minus the RSS just before it (high-water "
          "mark reset there via /proc/self/clear_refs): batch, activations, logits, grads, AdamW state and "
          "temporaries count, the model's weights do not. The timed steps follow with glibc's default steady "
          "state (mallopt: mmap threshold 32 MiB, trim 64 MiB); the loss compared is the first step's")
    results = {}
    for name in configs:
        results[name] = {}
        for form in ("ours", "naive"):
            start, load = time.perf_counter(), f"{os.getloadavg()[0]:.1f}"
            results[name][form] = run_worker(name, form, args, work)
            m = results[name][form]
            print(f"  {name}/{form}: {m['params']:,} parameters ({m['trainable']:,} trainable), {m['dtype']}, step "
                  f"wall {[round(t, 1) for t in m['times_s']]} s, CPU {[round(t, 1) for t in m['cpu_times_s']]} s, "
                  f"load average {load} -> {os.getloadavg()[0]:.1f}, peak reset "
                  f"{'ok' if m['peak_reset'] else 'UNAVAILABLE (ru_maxrss since start)'}, "
                  f"worker {time.perf_counter() - start:.0f} s", flush=True)
        results[name]["compare"] = compare(name, results[name]["ours"], results[name]["naive"])
    print_table(results)
    gpu = None
    if args.gpu_7b:
        if torch.cuda.is_available():
            gpu = gpu_lora_step(SHAPES["7B"], work, args.gpu_steps, not args.no_grad_ckpt, args.peak_tflops)
        else:
            print("\n--gpu-7b: skipped, torch.cuda.is_available() is False (run it on a GPU machine)")
    head = "100M" if "100M" in results else configs[-1]
    summary = {"config": head, **{k: results[head]["compare"][k] for k in
                                  ("speedup_vs_naive", "peak_memory_ratio_vs_naive", "speedup_vs_naive_cpu_time",
                                   "same_loss")},
               "ours": results[head]["ours"], "naive": results[head]["naive"],
               **{n: r for n, r in results.items() if n != head}, "gpu_7b": gpu}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main().get("same_loss", True) else 1)
