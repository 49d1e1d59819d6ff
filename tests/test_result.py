"""RecoverabilityResult: table, CSV and JSON round trips, several models, plots."""

import json

import matplotlib.image
import numpy as np
import pytest

from fastmi.results.columns import SEED_COLUMNS
from fastmi.results.plot import bounds_figure
from fastmi.results.result import COLUMNS, RecoverabilityResult
from fastmi.stats.bounds import layer_bounds


def _result(model, layers, seed, vocab="observed", M=300):
    """A result with real bounds computed from random per-sentence statistics."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(layers + 1):
        errors = rng.random(60) * (0.4 + 0.5 * rng.random())
        bounds = layer_bounds(errors, errors * 0.5, rng.random(60) * 6, 6.5, M, 5, n_bootstrap=200)
        rows.append(
            dict(
                model=model,
                revision="main",
                layer=layer,
                rel_depth=layer / layers,
                pooling="mean",
                vocab=vocab,
                M=np.int64(M),
                n_train=240,
                n_test=60,
                n_skipped=1,
                bag_recall=0.4,
                **bounds,
            )
        )
    rows.reverse()  # rows come back sorted by layer whatever the order given
    return RecoverabilityResult(rows, {"seed": 0, "model": model, "test_fraction": 0.2, "layers": [0, layers]})


def test_table_columns_and_types():
    result = _result("a", 3, 0)
    # probe_seeds and the *_seed_sd columns come only with several probes per layer
    one_probe = [c for c in COLUMNS if c != "probe_seeds" and c not in SEED_COLUMNS]
    assert result.columns == one_probe
    assert [row["layer"] for row in result.table] == [0, 1, 2, 3]
    row = result.table[0]
    assert list(row) == one_probe and type(row["M"]) is int and type(row["fano_lcb"]) is float
    assert result.models == ["a"] and len(result) == 4
    text = result.format_table()
    lines = text.splitlines()
    assert len(lines) == 2 + 4 and lines[0].split()[:3] == ["model", "layer", "rel_depth"]
    assert result.format_table(["layer", "p_error"]).splitlines()[2].split()[0] == "0"
    with pytest.raises(ValueError, match="unknown columns"):
        result.format_table(["nope"])


def test_vacuous_bounds_read_vacuous():
    rows = [dict(model="m", layer=0, rel_depth=0.0,
                 **layer_bounds(np.full(20, 0.99), np.full(20, 0.9), np.full(20, 5.0), 1.0, 50, 5))]  # fmt: skip
    text = RecoverabilityResult(rows).format_table(["layer", "fano_lcb", "variational_lcb_frac", "p_error"])
    assert text.splitlines()[2].split() == ["0", "vacuous", "vacuous", "0.990"]


def test_json_round_trip(tmp_path):
    result = _result("a", 3, 0)
    path = result.to_json(tmp_path / "out" / "result.json")
    document = json.loads(path.read_text())
    assert document["seed"] == 0 and document["fastmi_version"] and document["config"]["test_fraction"] == 0.2
    back = RecoverabilityResult.from_json(path)
    assert back.table == result.table and back.config == result.config
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no temporary file left behind


def test_csv_round_trip(tmp_path):
    result = _result("a", 3, 0)
    rows = result.table
    rows[1]["bag_recall"] = None  # a missing value survives as missing
    result = RecoverabilityResult(rows, result.config)
    back = RecoverabilityResult.from_csv(result.to_csv(tmp_path / "result.csv"))
    assert back.table == result.table
    one_probe = [c for c in COLUMNS if c != "probe_seeds" and c not in SEED_COLUMNS]
    assert (tmp_path / "result.csv").read_text().splitlines()[0] == ",".join(one_probe)


def test_concat_and_for_model(tmp_path):
    a, b = _result("a", 3, 0), _result("b", 6, 1, M=400)
    both = RecoverabilityResult.concat([a, b])
    assert both.models == ["a", "b"] and len(both) == 4 + 7
    # Shared settings at the top, each model's own under per_model; for_model gives them back.
    assert both.config["test_fraction"] == 0.2 and both.config["per_model"]["b"] == {"model": "b", "layers": [0, 6]}
    for part in (a, b):
        name = part.models[0]
        assert both.for_model(name).table == part.table and both.for_model(name).config == part.config
    again = RecoverabilityResult.from_json(both.to_json(tmp_path / "both.json"))
    assert again.for_model("b").config == b.config
    with pytest.raises(ValueError, match="more than one result"):
        RecoverabilityResult.concat([a, a])
    with pytest.raises(KeyError, match="no model 'c'"):
        both.for_model("c")


def test_bad_rows():
    with pytest.raises(ValueError, match="duplicate row"):
        RecoverabilityResult([dict(model="a", layer=0), dict(model="a", layer=0)], {})
    with pytest.raises(ValueError, match="has no layer"):
        RecoverabilityResult([dict(model="a")], {})


@pytest.mark.parametrize("bound,fraction", [("fano", False), ("all", False), ("variational", True)])
def test_plot_lines(bound, fraction, tmp_path):
    both = RecoverabilityResult.concat([_result("a", 3, 0), _result("b", 6, 1)])
    fig = bounds_figure(both, bound=bound, fraction=fraction)
    panels = 3 if bound == "all" else 1
    assert len(fig.axes) == panels
    for ax in fig.axes:
        # One line per model, plus the H(T) ceiling per model (one shared line at 1 for fractions).
        assert len(ax.lines) == 2 + (1 if fraction else 2)
        assert len(ax.collections) == 2  # the shaded confidence bands
        assert "relative depth" in ax.get_xlabel()
    assert ("fraction of H(T)" if fraction else "[bits]") in fig.axes[0].get_ylabel()
    path = both.plot(tmp_path / "plots" / f"{bound}.png", bound=bound, fraction=fraction)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image[..., :3].std() > 0.05


def test_plot_bad_input(tmp_path):
    with pytest.raises(ValueError, match="bound must be"):
        _result("a", 2, 0).plot(tmp_path / "x.png", bound="mine")
    with pytest.raises(ValueError, match="rel_depth"):
        RecoverabilityResult([dict(model="a", layer=0, H_T=1.0)]).plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
