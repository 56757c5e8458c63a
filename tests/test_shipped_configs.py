"""Every YAML shipped under configs/ loads into its typed config; demo configs also find their files."""

from __future__ import annotations

import pytest

from pite.registry import CONFIG_KINDS, REPO_CONFIGS, kind_of, load_any_config, shipped_configs

CONFIGS = shipped_configs()


def test_every_yaml_under_configs_has_a_known_kind():
    all_yaml = sorted(REPO_CONFIGS.rglob("*.yaml"))
    assert all_yaml and set(all_yaml) == set(CONFIGS)
    assert {kind_of(p) for p in CONFIGS} == set(CONFIG_KINDS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO_CONFIGS)))
def test_shipped_config_loads(path):
    cfg = load_any_config(path, check_paths=False)
    assert cfg is not None


# demo configs whose inputs ship with the repo (the train/eval demos read what `pite demo` makes first)
DEMO_INPUTS = ["pipeline/demo.yaml", "features/demo.yaml", "features/demo_images.yaml"]


@pytest.mark.parametrize("name", DEMO_INPUTS)
def test_demo_configs_find_their_files(name, repo_root, monkeypatch):
    from pipeline.demo_data import prepare_demo_images, prepare_demo_videos

    monkeypatch.chdir(repo_root)
    prepare_demo_videos()
    prepare_demo_images()
    assert load_any_config(REPO_CONFIGS / name, check_paths=True) is not None
