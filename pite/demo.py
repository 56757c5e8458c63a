"""`pite demo` / `make demo`: the whole system end to end on the tiny-model kit, on CPU.

1. ``pite doctor``;
2. annotate the demo manifest (real sample clips + a synthetic clip) into PiTe-143k-style shards;
3. CLIP features of the demo videos (stages 2, 3) and of stills from them (stage 1);
4. the three training stages on the tiny LLM, a few steps each, printing the losses;
5. inference on a few demo questions;
6. temporal grounding, dense captioning and VideoQA evaluation (the VideoQA judge is a local,
   rule-based stand-in server, not an LLM);
7. the static viewer site of the annotations.

Every stage writes under ``out`` (default ``outputs/demo``) and reuses what a previous run
finished, so a second ``make demo`` is quick. The numbers are those of random-weight tiny
models: they show that everything runs and connects, not model quality.
"""

from __future__ import annotations

import time
from pathlib import Path

CONFIGS = Path("configs")


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _check(code: int, what: str) -> None:
    if code:
        raise RuntimeError(f"demo stage failed: {what} (exit code {code})")


def _doctor() -> None:
    from pite.doctor import exit_code, print_report, run_doctor
    from pite.registry import shipped_configs

    checks = run_doctor(shipped_configs())
    print_report(checks)
    _check(exit_code(checks), "pite doctor")


def _annotate(out: Path) -> None:
    from pipeline.annotate import annotate, summary_lines
    from pipeline.config import PipelineConfig
    from pite.config import load_config

    cfg = load_config(CONFIGS / "pipeline/demo.yaml", PipelineConfig)
    stats = annotate(cfg, out=out / "annotate", progress=True)
    print("\n".join(summary_lines(stats)))


def _features(out: Path) -> None:
    from pite.features import run_features

    _check(run_features(CONFIGS / "features/demo.yaml", [f"output.dir={out / 'features'}"]), "video features")
    _check(run_features(CONFIGS / "features/demo_images.yaml", [f"output.dir={out / 'image_features'}"]),
           "image features")


def _train(out: Path) -> None:
    import subprocess
    import sys

    data = {1: ["data.json=data/demo/localized_narratives.jsonl", f"data.features={out / 'image_features'}"],
            2: [f"data.shards={out / 'annotate' / 'shards'}", f"data.features={out / 'features'}"],
            3: ["data.json=data/demo/instructions.json", f"data.features={out / 'features'}"]}
    for stage in (1, 2, 3):
        stage_out = out / "train" / f"stage{stage}"
        overrides = [f"out_dir={stage_out}", "data.synthetic_samples=0", *data[stage]]
        if stage > 1:
            overrides.append(f"init_from={out / 'train' / f'stage{stage - 1}'}")
        print(f"--- stage {stage}", flush=True)
        # one process per stage, as on a cluster: DeepSpeed keeps process-group state per process
        cmd = [sys.executable, "-m", "training.train", "--config", str(CONFIGS / f"train/demo/stage{stage}.yaml")]
        for item in overrides:
            cmd += ["--set", item]
        _check(subprocess.run(cmd).returncode, f"training stage {stage}")  # it prints the losses per step


def _infer_and_evaluate(out: Path) -> None:
    import json

    from pite.cli import main as pite_main
    from pite.eval.run import run_eval
    from pite.infer import make_eval_predictor

    checkpoint, features = out / "train" / "stage3", out / "features"
    answers = out / "answers.jsonl"
    _check(pite_main(["infer", "--checkpoint", str(checkpoint), "--features", str(features), "--input",
                      "data/demo/questions.jsonl", "--output", str(answers), "--max-new-tokens", "24",
                      "--show-trajectories"]), "pite infer")
    for row in map(json.loads, answers.read_text().splitlines()):
        print(f"{row['video']}: {row['question']} -> {row['answer']!r} ({len(row.get('phrases', []))} phrases "
              "with trajectories)")
    for name in ("demo_grounding", "demo_densecap", "demo_videoqa"):
        print(f"--- {name}", flush=True)
        _check(run_eval(CONFIGS / f"eval/{name}.yaml",
                        [f"out_dir={out / 'eval' / name}", f"checkpoint={checkpoint}", f"features={features}"],
                        make_predictor=make_eval_predictor), name)


def _view(out: Path) -> None:
    from pite.viewer.site import SiteSettings, build_site

    summary = build_site(out / "annotate", out / "viewer", SiteSettings(video_root="data/demo/videos"))
    print(f"viewer: open {out / 'viewer' / 'index.html'} ({summary})")


def run_demo(out: Path) -> int:
    """Run every demo stage into ``out``; returns a process exit code."""
    from pipeline.demo_data import prepare_demo_images, prepare_demo_videos

    out = Path(out)
    stages = [("1. pite doctor", _doctor),
              ("2. annotate the demo clips (tiny models, CPU)", _annotate),
              ("3. CLIP features (tiny CLIP)", _features),
              ("4. train stages 1-3 (tiny LLM, a few steps each)", _train),
              ("5-6. inference and evaluation", _infer_and_evaluate),
              ("7. viewer", _view)]
    prepare_demo_videos()
    prepare_demo_images()
    for title, stage in stages:
        _banner(title)
        started = time.perf_counter()
        stage(out) if stage is not _doctor else stage()
        print(f"({time.perf_counter() - started:.1f} s)", flush=True)
    print(f"\nDemo finished. Outputs in {out}/")
    return 0
