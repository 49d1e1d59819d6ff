"""Sweeps: several models on one corpus, every model scored on the same held-out sentences.

An output directory holds everything a sweep makes and is its checkpoint::

    OUT/split.json             the train / validation / held-out split of the corpus (written with the results)
    OUT/cache/<slug>/          each model's activation cache (extraction resumes in it)
    OUT/models/<slug>/<setting>.json   each model's finished result for one probe setting (e.g.
                               vocab-top512-1a2b3c4d.json), reused when its settings match; a rerun with
                               another --vocab adds a file beside it and never overwrites it
    OUT/results.{csv,json,png} all models together, for the settings of the latest run

Rerunning a finished sweep reads its caches and results and redoes nothing.  Under torchrun every
rank extracts its shards and probes its layer groups of each model in turn; rank 0 alone writes
split.json and the results (docs/distributed.md).  Every argument is checked before a model loads
or a file is written: the probe settings by :class:`fastmi.probe.config.ProbeConfig` as they are
made, the rest by :mod:`fastmi.runtime.preflight`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastmi.data.corpus import Corpus
from fastmi.data.split import Split
from fastmi.defaults import DEFAULT_MAX_LENGTH
from fastmi.probe.config import ProbeConfig
from fastmi.results.result import RecoverabilityResult
from fastmi.runtime import distributed
from fastmi.runtime.files import content_hash
from fastmi.runtime.interrupts import note_kept
from fastmi.runtime.notices import notice

__all__ = [
    "ProbeConfig",
    "sweep",
    "result_stem",
    "probe_cache",
    "model_names",
    "model_slug",
    "renamed",
    "write_outputs",
    "load_or_make_split",
]


# ProbeConfig's name before it declared the settings for the API, sweeps and the CLI at once, kept so
# that scripts written against fastmi.sweep.ProbeSettings still run.
ProbeSettings = ProbeConfig


def result_stem(settings: ProbeConfig) -> str:
    """A file name for a model's results with these settings: the alphabet, readable, then a digest
    of every setting that changes the numbers (:meth:`ProbeConfig.key`)."""
    return f"vocab-{re.sub(r'[^A-Za-z0-9]+', '', settings.vocab)}-{content_hash(settings.key())[:8]}"


def model_names(specs: Sequence[str]) -> list[str]:
    """Each model's name in tables, plots and ``fastmi compare``: its short name
    (:func:`fastmi.models.loading.short_model_name`), or, where two clash, as many trailing folders of its
    path as tell them apart ("a/model", "b/model").  A function of the specs alone, so a rerun of
    the same sweep gives the same names."""
    from fastmi.models.loading import short_model_name

    names = [short_model_name(spec) for spec in specs]
    parts = [_path_parts(spec) for spec in specs]
    depth = 1
    while _clashing(names) and depth < max((len(p) for p in parts), default=0):
        depth += 1
        clash = _clashing(names)
        names = ["/".join(p[-depth:]) if name in clash and len(p) >= depth else name for name, p in zip(names, parts)]
    for name in _clashing(names):  # identical paths to the last folder: number them in order given
        indices = [i for i, n in enumerate(names) if n == name]
        for count, i in enumerate(indices[1:], start=2):
            names[i] = f"{name}-{count}"
    return names


def _path_parts(spec: str) -> list[str]:
    """The parts of a local model's absolute path, the .gguf suffix dropped; [] for an alias or hub id."""
    from fastmi.models.loading import DEMO_MODELS, is_local_spec

    if spec in DEMO_MODELS or not is_local_spec(spec):
        return []
    path = Path(spec).expanduser().resolve()
    last = path.stem if path.suffix.lower() == ".gguf" else path.name
    return [*path.parent.parts[1:], last]


def _clashing(names: list[str]) -> set[str]:
    return {name for name in names if names.count(name) > 1}


def model_slug(spec: str) -> str:
    """A directory name for a model spec: "org/name" -> "org--name", a path -> its last part."""
    text = str(spec).rstrip("/\\")
    if Path(text).expanduser().exists():
        text = Path(text).expanduser().name
    return _slug_of(text)


def _slug_of(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "--")) or "model"


def load_or_make_split(out: Path, num_rows: int, fingerprint: str | None, settings: ProbeConfig) -> Split:
    """OUT/split.json if it exists (and fits this corpus and these settings), else a new split (saved
    with the results by :func:`write_outputs`, so a failed run leaves no split.json behind; a split is
    a pure function of the corpus size and the settings, so a rerun after an interrupt, and every rank
    of a multi-process run, makes the same one)."""
    path = out / "split.json"
    if not path.exists():
        return settings.make_split(num_rows, fingerprint)
    split = Split.load(path)
    try:
        split.check(num_rows, fingerprint)
    except ValueError as err:
        raise ValueError(f"{path} belongs to another corpus ({err}); use a new --out directory") from None
    made = {name: getattr(split, name) for name in ("seed", "test_fraction", "validation_fraction")}
    if made != {name: getattr(settings, name) for name in made}:
        stated = ", ".join(f"{name}={value}" for name, value in made.items())
        raise ValueError(f"{path} was made with {stated}; use those or a new --out directory")
    return split


def probe_cache(
    cache: Any,
    split: Split,
    settings: ProbeConfig,
    done_path: Path | None = None,
    progress: bool = True,
    layers: Sequence[int] | None = None,
    name: str | None = None,
) -> RecoverabilityResult:
    """Probe ``layers`` (default: all) of one cache on ``split``; reuse ``done_path`` if it holds a
    result of the same settings.  ``name``: the model's name in the result (default: its short name)."""
    from fastmi.data.alphabet import alphabet_rule
    from fastmi.models.loading import short_model_name
    from fastmi.probe.recoverability import recoverability

    name = name or short_model_name(cache.metadata.get("model") or "model")

    identity = {
        key: cache.metadata.get(key)
        for key in (
            "model",
            "revision",
            "dtype",
            "cache_dtype",
            "pooling",
            "max_length",
            "corpus_fingerprint",
            "num_rows",
        )
    }
    wanted = {"settings": settings.key(), "split": split.to_dict(), "cache": identity}
    # The alphabet rule (docs/theory.md §7) is part of a result's identity: one made when the alphabet
    # was built from every sentence, held-out ones included, has no "alphabet_rule" and is redone.
    wanted["alphabet_rule"] = alphabet_rule(settings.vocab)
    probed = sorted(int(layer) for layer in (cache.layers if layers is None else layers))
    # Every layer of the model leaves the key as results have always had it, so those stay reusable.
    if _layers_suffix(probed, int(cache.metadata.get("num_layers") or max(cache.layers))):
        wanted["layers"] = probed
    if done_path is not None and done_path.exists():
        previous = RecoverabilityResult.from_json(done_path)
        if previous.config.get("sweep_key") == _jsonable(wanted) and previous.held_out:  # held_out: for comparisons
            notice(f"{name}: reusing the finished results in {done_path}")
            return renamed(previous, name)
        older = {key: value for key, value in wanted.items() if key != "alphabet_rule"}
        if previous.config.get("sweep_key") == _jsonable(older):
            notice(f"{name}: {done_path} was made under the older alphabet rule (held-out ids included); recomputing")
    result = recoverability(cache, settings, split=split, progress=progress, layers=layers, model=name)
    result.config["sweep_key"] = _jsonable(wanted)
    if done_path is not None:
        distributed.on_main(result.to_json, done_path)
    return result


def renamed(result: RecoverabilityResult, name: str) -> RecoverabilityResult:
    """``result`` (one model's) under the model name ``name``: a stored result made when the model
    went by another name (its full path, or a name since disambiguated) reads like a fresh one."""
    if result.models == [name]:
        return result
    if len(result.models) != 1:
        raise ValueError(f"renamed takes one model's result, not {result.models}")
    rows = [{**row, "model": name} for row in result.table]
    config = {**result.config, "model": name}
    curves = [{**curve, "model": name} for curve in result.curves]
    held_out = {name: next(iter(result.held_out.values()))} if result.held_out else None
    return RecoverabilityResult(rows, config, held_out, curves)


def _jsonable(value: Any) -> Any:
    """The value as it reads back from JSON (tuples become lists), so stored keys compare equal."""
    import json

    return json.loads(json.dumps(value))


def sweep(
    models: Sequence[str],
    corpus: Corpus | str,
    out: str | Path,
    settings: ProbeConfig | None = None,
    max_sentences: int | None = None,
    pooling: str = "mean",
    layers: str | Sequence[int] = "all",
    batch_size: int = 32,
    max_length: int = DEFAULT_MAX_LENGTH,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    cache_dtype: str = "fp32",
    load_options: dict | None = None,
    field: str = "text",
    shard_rows: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> RecoverabilityResult:
    """Extract (or reuse) each model's cache under ``out``, probe all on one split, write the results.

    ``revision`` pins the commit of the hub ids among ``models`` (local models have none);
    ``field`` is the JSON field of a .jsonl corpus; ``shard_rows`` is passed to :func:`fastmi.extract`.
    ``load_options``: keyword arguments for :func:`fastmi.load_model` (device, max_memory,
    offload_dir, gpus), for models placed by accelerate; default: ``settings.device``.
    """
    from fastmi.activations.extraction import extract, parse_layers
    from fastmi.models.loading import is_local_spec, load_model
    from fastmi.runtime.preflight import (
        check_extraction_arguments,
        check_output_dir,
        resolve_device,
    )

    if not models:
        raise ValueError("a sweep needs at least one model")
    _refuse_duplicates(models)
    names = model_names(models)
    slugs = _slugs(models, names)
    settings = settings or ProbeConfig()
    # The config checked its settings as it was made; the device must also exist here, before any
    # extraction: a bad setting must not cost minutes.
    resolve_device(settings.device)
    out = Path(out)
    check_output_dir(out)
    blocks = check_extraction_arguments(
        models, layers, pooling, batch_size, max_length, shard_rows, revision, trust_remote_code, settings.device
    )
    if not isinstance(corpus, Corpus):
        corpus = Corpus.load(corpus, field=field, max_sentences=max_sentences)
    elif max_sentences is not None:
        corpus = corpus.head(max_sentences)
    split = load_or_make_split(out, len(corpus), corpus.fingerprint, settings)
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for spec, name, slug in zip(models, names, slugs):
        cache_dir = out / "cache" / slug
        rev = None if is_local_spec(spec) else revision
        cache = (
            None
            if overwrite
            else _finished_cache(cache_dir, corpus, pooling, layers, max_length, dtype, cache_dtype, rev)
        )
        if cache is None:  # the model is loaded only when there is something to extract
            options = load_options or {"device": resolve_device(settings.device)}
            model = load_model(
                spec, dtype=dtype, revision=rev, trust_remote_code=trust_remote_code, progress=progress, **options
            )
            cache = extract(
                model,
                corpus,
                pooling=pooling,
                layers=layers,
                cache_dir=cache_dir,
                resume=True,
                overwrite=overwrite,
                batch_size=batch_size,
                max_length=max_length,
                progress=progress,
                cache_dtype=cache_dtype,
                shard_rows=shard_rows,
            )
            del model
        else:
            notice(f"{spec}: the activation cache in {cache_dir} is complete; not loading the model")
        wanted = parse_layers(layers, blocks[spec])
        done_path = out / "models" / slug / f"{result_stem(settings)}{_layers_suffix(wanted, blocks[spec])}.json"
        results.append(probe_cache(cache, split, settings, done_path, progress=progress, layers=wanted, name=name))
        note_kept(out / "models", f"the results of {len(results)} of {len(models)} models")
    combined = RecoverabilityResult.concat(results)
    write_outputs(combined, out, split)
    return combined


def _refuse_duplicates(models: Sequence[str]) -> None:
    """The same model twice ("minilm" twice, or "./m" and its absolute path) is a mistake."""
    from fastmi.models.loading import DEMO_MODELS, is_local_spec

    seen = [
        str(Path(m).expanduser().resolve()) if m not in DEMO_MODELS and is_local_spec(m) else str(m) for m in models
    ]
    if len(set(seen)) != len(seen):
        raise ValueError(f"models {list(models)} are not distinct")


def _slugs(models: Sequence[str], names: Sequence[str]) -> list[str]:
    """Each model's folder under OUT: from its spec as before (so earlier sweeps are found again),
    from its disambiguated name where two specs share one."""
    slugs = [model_slug(m) for m in models]
    slugs = [_slug_of(name) if slugs.count(slug) > 1 else slug for slug, name in zip(slugs, names)]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"models {list(models)} would share a folder under the output directory ({slugs})")
    return slugs


def _layers_suffix(layers: Sequence[int], num_layers: int) -> str:
    """'' for every layer (the file name results have always had), else e.g. '-layers-0_6'."""
    from fastmi.activations.cache import format_layers

    if list(layers) == list(range(num_layers + 1)):
        return ""
    return "-layers-" + re.sub(r"[^0-9-]+", "_", format_layers(list(layers)))


def _finished_cache(
    directory: Path,
    corpus: Corpus,
    pooling: str,
    layers,
    max_length: int,
    dtype: str | None,
    cache_dtype: str = "fp32",
    revision: str | None = None,
):
    """The cache in ``directory`` if it is complete for these settings, else None (extract decides).

    The directory is the model's own (OUT/cache/<slug>), so the model is not reloaded to check
    its identity: that is what makes a rerun of a finished sweep take seconds.
    """
    from fastmi.activations.cache import ActivationCache, resolve_cache_dtype
    from fastmi.activations.extraction import parse_layers

    if not (directory / "manifest.json").is_file():
        return None
    try:
        cache = ActivationCache.open(directory)
        meta = cache.metadata
        wanted = parse_layers(layers, int(meta["num_layers"]))
    except (ValueError, KeyError, OSError):
        return None
    same = (
        meta.get("corpus_fingerprint") == corpus.fingerprint
        and meta.get("pooling") == pooling
        and int(meta.get("max_length", -1)) == max_length
        and (dtype is None or meta.get("dtype") == dtype)
        and cache.cache_dtype == resolve_cache_dtype(cache_dtype)
        and (revision is None or meta.get("revision") == revision)
    )
    return cache if same and set(wanted) <= set(cache.layers) else None


def write_outputs(result: RecoverabilityResult, out: Path, split: Split | None = None) -> dict[str, Path]:
    """results.csv, results.json, results.png (and split.json) under ``out``; rank 0 writes them
    (every rank holds the same result) while the others wait."""
    paths = {name: out / f"results.{name}" for name in ("csv", "json", "png")}
    if split is not None:
        paths["split"] = out / "split.json"
    distributed.on_main(_write_files, result, split, paths)
    distributed.barrier()  # nobody reads the results before rank 0 has written them
    return paths


def _write_files(result: RecoverabilityResult, split: Split | None, paths: dict[str, Path]) -> None:
    paths["csv"].parent.mkdir(parents=True, exist_ok=True)
    result.to_csv(paths["csv"])
    result.to_json(paths["json"])
    result.plot(paths["png"])
    if split is not None:
        split.save(paths["split"])


def print_summary(result: RecoverabilityResult, paths: dict[str, Path], stream=None) -> None:
    from fastmi.results.advice import vacuous_hint

    stream = stream or sys.stdout
    print(result.format_table(), file=stream)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()), file=stream)
    hint = vacuous_hint(result)
    if hint:
        print(hint, file=stream)
