"""Typed configs: every kind of problem is reported, all at once, with a clear message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from pite.config import ConfigError, load_config, option


@dataclass
class Inner:
    size: int = option(256, "px", ge=16, le=1024)
    mode: Literal["fast", "slow"] = option("fast")


@dataclass
class Outer:
    name: str = option(doc="run name")
    data: str = option("", exists="file")
    folder: str = option("", exists="dir")
    rate: float = option(0.5, ge=0, le=1)
    tags: list[str] = option(["a"])
    maybe: int | None = option(None, ge=1)
    inner: Inner = option(default_factory=Inner)


def _load(tmp_path, text, **kw):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_config(p, Outer, **kw)


def _problems(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value.problems, str(info.value)


def test_valid_config_loads_with_defaults(tmp_path):
    cfg = _load(tmp_path, "name: x\ninner: {size: 64}\nmaybe: 3\n")
    assert cfg.name == "x" and cfg.inner.size == 64 and cfg.inner.mode == "fast"
    assert cfg.rate == 0.5 and cfg.tags == ["a"] and cfg.maybe == 3


def test_int_is_accepted_for_float(tmp_path):
    assert _load(tmp_path, "name: x\nrate: 1\n").rate == 1.0


def test_unknown_key_suggests_the_closest(tmp_path):
    problems, text = _problems(tmp_path, "name: x\ninner: {sise: 64}\n")
    assert problems == ["inner.sise: unknown key; did you mean 'size'?"]
    assert "c.yaml" in text


def test_unknown_key_without_close_match_lists_known_keys(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\nzzzzzz: 1\n")
    assert problems[0].startswith("zzzzzz: unknown key; known keys: name, data, folder")


def test_wrong_type(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\ninner: {size: eight}\n")
    assert problems == ["inner.size: expected int, got str 'eight'"]


def test_bool_is_not_an_int(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\ninner: {size: true}\n")
    assert problems == ["inner.size: expected int, got bool True"]


def test_out_of_range(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\nrate: 1.5\ninner: {size: 8}\n")
    assert "rate: must be <= 1, got 1.5" in problems
    assert "inner.size: must be >= 16, got 8" in problems


def test_choice_not_allowed(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\ninner: {mode: medium}\n")
    assert problems == ["inner.mode: must be one of 'fast', 'slow'; got 'medium'"]


def test_missing_file_and_dir(tmp_path):
    problems, _ = _problems(tmp_path, f"name: x\ndata: {tmp_path}/nope.jsonl\nfolder: {tmp_path}/nodir\n")
    assert problems == [f"data: file not found: {tmp_path}/nope.jsonl",
                        f"folder: directory not found: {tmp_path}/nodir"]


def test_missing_paths_can_be_skipped(tmp_path):
    cfg = _load(tmp_path, f"name: x\ndata: {tmp_path}/nope.jsonl\n", check_paths=False)
    assert cfg.data.endswith("nope.jsonl")


def test_required_key_missing(tmp_path):
    problems, _ = _problems(tmp_path, "rate: 0.1\n")
    assert problems == ["name: required key is missing (run name)"]


def test_list_item_type(tmp_path):
    problems, _ = _problems(tmp_path, "name: x\ntags: [a, 3]\n")
    assert problems == ["tags[1]: expected str, got int 3"]


def test_all_problems_reported_together(tmp_path):
    problems, text = _problems(tmp_path, "nam: x\nrate: -1\ninner: {size: big, mode: medium}\n")
    assert len(problems) == 5  # unknown key, missing name, range, type, choice
    assert "5 config problems" in text


def test_not_yaml_and_not_a_mapping(tmp_path):
    problems, _ = _problems(tmp_path, "name: [unclosed\n")
    assert problems[0].startswith("not valid YAML")
    problems, _ = _problems(tmp_path, "- a\n- b\n")
    assert problems == ["top level must be a mapping, got list"]


def test_config_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", Outer)


def test_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\n")
    cfg = load_config(p, Outer, overrides=["inner.size=32", "rate=0.25"])
    assert cfg.inner.size == 32 and cfg.rate == 0.25
    with pytest.raises(ConfigError, match="inner.size: must be >= 16"):
        load_config(p, Outer, overrides=["inner.size=2"])
