"""`gan-pipe score`: metrics on sample files, checked against independent references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats as st
from scipy.special import logsumexp
from typer.testing import CliRunner

from gan_pipe.cli import app

runner = CliRunner()


def _score(*args):
    res = runner.invoke(app, ["score", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_1d_divergences_match_closed_forms(tmp_path):
    # Quantile samples of N(4, .5) and N(4, .05): exact up to discretisation.
    q = (np.arange(20000) + 0.5) / 20000
    np.save(tmp_path / "real.npy", st.norm.ppf(q, 4, 0.5))
    np.save(tmp_path / "fake.npy", st.norm.ppf(q, 4, 0.05))
    out = _score(
        "--real",
        str(tmp_path / "real.npy"),
        "--fake",
        str(tmp_path / "fake.npy"),
        "-m",
        "divergences",
        "-p",
        "divergences.n_samples=20000",
    )
    assert out["w1"] == pytest.approx(0.45 * np.sqrt(2 / np.pi), rel=2e-3)  # 0.35905
    assert out["std_ratio"] == pytest.approx(0.1, rel=1e-2)
    assert 0 < out["js"] <= np.log(2)
    assert out["kl_inf"] == 1.0  # the narrow fake leaves real bins empty: flagged, not NaN


def test_parzen_through_score_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.random((220, 6))
    fake = rng.random((300, 6))
    np.save(tmp_path / "r.npy", real)
    np.save(tmp_path / "f.npy", fake)
    out = _score(
        "--real",
        str(tmp_path / "r.npy"),
        "--fake",
        str(tmp_path / "f.npy"),
        "-p",
        "parzen.n_samples=300",
        "-p",
        "parzen.sigma=0.3",
    )
    test = real[np.random.default_rng(0).permutation(220)[22:]]  # a random 10% is validation
    d2 = ((test[:, None, :] - fake[None, :, :]) ** 2).sum(-1)
    s = 0.3
    ll = logsumexp(-d2 / (2 * s * s), axis=1) - np.log(300) - 3 * np.log(2 * np.pi * s * s)
    assert out["parzen_ll"] == pytest.approx(ll.mean(), rel=1e-5)
    assert out["parzen_ll_se"] == pytest.approx(ll.std() / np.sqrt(len(ll)), rel=1e-4)
    assert out["parzen_n_test"] == 198


def test_modes_with_known_dataset(tmp_path):
    from gan_pipe.manager import load_plugins

    reg = load_plugins(entry_points=False).registry
    ring = reg.get("dataset", "ring8")
    ds = ring.factory(ring.params())
    np.save(tmp_path / "r.npy", ds.test[:2500].numpy())
    np.save(tmp_path / "f.npy", np.zeros((2500, 2)) + ds.info["modes"][0])
    out = _score(
        "--real",
        str(tmp_path / "r.npy"),
        "--fake",
        str(tmp_path / "f.npy"),
        "-m",
        "modes",
        "--dataset",
        "ring8",
    )
    assert out["modes"] == 1 and out["hq_fraction"] == 1.0


def test_bad_inputs(tmp_path):
    a, b, junk = (str(tmp_path / n) for n in ("a.npy", "b.npy", "junk.npy"))
    np.save(a, np.zeros((10, 3)))
    np.save(b, np.zeros((10, 4)))
    (tmp_path / "junk.npy").write_text("not numpy")
    cases = [
        (["--real", a, "--fake", b], "shape"),
        (["--real", a, "--fake", a, "-m", "parzn"], "did you mean 'parzen'"),
        (["--real", junk, "--fake", a], "not a .npy"),
        (["--real", a, "--fake", a, "-p", "parzen.bogus=1"], "bogus"),
        (["--real", a, "--fake", a, "--range", "0"], "expected two numbers"),
        (["--real", str(tmp_path / "missing.npy"), "--fake", a], "not found"),
    ]
    for args, expected in cases:
        res = runner.invoke(app, ["score", *args])
        assert res.exit_code == 2, (args, res.output)
        assert expected in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_notes_warn_about_range_and_sigma_at_grid_edge(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r.npy", rng.normal(4, 0.5, (400, 1)))
    np.save(tmp_path / "f.npy", rng.normal(4, 0.5, (400, 1)))
    res = runner.invoke(
        app,
        [
            "score",
            "--real",
            str(tmp_path / "r.npy"),
            "--fake",
            str(tmp_path / "f.npy"),
            "-p",
            "parzen.n_samples=400",
        ],
    )
    assert res.exit_code == 0
    assert "outside --range 0,1" in res.output
    assert res.output.count("asked for") == 0
    # Points 0.001 apart want a sigma far below the grid's smallest, 0.1.
    np.save(tmp_path / "r.npy", rng.normal(0.5, 0.001, (400, 1)))
    np.save(tmp_path / "f.npy", rng.normal(0.5, 0.001, (400, 1)))
    res = runner.invoke(
        app, ["score", "--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy")]
    )
    assert "outside --range" not in res.output
    assert "sigma 0.1 is at the edge of the grid" in res.output
    assert res.output.count("parzen asked for 10000 generated samples") == 1
