"""ProbeConfig: every probe setting declared once, reachable from Python, a sweep and the CLI alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from test_probe import bag_features, random_bags

import fastmi
from fastmi.cli import build_parser
from fastmi.commands._probe_options import flag, probe_config, settings_fields
from fastmi.data.split import Split
from fastmi.probe.checks import ENTROPY_METHODS
from fastmi.probe.config import ProbeConfig, TrainConfig
from fastmi.sweep import load_or_make_split, result_stem

# ---- the declarations --------------------------------------------------------------------------------


def test_every_setting_has_help_and_its_default_passes_its_check():
    for _, f in settings_fields():
        assert f.metadata["help"].strip(), f.name
    assert ProbeConfig() == ProbeConfig(train=TrainConfig())
    assert ProbeConfig(train=None).train == TrainConfig()


def test_the_declarations_load_without_torch():
    """The CLI builds every command's options from them at start-up, before it needs torch."""
    import subprocess
    import sys

    code = "import sys, fastmi.commands._probe_options; sys.exit('torch' in sys.modules or 'numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_entropy_estimators_are_those_of_the_bounds():
    from fastmi.stats.bounds import ENTROPY_METHODS as IN_BOUNDS

    assert ENTROPY_METHODS == IN_BOUNDS


def test_configs_are_frozen_and_curves_are_kept_checked():
    config = ProbeConfig(curve=(0.5, 0.25))
    assert config.curve == (0.25, 0.5, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.max_epochs = 1


@pytest.mark.parametrize(
    "settings, says",
    [
        (dict(k=0), "k must be a positive integer, got 0"),
        (dict(test_fraction=1.5), "test_fraction must lie strictly between 0 and 1"),
        (dict(validation_fraction=0.0), "validation_fraction must lie strictly between 0 and 1"),
        (dict(n_bootstrap=50), "n_bootstrap must be an integer of at least 100"),
        (dict(level=1), "level must lie strictly between 0 and 1"),
        (dict(entropy="exact"), "entropy must be one of"),
        (dict(probe="lens"), "probe must be one of"),
        (dict(vocab="everything"), "vocab must be"),
        (dict(train_softmax="sampled:0"), "train_softmax must be"),
        (dict(curve=(1.5,)), "curve fractions must lie in"),
        (dict(max_memory=0), "max_memory must be a positive integer"),
        (dict(probe="unembedding", train=TrainConfig(tie_unseen=True)), "tie_unseen applies to the linear probe"),
    ],
)
def test_a_setting_the_probe_would_refuse_cannot_be_made(settings, says):
    with pytest.raises(ValueError, match=says):
        ProbeConfig(**settings)


@pytest.mark.parametrize(
    "settings, says",
    [
        (dict(max_epochs=0), "max_epochs must be a positive integer"),
        (dict(lr=0), "lr must be a positive number"),
        (dict(precision="fp16"), "precision must be one of"),
        (dict(sampled_adam="sparse"), "sampled_adam must be one of"),
        (dict(prior_smoothing=0.0), r"prior_smoothing must lie in \(0, 1\]"),
    ],
)
def test_a_training_setting_the_probe_would_refuse_cannot_be_made(settings, says):
    with pytest.raises(ValueError, match=says):
        TrainConfig(**settings)


# ---- a sweep's results: their key and file names stay what they were ------------------------------
# The stems that fastmi.sweep.ProbeSettings.file_stem() gave before ProbeConfig replaced it: results
# stored then are found (and reused) under the same names.
STEMS_BEFORE = [
    (ProbeConfig(probe="linear"), "vocab-observed-8002f41e"),
    (ProbeConfig(probe="linear", vocab="top:512"), "vocab-top512-22d52c32"),
    (
        ProbeConfig(probe="linear", vocab="full", train=TrainConfig(tie_unseen=True, max_epochs=1)),
        "vocab-full-124162f3",
    ),
    (
        ProbeConfig(
            probe="unembedding",
            train_softmax="sampled:64",
            curve=(0.25, 0.5, 1.0),
            seed=2,
            device="cpu",
            max_memory=10**9,
        ),
        "vocab-observed-adfedaf3",
    ),
]


@pytest.mark.parametrize("config, stem", STEMS_BEFORE)
def test_result_file_names_are_those_of_the_settings_before(config, stem):
    assert result_stem(config) == stem


def test_the_default_probe_is_not_filed_under_the_old_defaults_name():
    """'auto' became the default after results of the linear probe were stored under the default's
    key: the old key now means linear, and the new default gets a key of its own."""
    assert ProbeConfig().key()["probe"] == "auto"
    assert "probe" not in ProbeConfig(probe="linear").key()
    assert result_stem(ProbeConfig()) != result_stem(ProbeConfig(probe="linear"))
    assert "embedding_decay" not in ProbeConfig().key()["train"]
    assert ProbeConfig(train=TrainConfig(embedding_decay=1.0)).key()["train"]["embedding_decay"] == 1.0


def test_the_key_holds_what_changes_the_numbers_in_the_order_it_always_had():
    assert list(ProbeConfig(probe="linear").key()) == [
        "vocab",
        "test_fraction",
        "seed",
        "k",
        "level",
        "entropy",
        "train",
    ]
    assert ProbeConfig(device="cpu", max_memory=1 << 30).key() == ProbeConfig().key()
    changed = {result_stem(ProbeConfig(**{name: value})) for name, value in (("n_bootstrap", 500),)}
    changed |= {result_stem(ProbeConfig(validation_fraction=0.2)), result_stem(ProbeConfig())}
    assert len(changed) == 3  # the settings that could not be set before get names of their own


def test_a_sweep_refuses_a_split_made_with_another_validation_share(tmp_path):
    Split.make(100, 0.2, 0, 0.1).save(tmp_path / "split.json")
    assert load_or_make_split(tmp_path, 100, None, ProbeConfig()).validation_fraction == 0.1
    with pytest.raises(ValueError, match="validation_fraction=0.1"):
        load_or_make_split(tmp_path, 100, None, ProbeConfig(validation_fraction=0.2))


# ---- recoverability(source, config, **overrides) ---------------------------------------------------
def small_input():
    bags = random_bags(80, 6, seed=1)
    return {0: bag_features(bags, 6)}, bags


def run(config=None, **overrides):
    layers, bags = small_input()
    overrides.setdefault("train", TrainConfig(max_epochs=1))
    overrides.setdefault("n_bootstrap", 100)
    return fastmi.recoverability(layers, config, targets=bags, vocab_size=6, progress=False, **overrides)


def test_keywords_override_the_config_and_reach_the_result():
    config = ProbeConfig(seed=3, k=2, n_bootstrap=100, train=TrainConfig(max_epochs=1))
    by_config = run(config, validation_fraction=0.25)
    by_keywords = run(seed=3, k=2, validation_fraction=0.25)
    assert by_config.config == by_keywords.config
    assert by_config.config["n_bootstrap"] == 100 and by_config.config["k"] == 2
    assert by_config.config["split"]["validation_fraction"] == 0.25
    assert by_config.table == by_keywords.table


def test_an_unknown_keyword_is_a_type_error_that_names_it():
    with pytest.raises(TypeError, match="'n_boot'"):
        run(n_boot=10)
    with pytest.raises(TypeError, match=r"max_epochs is a TrainConfig setting: train=TrainConfig\(max_epochs"):
        run(max_epochs=2)
    layers, bags = small_input()
    with pytest.raises(TypeError, match="takes a ProbeConfig"):
        fastmi.recoverability(layers, bags, vocab_size=6)


# ---- the command line: one option per setting, reaching the config ----------------------------------
# A value other than the default for every setting, as typed, and what the config then holds.
EXAMPLES = {
    "vocab": (["top:64"], "top:64"),
    "test_fraction": (["0.3"], 0.3),
    "validation_fraction": (["0.25"], 0.25),
    "seed": (["7"], 7),
    "k": (["3"], 3),
    "level": (["0.9"], 0.9),
    "entropy": (["miller_madow"], "miller_madow"),
    "n_bootstrap": (["500"], 500),
    "probe_seeds": (["3"], 3),
    "probe": (["unembedding"], "unembedding"),
    "train_softmax": (["sampled:64"], "sampled:64"),
    "curve": (["0.25,0.5"], (0.25, 0.5, 1.0)),
    "device": (["cpu"], "cpu"),
    "max_memory": (["2GiB"], 2 << 30),
    "max_epochs": (["7"], 7),
    "patience": (["5"], 5),
    "batch_size": (["32"], 32),
    "lr": (["0.01"], 0.01),
    "weight_decay": (["0.001"], 0.001),
    "embedding_decay": (["1.5"], 1.5),
    "plateau_factor": (["0.5"], 0.5),
    "min_improvement": (["0.01"], 0.01),
    "prior_smoothing": (["0.1"], 0.1),
    "precision": (["bf16"], "bf16"),
    "sampled_adam": (["lazy"], "lazy"),
    "tie_unseen": ([], True),
}
COMMANDS = {
    "probe": ["probe", "--cache", "CACHE", "--out", "OUT"],
    "sweep": ["sweep", "--model", "minilm", "--out", "OUT"],
    "demo": ["demo"],
}


def setting_of(config: ProbeConfig, cls: type, name: str):
    return getattr(config.train if cls is TrainConfig else config, name)


def test_every_setting_has_an_example_here():
    assert set(EXAMPLES) == {f.name for _, f in settings_fields()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_setting_has_an_option_in_the_help(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    for _, f in settings_fields():
        assert f" {flag(f)} " in text or f" {flag(f)}," in text or f" {flag(f)}\n" in text, (command, flag(f))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("cls, f", list(settings_fields()), ids=lambda x: getattr(x, "name", ""))
def test_each_option_reaches_the_config(command, cls, f):
    words, value = EXAMPLES[f.name]
    args = build_parser().parse_args([*COMMANDS[command], flag(f), *words])
    config = probe_config(args)
    assert setting_of(config, cls, f.name) == value
    assert value != setting_of(ProbeConfig(), cls, f.name)  # so that reaching it shows
    for other_cls, other in settings_fields():  # nothing else moved
        if other is not f and other.name not in ("vocab",):
            assert setting_of(config, other_cls, other.name) == setting_of(ProbeConfig(), other_cls, other.name)


def test_the_demo_keeps_its_own_alphabet_and_flags_name_their_option():
    assert probe_config(build_parser().parse_args(["demo"])).vocab == "top:512"
    assert probe_config(build_parser().parse_args(["probe", "--cache", "c", "--out", "o"])) == ProbeConfig()
    args = build_parser().parse_args([*COMMANDS["sweep"], "--batch-size", "8", "--probe-batch-size", "0"])
    assert args.batch_size == 8  # the extraction's, apart from the probe's
    with pytest.raises(ValueError, match="--probe-batch-size must be a positive integer"):
        probe_config(args)
    args = build_parser().parse_args([*COMMANDS["probe"], "--tie-unseen", "--probe", "unembedding"])
    with pytest.raises(ValueError, match="--tie-unseen applies to the linear probe only"):
        probe_config(args)
    assert probe_config(build_parser().parse_args([*COMMANDS["probe"], "--curve"])).curve == (0.125, 0.25, 0.5, 1.0)
    assert probe_config(build_parser().parse_args([*COMMANDS["probe"], "--no-tie-unseen"])).train.tie_unseen is False


# ---- fine-tuning trains on the train rows of the split a sweep scores on ---------------------------
def test_finetune_takes_the_split_settings_from_the_probe_config(capsys):
    from fastmi.cli import main
    from fastmi.finetune.run import FinetuneConfig, _check_config, split_settings

    config = FinetuneConfig(model="minilm", out="OUT")
    assert (config.seed, config.test_fraction) == (ProbeConfig().seed, ProbeConfig().test_fraction)
    assert split_settings(config).make_split(200) == load_or_make_split(Path("no-such-dir"), 200, None, ProbeConfig())
    with pytest.raises(ValueError, match="test_fraction must lie strictly between 0 and 1"):
        _check_config(FinetuneConfig(model="minilm", out="OUT", test_fraction=1.5))
    assert main(["finetune", "--model", "minilm", "--out", "OUT", "--test-fraction", "2"]) == 2
    assert "--test-fraction must lie strictly between 0 and 1" in capsys.readouterr().err
