"""The README's promises hold: Quickstart commands, config paths, results table, reproduce steps."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _expand_braces(text: str) -> list[str]:
    """`a/{b,c}.json` -> [`a/b.json`, `a/c.json`] (one or more brace groups)."""
    parts = re.split(r"\{([^{}]*)\}", text)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _readme_paths() -> set[str]:
    """Every `data/...` path the README names, brace groups expanded."""
    paths: set[str] = set()
    for name in re.findall(r"data/[\w/{},.-]+", README):
        paths.update(_expand_braces(name))
    return paths


def _results_rows() -> dict[str, list[str]]:
    """The Results table as {model: [metric cells]}."""
    section = README.split("### Results", 1)[1]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "model" or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = cells[1:]
    return rows


def test_quickstart_has_the_two_commands_and_ci_runs_the_test_one():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


def test_every_config_the_readme_names_exists():
    # Lines quoting an error message name a user's (imaginary) config, not a shipped one.
    text = "\n".join(line for line in README.splitlines() if not line.startswith("error:"))
    named = set(re.findall(r"configs/[\w/{},.-]+\.yaml", text))
    assert named, "the README names no configs"
    missing = [p for name in named for p in _expand_braces(name) if not (ROOT / p).is_file()]
    assert not missing, f"README names configs that do not exist: {missing}"


def test_results_table_has_paper_rows_and_an_empty_user_column():
    rows = _results_rows()
    paper_rows = [m for m in rows if "(paper)" in m]
    assert {m.split(" (paper)")[0] for m in paper_rows} >= {"PiTe-7B", "PiTe-13B", "VTimeLLM-7B"}
    for model in paper_rows:
        assert len(rows[model]) == 5, model
        assert all(cell for cell in rows[model]), f"{model} has an empty cell"
        numbers = re.findall(r"\d+\.\d", " ".join(rows[model]))
        assert numbers, f"{model} has no published numbers"
    assert rows["your run"] == [""] * 5


def test_reproduce_steps_cover_every_benchmark_config_and_its_files():
    """Each shipped benchmark config is named in step 3, and its data files in step 1."""
    steps = README.split("To reproduce a column from the public data:", 1)[1]
    paths = _readme_paths()
    benchmark_configs = sorted(p for p in (ROOT / "configs" / "eval").glob("*.yaml") if not p.name.startswith("demo_"))
    assert len(benchmark_configs) >= 6
    for config in benchmark_configs:
        assert config.name in steps, f"{config.name} is not in the README's reproduce steps"
        dataset = yaml.safe_load(config.read_text())["dataset"]
        files = list(dataset["annotations"]) + ([dataset["durations"]] if dataset.get("durations") else [])
        for file in files:
            assert file in paths, f"{config.name} reads {file}, which the README's step 1 does not mention"
