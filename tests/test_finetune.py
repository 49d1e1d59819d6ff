"""The Hugging Face integration: RecoverabilityTrainer with a PEFT LoRA model, and `fastmi finetune`
end to end on tiny random models (tests/tiny.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastmi.cli import build_parser, main
from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.finetune.loss import MultiLayerRecoverabilityLoss
from fastmi.finetune.trainer import RecoverabilityTrainer, TokenMarginal, load_probe, scale_gradient
from tests.tiny import make_tiny_model, random_sentences


def tiny_trainer(model, tokenizer, data, out, recoverability, lam, probe_lr=1e-3, **arguments) -> RecoverabilityTrainer:
    """A RecoverabilityTrainer on the CPU for a causal LM: no reporting, no saving, no bars."""
    from transformers import DataCollatorForLanguageModeling, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out),
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
        save_strategy="no",
        **arguments,
    )
    return RecoverabilityTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        recoverability=recoverability,
        lam=lam,
        probe_lr=probe_lr,
    )


def test_scale_gradient_scales_only_the_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = scale_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 0.5))
    assert not scale_gradient(x, 0.0).requires_grad


def test_token_marginal_entropy_is_the_plugin_entropy_of_the_bag_marginal():
    from fastmi.data.bags import BagTargets

    marginal = TokenMarginal(10)
    marginal.update(BagTargets.from_token_lists([[1, 1, 2, 3], [2]]))
    # p(t) = E_S[count_S(t)/n_S] = ([1/2, 1/4, 1/4] + [0, 1, 0]) / 2
    p = torch.tensor([0.25, 0.625, 0.125], dtype=torch.float64)
    assert marginal.entropy_bits() == pytest.approx(float(-(p * p.log2()).sum()))


def test_trainer_with_lora_lowers_the_loss_and_the_adapter_and_probe_reload(tmp_path):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(path)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM)
    )
    sentences = random_sentences(16, seed=3, min_words=4, max_words=10)
    data = [{"input_ids": tokenizer(s)["input_ids"]} for s in sentences]
    recover = MultiLayerRecoverabilityLoss(16, len(tokenizer), layers=[1, 2], exclude_ids=tokenizer.all_special_ids)
    trainer = tiny_trainer(
        model,
        tokenizer,
        data,
        tmp_path / "run",
        recover,
        lam=0.5,
        probe_lr=0.1,
        max_steps=16,
        per_device_train_batch_size=8,
        learning_rate=3e-2,
        logging_steps=4,
        logging_first_step=True,
        seed=0,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "recoverability" in entry]
    assert len(logs) == 5  # step 1, then every 4 steps
    first, last = logs[0], logs[-1]
    assert first["recoverability"] == pytest.approx(math.log(len(tokenizer)), rel=1e-3)  # zero probes: uniform
    assert last["loss"] < first["loss"] - 0.5
    assert last["own_loss"] < first["own_loss"] and last["recoverability"] < first["recoverability"]
    for layer in (1, 2):
        assert last[f"variational_bound_bits/layer_{layer}"] == pytest.approx(
            last["entropy_bits"] - last[f"recoverability_ce_bits/layer_{layer}"], abs=1e-3
        )
        assert last[f"variational_bound_bits/layer_{layer}"] > first[f"variational_bound_bits/layer_{layer}"]
    # The logged loss is own + lambda * term.
    assert last["loss"] == pytest.approx(last["own_loss"] + 0.5 * last["recoverability"], rel=0.05)

    trainer.save_model(str(tmp_path / "saved"))
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tmp_path / "adapter").eval()
    batch = tokenizer(sentences[:4], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-6)
        plain = AutoModelForCausalLM.from_pretrained(path).eval()
        assert not torch.allclose(plain(**batch).logits, model(**batch).logits, atol=1e-4)  # LoRA changed the model
    probe = load_probe(tmp_path / "saved")
    for key, value in recover.state_dict().items():
        assert torch.equal(probe.state_dict()[key], value.cpu()), key


def _finetune(args: list[str]) -> int:
    return main(
        [
            "finetune",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--logging-steps",
            "2",
            "--save-steps",
            "2",
            "--lambda",
            "1",
            "--probe-lr",
            "0.05",
            "--no-progress",
            *args,
        ]
    )


@pytest.mark.parametrize("arch,mode", [("llama", "--lora"), ("bert", "--full")])
def test_fastmi_finetune_end_to_end_writes_a_model_extract_reads(tmp_path, monkeypatch, capsys, arch, mode):
    from fastmi.models.loading import load_model

    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model_dir = make_tiny_model(arch, tmp_path / arch, hidden=16, layers=2)
    if arch == "bert":  # masked LM needs a mask token; the tiny BERT's unused "<s>" plays it
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.mask_token = "<s>"
        tokenizer.save_pretrained(model_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(40, seed=1)))
    out = tmp_path / "tuned"
    assert (
        _finetune(["--model", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--layers", "1,2", mode]) == 0
    )
    assert "tuned" in capsys.readouterr().out

    done = json.loads((out / "finetune.json").read_text())
    assert done["layers"] == [1, 2] and done["kind"] == ("decoder" if arch == "llama" else "encoder")
    assert done["max_length"] == done["config"]["max_length"] == DEFAULT_MAX_LENGTH  # what a sweep of OUT needs
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("variational_bound_bits/layer_2" in entry for entry in log)
    assert (out / "recoverability" / "recoverability_probe.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file() == (mode == "--lora")
    # The tuned model loads back where fastmi reads models, and differs from the one it started from.
    tuned, original = load_model(out), load_model(model_dir)
    assert tuned.kind == original.kind and tuned.num_layers == 2
    before = dict(original.model.named_parameters())
    changed = [n for n, p in tuned.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "fine-tuning left every weight as it was"
    assert (
        main(
            ["extract", "--model", str(out), "--corpus", str(corpus), "--out", str(tmp_path / "cache"), "--no-progress"]
        )
        == 0
    )

    # Finished: the same command again does nothing and says so; other settings are refused.
    assert (
        _finetune(["--model", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--layers", "1,2", mode]) == 0
    )
    assert (
        _finetune(["--model", str(model_dir), "--corpus", str(corpus), "--out", str(out), "--layers", "1", mode]) == 2
    )
    assert "other settings" in capsys.readouterr().err


def test_fastmi_finetune_rejects_bad_input(tmp_path, capsys):
    assert _finetune(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--lambda", "-1"]) == 2
    assert "lambda" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_trainer_warns_of_frozen_hidden_states_only_when_the_model_is_frozen(tmp_path, lam):
    """The control (lambda = 0) detaches the hidden states on purpose: no warning.  A frozen model
    under lambda > 0 would train the probe alone: warned."""
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fastmi.finetune.frozen import FrozenHiddenStatesWarning

    path = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = [{"input_ids": tokenizer(s)["input_ids"]} for s in random_sentences(8, seed=4)]
    for frozen in (False, True):
        model = AutoModelForCausalLM.from_pretrained(path)
        if frozen:  # the LM head still trains, so the Trainer has something to optimise
            model.model.requires_grad_(False)
        recover = MultiLayerRecoverabilityLoss(16, len(tokenizer), layers=[1])
        trainer = tiny_trainer(
            model, tokenizer, data, tmp_path / f"run-{frozen}", recover, lam, max_steps=2, per_device_train_batch_size=4
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
        warned = any(issubclass(w.category, FrozenHiddenStatesWarning) for w in caught)
        assert warned == (frozen and lam > 0), (frozen, lam)


def test_finetune_truncates_where_sweep_and_extract_do_by_default():
    """A sweep of a fine-tuned model scores the text it was trained on unless a length is chosen."""
    import inspect

    import fastmi
    from fastmi.finetune.run import FinetuneConfig
    from fastmi.sweep import sweep

    parser = build_parser()
    finetune_cli = parser.parse_args(["finetune", "--model", "m", "--out", "o"]).max_length
    sweep_cli = parser.parse_args(["sweep", "--model", "m", "--out", "o"]).max_length
    extract_api = inspect.signature(fastmi.extract).parameters["max_length"].default
    sweep_api = inspect.signature(sweep).parameters["max_length"].default
    assert finetune_cli == FinetuneConfig(model="m", out="o").max_length == DEFAULT_MAX_LENGTH
    assert finetune_cli == sweep_cli == extract_api == sweep_api
    assert parser.parse_args(["finetune", "--model", "m", "--out", "o", "--max-length", "32"]).max_length == 32


@pytest.mark.parametrize("extra", [[], ["--gradient-checkpointing"]])
def test_fastmi_finetune_emits_no_future_warning(tmp_path, monkeypatch, extra):
    """transformers 5 renamed gradient_checkpointing (TrainingArguments) and is_gradient_checkpointing
    (read by peft): every run printed a FutureWarning about code the user never wrote."""
    import warnings

    monkeypatch.setenv("FASTMI_HOME", str(tmp_path / "home"))
    model_dir = make_tiny_model("llama", tmp_path / "llama", hidden=16, layers=2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(random_sentences(20, seed=2)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _finetune(["--model", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "o"), *extra])
    assert code == 0
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
