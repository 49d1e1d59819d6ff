"""fastmi.plan / `fastmi plan`: config-only reading, a Llama-3.1-70B shape on the meta device, placement,
the advice when something does not fit, GPU presets, the target's disk rate, the probe's expected total
time, and the plan's wording."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import make_tiny_model, random_sentences
from transformers import AutoModel, AutoTokenizer, LlamaConfig

import fastmi
import fastmi.planning.gpu_presets
import fastmi.planning.hardware
import fastmi.planning.rates
from fastmi.cli import main
from fastmi.models.hooks import find_layer_taps
from fastmi.models.shape import model_shape

# Llama-3.1-70B (meta-llama/Llama-3.1-70B config.json, shape fields only).
LLAMA_70B = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)
REQUIRED_KEYS = {
    "parameters",
    "weight_bytes",
    "cache_bytes",
    "probe_parameters_per_layer",
    "probe_bytes_per_layer",
    "layers_per_group",
    "extraction_seconds",
    "probe_seconds_per_epoch",
    "replicas",
    "devices_per_replica",
    "fits",
}
H200 = ["--gpu-memory", "141GB", "--matmul-tflops", "593", "--host-memory", "2TB"]


def llama_closed_form(d, layers, heads, kv_heads, ffn, vocab) -> int:
    head_dim = d // heads
    attention = 2 * d * d + 2 * d * kv_heads * head_dim  # q and o; k and v on the KV heads
    block = attention + 3 * d * ffn + 2 * d  # gate, up, down; two RMSNorm weights
    return layers * block + 2 * vocab * d + d  # embedding, untied LM head, final norm


@pytest.fixture(scope="module")
def config_70b(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama70b") / "config.json"
    path.write_text(json.dumps(LLAMA_70B))
    return path


def test_70b_shape_on_the_meta_device(config_70b):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = LlamaConfig(**{k: v for k, v in LLAMA_70B.items() if k != "model_type"})
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
        base = AutoModel.from_config(config)
    assert next(model.parameters()).device.type == "meta"
    counted = sum(p.numel() for p in model.parameters())
    closed = llama_closed_form(8192, 80, 64, 8, 28672, 128256)
    assert counted == closed == 70_553_706_496  # "70.55 B"
    taps = find_layer_taps(base, 80)
    assert taps.num_layers + 1 == 81 and taps.final_norm is base.norm
    shape = model_shape(config_70b)
    assert shape.parameters == closed and shape.num_taps == 81
    assert shape.loaded_parameters == closed - 128256 * 8192  # extraction loads no LM head
    planned = fastmi.plan(
        config_70b,
        sentences=100_000,
        mean_tokens=32,
        vocab="full",
        gpus=8,
        gpu_memory="141GB",
        matmul_tflops=593,
        host_memory="2TB",
    )
    assert planned.parameters == closed
    assert planned.layers == list(range(81))


def test_plan_70b_on_8_h200s_fits_and_prints_a_placement(config_70b, capsys):
    code = main(["plan", "--model", str(config_70b), "--sentences", "100000", "--vocab", "full", "--gpus", "8", *H200])
    out = capsys.readouterr().out
    assert code == 0
    assert "verdict      fits" in out
    assert "4 data-parallel replicas x 2 GPUs each, no offload" in out
    assert out.count("estimate") >= 8
    assert (
        main(
            [
                "plan",
                "--model",
                str(config_70b),
                "--sentences",
                "100000",
                "--vocab",
                "full",
                "--gpus",
                "8",
                *H200,
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert REQUIRED_KEYS <= set(plan)
    assert plan["fits"] is True and plan["replicas"] == 4 and plan["devices_per_replica"] == 2
    assert plan["weight_bytes"] == 2 * (70_553_706_496 - 128256 * 8192)  # bf16 base model
    assert plan["probe_parameters_per_layer"] == 128256 * 8193
    assert plan["cache_bytes"] >= 100_000 * 81 * 8192 * 4  # fp32: 265 GB and the targets
    assert 1 <= plan["layers_per_group"] < 81 and plan["layer_groups"] == -(-81 // plan["layers_per_group"])
    # "auto" trains the embedding probe (6 N_train d M per layer and epoch, plus the validation pass)
    # and the unembedding probe (4 N_train d (M + d), plus 2 N_val d (M + d))
    train, val = round(100_000 * 0.72), round(100_000 * 0.08)
    d, m = 8192, 128256
    embedding = (6 * train + 2 * val) * d * m
    unembedding = 4 * train * d * (m + d) + 2 * val * d * (m + d)
    assert plan["probe_flops_per_epoch"] == pytest.approx(81 * (embedding + unembedding))
    assert plan["extraction_seconds"] > 0 and plan["probe_seconds_per_epoch"] > 0


def test_cheaper_settings_cost_less(config_70b):
    common = dict(sentences=100_000, gpus=8, gpu_memory="141GB", matmul_tflops=593, host_memory="2TB")
    full = fastmi.plan(config_70b, vocab="full", **common)
    bf16 = fastmi.plan(config_70b, vocab="full", cache_dtype="bf16", **common)
    assert bf16.cache_bytes < 0.51 * full.cache_bytes + 1e9
    sampled = fastmi.plan(config_70b, vocab="full", train_softmax="sampled:8192", **common)
    assert sampled.probe_flops_per_epoch < full.probe_flops_per_epoch / 4
    tuned = fastmi.plan(config_70b, vocab="full", probe="unembedding", **common)
    assert tuned.probe_parameters_per_layer == 8192 * 8192 + 8192 + 128256
    assert tuned.layers_per_group > full.layers_per_group
    top = fastmi.plan(config_70b, vocab="top:8192", **common)
    assert top.alphabet_size == 8192 and top.probe_bytes_per_layer < full.probe_bytes_per_layer
    fast = fastmi.plan(config_70b, vocab="full", precision="bf16", **common)
    fp32 = fastmi.plan(config_70b, vocab="full", precision="fp32", **common)
    assert fast.probe_seconds_per_epoch < fp32.probe_seconds_per_epoch
    assert full.precision == "bf16"  # "auto", as the probe resolves it on a GPU


def test_the_default_precision_is_the_probes_own_on_each_device(config_70b):
    on_gpus = fastmi.plan(config_70b, sentences=1000, vocab="top:512", gpus=1, gpu="h200")
    on_cpu = fastmi.plan(config_70b, sentences=1000, vocab="top:512", gpus=0, gpu_memory="1TB", matmul_tflops=1)
    assert (on_gpus.precision, on_cpu.precision) == ("bf16", "fp32")


def test_a_probe_config_plans_what_the_run_will_do(config_70b):
    """... its batch too; the compute-bound batch is priced beside the run's own, not instead of it."""
    common = dict(sentences=100_000, gpus=8, gpu_memory="141GB", matmul_tflops=593, host_memory="2TB")
    config = fastmi.ProbeConfig(
        vocab="full", probe="unembedding", train_softmax="sampled:8192", train=fastmi.TrainConfig(precision="bf16")
    )
    by_config = fastmi.plan(config_70b, config=config, **common)
    by_keywords = fastmi.plan(
        config_70b, vocab="full", probe="unembedding", train_softmax="sampled:8192", precision="bf16", **common
    )
    assert by_config == by_keywords
    assert by_config != fastmi.plan(config_70b, vocab="full", **common)
    plain = fastmi.plan(config_70b, vocab="full", **common)
    assert plain.probe_batch_size == 256 and plain.compute_bound_batch_size > 256  # priced beside it
    assert plain.compute_bound_seconds_per_epoch < plain.probe_seconds_per_epoch
    given = fastmi.plan(
        config_70b, config=fastmi.ProbeConfig(vocab="full", train=fastmi.TrainConfig(batch_size=1024)), **common
    )
    assert given.probe_batch_size == 1024
    assert given.probe_seconds_per_epoch == pytest.approx(plain.compute_bound_seconds_per_epoch)


def test_what_does_not_fit_is_named_with_its_fix(config_70b, capsys):
    one = fastmi.plan(
        config_70b, sentences=10_000, vocab="full", gpus=1, gpu_memory="141GB", matmul_tflops=593, host_memory="2TB"
    )
    assert one.offload == "cpu" and one.replicas == 1 and one.devices_per_replica == 1
    assert any("offload" in tip and "2 GPUs" in tip for tip in one.advice)
    assert one.extraction_batch_size > 1024  # each weight transfer serves many tokens
    small = fastmi.plan(
        config_70b, sentences=100_000, vocab="full", gpus=8, gpu_memory="40GB", matmul_tflops=300, host_memory="2TB"
    )
    assert not small.fits and any("probe needs" in p for p in small.problems)
    assert any(tip.startswith("--vocab top:") for tip in small.advice)
    assert any("unembedding" in tip for tip in small.advice)
    code = main(
        [
            "plan",
            "--model",
            str(config_70b),
            "--sentences",
            "100000",
            "--vocab",
            "full",
            "--gpus",
            "8",
            "--gpu-memory",
            "40GB",
            "--matmul-tflops",
            "300",
            "--host-memory",
            "2TB",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "does NOT fit" in out and "advice       --vocab top:" in out


def test_plan_reads_the_config_never_the_weights(tmp_path):
    directory = make_tiny_model("llama", tmp_path / "llama", hidden=32, layers=3)
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(directory)
    expected = sum(p.numel() for p in real.parameters())
    (directory / "model.safetensors").unlink()  # a plan must not need them
    corpus = random_sentences(50, seed=2)
    p = fastmi.plan(directory, corpus, vocab="observed", gpus=0, matmul_tflops=0.01, max_length=16)
    assert p.parameters == expected and p.device == "cpu" and p.layers == [0, 1, 2, 3]
    # the corpus was tokenized by the model's own tokenizer: exact tokens, observed alphabet
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = [tokenizer(s, truncation=True, max_length=16)["input_ids"] for s in corpus]
    assert p.tokens == sum(map(len, ids))
    specials = set(tokenizer.all_special_ids)
    # the probe's alphabet: the ids of the default split's training sentences, plus "other"
    train = fastmi.ProbeConfig().make_split(len(ids)).train
    assert p.alphabet_size == len({i for r in train for i in ids[r]} - specials) + 1
    with pytest.raises(ValueError, match="observed.*needs the corpus"):
        fastmi.plan(directory, sentences=100, vocab="observed", gpus=0, matmul_tflops=0.01)


def test_plan_of_a_gguf_reads_its_metadata(tmp_path):
    pytest.importorskip("gguf", reason="writing a GGUF file needs the gguf package (pip install gguf)")
    from test_models import write_tiny_llama_gguf

    path = tmp_path / "tiny.F32.gguf"
    reference = write_tiny_llama_gguf(path)
    p = fastmi.plan(
        path, ["ab w ab", "w w ab"], vocab="full", gpus=0, matmul_tflops=0.01, model_cache_dir=tmp_path / "models"
    )
    assert p.parameters == sum(t.numel() for t in reference.parameters())
    assert p.num_layers == 2 and p.hidden_size == 16
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)  # the GGUF's own tokenizer
    assert p.tokens == len(tokenizer("ab w ab")["input_ids"]) + len(tokenizer("w w ab")["input_ids"])
    assert not (tmp_path / "models").exists()  # nothing was dequantised


def test_bad_input_is_named(config_70b, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        fastmi.plan(tmp_path / "nothing-here", sentences=10, vocab="full", gpus=0, matmul_tflops=0.01)
    bad = tmp_path / "config.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="no model_type"):
        fastmi.plan(bad, sentences=10, vocab="full", gpus=0, matmul_tflops=0.01)
    with pytest.raises(ValueError, match="gpu-memory"):
        fastmi.plan(config_70b, sentences=10, vocab="full", gpus=64)
    with pytest.raises(ValueError, match="cache_dtype"):
        fastmi.plan(config_70b, sentences=10, vocab="full", gpus=0, matmul_tflops=0.01, cache_dtype="int8")
    assert main(["plan", "--model", str(config_70b)]) == 2  # neither a corpus nor --sentences


# The vendors' published figures (dense, no sparsity), as docs/scaling.md cites them:
# (memory bytes, bf16 TFLOP/s, TF32 TFLOP/s, fp32 TFLOP/s, memory bytes/s).
PUBLISHED = {
    "h100": (80e9, 989, 494, 67, 3.35e12),
    "h200": (141e9, 989, 494, 67, 4.8e12),
    "a100-80gb": (80e9, 312, 156, 19.5, 2.039e12),
    "l40s": (48e9, 362, 183, 91.6, 0.864e12),
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_measured_here(monkeypatch):
    """Every measurement of this machine (and its free RAM) fails: a plan that uses one is caught."""

    def measured(*args, **kwargs):
        raise AssertionError("a plan for GPUs elsewhere measured this machine")

    names = [name for name in dir(fastmi.planning.rates) if name.startswith("measure_")]
    assert len(names) >= 9  # every measurement of the machine, its free RAM included
    for name in names:
        monkeypatch.setattr(fastmi.planning.rates, name, measured)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gpu_preset_fills_memory_and_matmul_rate_from_published_figures(name, config_70b, nothing_measured_here):
    memory, bf16, tf32, fp32, bandwidth = PUBLISHED[name]
    hw = fastmi.planning.hardware.detect_hardware(gpus=8, gpu=name)
    assert hw.memory == memory and hw.bandwidth == bandwidth
    assert hw.matmul_flops == pytest.approx(fastmi.planning.gpu_presets.ACHIEVED_FRACTION * bf16 * 1e12)
    assert fastmi.planning.gpu_presets.ACHIEVED_FRACTION == 0.6  # the one fraction the README and docs state
    # the probe's fp32 and TF32 matmuls at this GPU's own rates, not an H100's
    assert hw.probe_flops("fp32") == pytest.approx(0.6 * fp32 * 1e12)
    assert hw.probe_flops("tf32") == pytest.approx(0.6 * tf32 * 1e12)
    planned = fastmi.plan(config_70b, sentences=10_000, vocab="full", gpus=8, gpu=name)
    assert planned.device_memory == memory and planned.matmul_tflops == pytest.approx(0.6 * bf16)
    assert planned.gpu == hw.preset.name


def test_gpu_preset_on_the_command_line_needs_no_memory_or_rate(config_70b, capsys, nothing_measured_here):
    args = ["plan", "--model", str(config_70b), "--sentences", "100000", "--vocab", "full", "--gpus", "8"]
    assert main([*args, "--gpu-memory", "141GB"]) == 2  # no rate: refused, and the refusal names --gpu
    assert "--gpu {h100,h200,a100-80gb,l40s}" in capsys.readouterr().err
    assert main([*args, "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    hardware = next(line for line in out.splitlines() if line.startswith("hardware"))
    assert hardware.startswith("hardware     8 x H200 SXM, 141 GB each, 593 TFLOP/s per GPU (published figures")
    assert "60% of the 989 dense bf16 TFLOP/s peak" in hardware
    assert main([*args, "--gpu", "h200", "--matmul-tflops", "400", "--json"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["matmul_tflops"] == 400 and given["device_memory"] == 141e9  # a flag overrides the preset
    one = fastmi.plan(config_70b, sentences=10_000, vocab="full", gpu="l40s")
    assert one.gpus == 1  # --gpu alone plans for one such GPU
    with pytest.raises(ValueError, match="unknown GPU 'b200': the presets are h100, h200, a100-80gb, l40s"):
        fastmi.plan(config_70b, sentences=10_000, vocab="full", gpus=8, gpu="b200")
    with pytest.raises(ValueError, match="gpus=0 plans for this CPU"):
        fastmi.plan(config_70b, sentences=10_000, vocab="full", gpus=0, gpu="h100")


def test_help_names_the_presets_and_the_defaults_of_a_gpu_node(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["plan", "--help"])
    assert exit_code.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--gpu {h100,h200,a100-80gb,l40s}" in text and "dense bf16 peak at 60%" in text
    assert "for GPUs elsewhere 250 GB per GPU" in text and "for GPUs elsewhere 1 GB/s" in text


def test_gpus_elsewhere_take_a_gpu_nodes_host_memory_and_disk_rate_not_this_machines(
    config_70b, capsys, nothing_measured_here
):
    planned = fastmi.plan(config_70b, sentences=100_000, vocab="full", gpus=8, gpu_memory="141GB", matmul_tflops=593)
    assert planned.host_memory == 8 * fastmi.planning.gpu_presets.GPU_NODE_HOST_MEMORY_PER_GPU == 2e12
    assert planned.disk_rate == fastmi.planning.gpu_presets.GPU_NODE_DISK_RATE == 1e9
    assert "default for a GPU node" in planned.host_memory_source and "--disk-rate" in planned.disk_rate_source
    args = ["plan", "--model", str(config_70b), "--sentences", "100000", "--vocab", "full", "--gpus", "8"]
    assert main([*args, "--gpu", "h200", "--disk-rate", "2GB/s", "--host-memory", "1TB"]) == 0
    host = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("host"))
    assert host == "host         1 TB RAM (given); cache files written at 2 GB/s per process (given)"


def test_cache_writes_cost_the_targets_disk_rate(config_70b, nothing_measured_here):
    """Halving the disk rate adds exactly one more pass of the cache files at the old rate: the shards
    split over the replicas, the targets and the fp32 output embedding once."""
    common = dict(sentences=100_000, vocab="full", gpus=8, gpu="h200")
    fast = fastmi.plan(config_70b, disk_rate="1GB/s", **common)
    slow = fastmi.plan(config_70b, disk_rate=0.5e9, **common)
    shards = 100_000 * 81 * (8192 * 4 + 8)
    targets = fast.cache_bytes - shards
    unembedding = 4 * 128256 * 8192
    added = (shards / fast.replicas + targets + unembedding) / 1e9
    assert slow.extraction_seconds - fast.extraction_seconds == pytest.approx(added, rel=1e-9)
    assert fastmi.plan(config_70b, **common).extraction_seconds == pytest.approx(fast.extraction_seconds)


def test_probe_epochs_are_the_ones_recorded_runs_ran():
    """PROBE_EPOCHS is the range of early stopping's epochs in the 10,000-sentence runs it cites: the
    default probe's in bench/probe_family.py's rows, the linear probe's on top:512 in docs/findings."""
    from fastmi.planning.planner import PROBE_EPOCHS

    path = REPO / "docs" / "findings" / "large_10k" / "results.json"
    epochs = [int(n) for n in _values(json.loads(path.read_text()), "epochs_run")]
    rows = [json.loads(line) for line in (REPO / "bench" / "results" / "probe_family.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "forms_after" in row["figures"]]  # today's default, "auto"
    epochs += [layer["epochs_after"] for row in rows for layer in row["figures"]["per_layer"]]
    assert len(epochs) >= 4 and (min(epochs), max(epochs)) == PROBE_EPOCHS


def _values(tree, key: str):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from [v] if k == key else _values(v, key)
    elif isinstance(tree, list):
        for v in tree:
            yield from _values(v, key)


def test_plan_prints_the_probes_expected_total_time(config_70b, capsys):
    planned = fastmi.plan(config_70b, sentences=100_000, vocab="full", gpus=8, gpu="h200")
    low, high = planned.probe_expected_seconds
    assert planned.probe_epochs == (17, 40)
    assert low == pytest.approx(planned.probe_setup_seconds + 17 * planned.probe_seconds_per_epoch)
    assert high == pytest.approx(planned.probe_setup_seconds + 40 * planned.probe_seconds_per_epoch)
    main(
        ["plan", "--model", str(config_70b), "--sentences", "100000", "--vocab", "full", "--gpus", "8", "--gpu", "h200"]
    )
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("  in total"))
    from fastmi.planning.planner import PROBE_EPOCHS_SOURCE

    assert f"for 17-40 epochs ({PROBE_EPOCHS_SOURCE})" in total
    assert "a few epochs" not in out


def test_plan_wording_counts_gpus_once_states_the_headroom_and_pluralises(config_70b, capsys):
    one = fastmi.plan(config_70b, sentences=10_000, vocab="full", gpus=1, gpu="h200")
    assert one.offload == "cpu" and one.offloaded_bytes == pytest.approx(1.15 * one.weight_bytes - 141e9, abs=1)
    (tip,) = [t for t in one.advice if "offload" in t]
    assert tip.startswith("the weights (139 GB) need 160 GB with 15% headroom for activations and buffers, ")
    assert "more than 1 GPU of 141 GB" in tip and "2 GPUs would hold them" in tip and " x " not in tip
    main(["plan", "--model", str(config_70b), "--sentences", "10000", "--vocab", "top:512", "--gpus", "2", *H200])
    out = capsys.readouterr().out
    assert "placement    estimate: 1 data-parallel replica x 2 GPUs, no offload;" in out
    assert "(s)" not in out and "1 GPUs" not in out
    hardware = next(line for line in out.splitlines() if line.startswith("hardware"))
    assert hardware.startswith("hardware     2 GPUs, 141 GB each, 593 TFLOP/s per GPU (given memory, given ")
    assert hardware.count("GPU") == 2  # the count once, then the rate per GPU


def test_sampled_k_not_below_the_alphabet_is_refused_in_one_line(config_70b, capsys):
    with pytest.raises(ValueError, match=r"K = 8,192 negatives from an alphabet of only M = 512 ids; use 'full'"):
        fastmi.plan(config_70b, sentences=1000, vocab="top:512", train_softmax="sampled:8192", gpus=1, gpu="h200")
    args = ["plan", "--model", str(config_70b), "--sentences", "1000", "--vocab", "top:512", "--gpu", "h200"]
    assert main([*args, "--train-softmax", "sampled:512"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sampled:512" in err
    small = fastmi.plan(config_70b, sentences=1000, vocab="top:4096", gpu="h200")
    assert [alt.get("train_softmax") for alt in small.alternatives] == [None]  # no sampled:8192 of 4,096 ids
    fine = fastmi.plan(config_70b, sentences=1000, vocab="top:512", train_softmax="sampled:511", gpu="h200")
    assert math.isfinite(fine.probe_seconds_per_epoch)
