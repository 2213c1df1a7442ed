"""Configs fail before any work, naming the key."""

import re
from pathlib import Path

import pytest

from iterdeploy_trl.config import (
    ConfigError,
    RunConfig,
    check_settings_read,
    config_from_dict,
    config_hash,
    load_config,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_defaults_are_valid():
    cfg = RunConfig().check()
    assert cfg.domain == "blocksworld" and cfg.method == "valid-sft" and cfg.curation == "shortest"


@pytest.mark.parametrize(
    "data, key",
    [
        ({"genrations": 3}, "genrations"),
        ({"sampling": {"temprature": 0.5}}, "sampling.temprature"),
        ({"training": {"lora": {"rank": 4}}}, "training.lora.rank"),
    ],
)
def test_unknown_keys_are_named(data, key):
    with pytest.raises(ConfigError, match=rf"^{key}: unknown key"):
        config_from_dict(data)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"generations": -1}, "generations"),
        ({"sampling": {"temperature": 0}}, "sampling.temperature"),
        ({"sampling": {"top_p": 1.5}}, "sampling.top_p"),
        ({"tasks": {"n": 0}}, "tasks.n"),
        ({"tasks": {"size": [5, 2]}}, "tasks.size"),
        ({"method": "ppo"}, "method"),
        ({"curation": "longest"}, "curation"),
        ({"domain": "depots"}, "domain"),
        ({"training": {"loss_normalization": "mean"}}, "training.loss_normalization"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"sampling": {"samples_per_task": "four"}}, "sampling.samples_per_task"),
        ({"accumulate": "yes"}, "accumulate"),
        ({"model": {"path": "/no/such/model"}}, "model.path"),
        ({"model": {"base_walk_length": "long"}}, "model.base_walk_length"),
        ({"model": {"base_notes": "maybe"}}, "model.base_notes"),
        ({"domain": "blocksworld", "model": {"base_notes": True}}, "model.base_notes"),
    ],
)
def test_impossible_values_are_named(data, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        config_from_dict(data)


def test_uncurated_needs_curation_none():
    with pytest.raises(ConfigError, match="curation: none"):
        config_from_dict({"method": "uncurated-sft"})
    assert config_from_dict({"method": "uncurated-sft", "curation": "none"}).curation == "none"


def test_load_config_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: sampling\.temprature"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "junk.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "junk.yaml")


def test_hash_ignores_name_only():
    a = config_from_dict({"name": "a"})
    assert config_hash(a) == config_hash(config_from_dict({"name": "b"}))
    assert config_hash(a) != config_hash(config_from_dict({"generations": 2}))


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_configs_load(path):
    """Every shipped config passes every check; a model path that is not on this machine (the paper configs'
    ~/models/Qwen3-4B-Thinking-2507) is the only thing left to the machine that runs it."""
    cfg = load_config(path, check_paths=False)
    model = Path(cfg.model.path).expanduser()
    if cfg.model.path == "auto" or model.exists():
        assert load_config(path) == cfg
    else:
        with pytest.raises(ConfigError, match=r"model\.path: .* does not exist"):
            load_config(path)


def test_paper_configs_are_the_studys_protocol():
    for path in sorted(EXPERIMENTS.glob("paper_*.yaml")):
        cfg = load_config(path, check_paths=False)
        t, s, lora = cfg.training, cfg.sampling, cfg.training.lora
        assert (cfg.generations, len(cfg.seeds), cfg.tasks.n, cfg.curation, cfg.accumulate) == (5, 3, 1000, "shortest", True)
        assert (lora.r, lora.alpha, lora.dropout, t.init, t.learning_rate, t.epochs, t.batch_size) == (
            16, 32, 0.05, "base", 1e-5, 2, 1)
        assert (t.validation_fraction, s.temperature, t.max_length, s.backend) == (0.1, 0.6, 32768, "vllm")
        assert (cfg.model.prompt_style, cfg.model.dtype) == ("paper", "bfloat16")


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-5` as the string "1e-5"; a float field takes it as the number.
    p = tmp_path / "c.yaml"
    p.write_text("training: {learning_rate: 1e-5}\nreinforce: {learning_rate: 3E-4}\n")
    cfg = load_config(p)
    assert cfg.training.learning_rate == 1e-5
    assert cfg.reinforce_settings.learning_rate == 3e-4
    with pytest.raises(ConfigError, match="training.learning_rate"):
        config_from_dict({"training": {"learning_rate": "1e-5x"}})


def test_reinforce_learning_rate_defaults_to_learning_rate():
    assert RunConfig().reinforce is None and RunConfig().reinforce_settings.learning_rate is None
    with pytest.raises(ConfigError, match=r"^reinforce\.learning_rate: "):
        config_from_dict({"reinforce": {"learning_rate": 0}})
    with pytest.raises(ConfigError, match="model.base_num_walks"):
        config_from_dict({"model": {"base_num_walks": 0}})


@pytest.mark.parametrize("old, new", [
    ("iw_truncate", "iw_sft.truncate"), ("iw_self_normalize", "iw_sft.self_normalize"),
    ("iw_per_token", "iw_sft.per_token"), ("reinforce_baseline", "reinforce.baseline"),
    ("reinforce_learning_rate", "reinforce.learning_rate"),
])
def test_moved_keys_are_refused_naming_the_new_key(old, new):
    with pytest.raises(ConfigError, match=rf"^training\.{old}: moved to {new} "):
        config_from_dict({"training": {old: 1.0}})


@pytest.mark.parametrize("data, methods, key", [
    ({"iw_sft": {"truncate": 5.0}}, ("valid-sft",), "iw_sft.truncate"),
    ({"iw_sft": {}}, ("valid-sft", "reinforce"), "iw_sft"),
    ({"reinforce": {"baseline": "mean"}}, ("valid-sft", "iw-sft", "uncurated-sft"), "reinforce.baseline"),
    ({"reinforce": {"learning_rate": 1e-4}}, ("iw-sft",), "reinforce.learning_rate"),
    ({"training": {"epochs": 2}}, ("reinforce",), "training.epochs"),
    ({"training": {"init": "previous"}}, ("reinforce",), "training.init"),
    ({"training": {"validation_fraction": 0.1}}, ("reinforce",), "training.validation_fraction"),
    ({"curation": "all-valid"}, ("reinforce",), "curation"),
    ({"accumulate": False}, ("reinforce",), "accumulate"),
])
def test_a_setting_no_chosen_method_reads_is_refused_naming_it(data, methods, key):
    cfg = config_from_dict(data)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: set, but only"):
        check_settings_read(cfg, methods)
    reader = {"iw_sft": "iw-sft", "reinforce": "reinforce"}.get(key.split(".")[0], "valid-sft")
    check_settings_read(cfg, (*methods, reader))  # read by a method of the run: accepted


def test_shared_training_settings_are_read_by_every_method():
    cfg = config_from_dict({"training": {"learning_rate": 3e-4, "batch_size": 4, "weight_decay": 0.1,
                                         "loss_normalization": "batch_tokens", "lora": {"r": 4}}})
    for method in ("valid-sft", "iw-sft", "uncurated-sft", "reinforce"):
        check_settings_read(cfg, (method,))


def test_hash_follows_the_task_generator_version() -> None:
    # Unchanged generators: run directories made before the version existed still resume.
    assert config_hash(load_config(EXPERIMENTS / "cpu_default.yaml")) == "1e0d0cc7569e319d"
    # Sokoban's generator changed (version 2): a run made on the old pool is not resumed as this one.
    assert config_hash(load_config(EXPERIMENTS / "cpu_sokoban.yaml")) != "980505e778f122aa"


def test_method_sections_hash_as_their_old_training_keys():
    """Run directories made before the sections existed still resume: the hash of the old layout's
    ``training: {reinforce_learning_rate: 1e-4, iw_truncate: 5, reinforce_baseline: mean}``, pinned from
    the code before the sections."""
    cfg = config_from_dict({"reinforce": {"learning_rate": 1e-4, "baseline": "mean"}, "iw_sft": {"truncate": 5.0}})
    assert config_hash(cfg) == "ea4c760089c328b5"
    assert config_hash(config_from_dict({"iw_sft": {}})) == config_hash(RunConfig())  # defaults: as left out
