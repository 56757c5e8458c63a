"""The `pite` command: help lists working commands, doctor reports offline, bad configs exit 2."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pite.cli import build_parser, main
from pite.doctor import exit_code, run_doctor


def test_help_lists_only_registered_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    subactions = [a for a in build_parser()._actions if a.dest == "command"][0]
    for name in subactions.choices:
        assert name in out
    assert "doctor" in out and "annotate" in out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: pite" in capsys.readouterr().out


def test_bad_config_exits_2_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("manifest:\n  path: /nope/manifest.jsonl\n  video_root: /nope\ndecode:\n  short_sid: 10\n")
    proc = subprocess.run([sys.executable, "-m", "pite.cli", "annotate", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "decode.short_sid: unknown key; did you mean 'short_side'?" in proc.stderr
    assert "manifest.path: file not found: /nope/manifest.jsonl" in proc.stderr
    assert "manifest.video_root: directory not found: /nope" in proc.stderr


def test_doctor_reports_everything_offline_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PITE_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "configs" / "pipeline" / "x.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("manifest: {path: m.jsonl, video_root: v}\n"
                   "nounphrases: {parser: tinykit://parser}\n"
                   "grounding: {detector: some-org/some-detector, sam_checkpoint: /no/sam.pth}\n")
    started = time.perf_counter()
    checks = run_doctor([cfg])
    assert time.perf_counter() - started < 30
    by_name = {c.name: c for c in checks}
    assert by_name["python"].ok
    assert by_name["torch"].ok and by_name["transformers"].ok
    assert "gpu" in by_name and "java" in by_name
    models = [c for c in checks if c.section == "models"]
    detector = next(c for c in models if "grounding.detector" in c.name)
    assert not detector.ok and "some-org/some-detector" in detector.detail and detector.hint
    sam = next(c for c in models if "sam_checkpoint" in c.name)
    assert not sam.ok and "segment-anything" in sam.hint
    parser = next(c for c in models if "nounphrases.parser" in c.name)
    assert parser.ok and "tiny kit" in parser.detail
    assert exit_code(checks) == 0  # missing weights only warn


def test_doctor_command_exits_0(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "pite doctor" in out and "torch" in out
