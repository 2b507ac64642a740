"""`gan-pipe score`: metrics on sample files, checked against independent references."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.special import logsumexp
from typer.testing import CliRunner

from gan_pipe.cli import app
from gan_pipe.errors import UserError

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


# ------------------------------------------------------------------ reading the files
def _run(*args):
    """``gan-pipe score ARGS`` with any RuntimeWarning turned into an error (exit 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return runner.invoke(app, ["score", *args])


def _rejected(res, *expected):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "recipe" not in res.output, res.output
    for text in expected:
        assert text in res.output, (text, res.output)


def test_nonfinite_rows_are_rejected_in_either_file(tmp_path):
    ok, bad_real, bad_fake = (str(tmp_path / n) for n in ("ok.npy", "r.npy", "f.npy"))
    x = np.random.default_rng(0).random((200, 3))
    np.save(ok, x)
    y = x.copy()
    y[7, 1] = np.nan
    np.save(bad_real, y)
    y[[3, 50], 0] = [np.inf, -np.inf]
    np.save(bad_fake, y)
    _rejected(_run("--real", bad_real, "--fake", ok), "--real", "r.npy has 1 row", "row 7", "NaN")
    for metric in ("parzen", "divergences"):  # divergences would drop them: not here
        res = _run("--real", ok, "--fake", bad_fake, "-m", metric)
        _rejected(res, "--fake", "f.npy has 3 rows (of 200; the first is row 3)", "drop them")


def test_values_beyond_float32_are_rejected_without_warnings(tmp_path):
    ok, over, huge = (str(tmp_path / n) for n in ("ok.npy", "over.npy", "huge.npy"))
    x = np.random.default_rng(0).random((200, 3))
    np.save(ok, x)
    y = x.copy()
    y[4, 2] = 1e300  # finite in float64, inf in float32
    np.save(over, y)
    np.save(huge, x * 1e30)  # finite in float32, but its squared distances are not
    _rejected(_run("--real", ok, "--fake", over), "--fake", "up to 1e+300", "even float64")
    _rejected(_run("--real", over, "--fake", ok), "--real", "up to 1e+300")
    _rejected(_run("--real", huge, "--fake", ok), "--real", "up to 1e+30", "--range LO,HI")
    # in their own range they are fine
    res = _run("--real", huge, "--fake", huge, "--range", "0,1e30", "--json")
    assert res.exit_code == 0, res.output
    assert np.isfinite(json.loads(res.stdout)["parzen_ll"])


def test_files_that_are_not_numeric_arrays(tmp_path):
    ok = str(tmp_path / "ok.npy")
    np.save(ok, np.zeros((10, 2)))
    np.save(tmp_path / "complex.npy", np.zeros((10, 2)) + 1j)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, 2], dtype=object), allow_pickle=True)
    (tmp_path / "text.npy").write_text("0.1 0.2\n0.3 0.4\n")
    with open(tmp_path / "pickled.npy", "wb") as f:
        pickle.dump(np.zeros((10, 2)), f)
    np.save(tmp_path / "empty.npy", np.zeros((10, 0)))
    cases = {
        "complex.npy": "holds complex values",
        "objects.npy": "holds Python objects",
        "text.npy": "is not a .npy/.npz array file (no numpy header",
        "pickled.npy": "is not a .npy/.npz array file (no numpy header",
        "empty.npy": "at least 2 samples as rows of at least one value",
    }
    for name, expected in cases.items():
        path = str(tmp_path / name)
        _rejected(_run("--real", ok, "--fake", path), f"--fake: {path}", expected)
        assert "pickled (object) data" not in _run("--real", path, "--fake", ok).output


# ------------------------------------------------------------------ options
def test_bad_ranges_and_params_say_what_is_wrong(tmp_path):
    a = str(tmp_path / "a.npy")
    np.save(a, np.random.default_rng(0).random((50, 2)))
    files = ["--real", a, "--fake", a]
    for value in ("1,0", "0,0", "-1,inf", "nan,1", "0,nan"):
        _rejected(_run(*files, "--range", value), f"--range {value!r}")
    _rejected(_run(*files, "--range", "1,0"), "LO must be below HI, e.g. 0,1")
    _rejected(_run(*files, "--range", "-1,inf"), "finite")
    cases = [
        (["-p", "parzen.sigma"], "--param 'parzen.sigma': expected METRIC.KEY=VALUE"),
        (["-p", "parzen=1"], "expected METRIC.KEY=VALUE"),
        (["-p", "parzen.sigmas=[0.1"], "the value is not valid TOML"),
        (["-m", "modes", "-p", "divergences.bins=3"], "divergences was not selected with -m"),
        (["-p", "parzn.sigma=1"], "did you mean 'parzen'"),
    ]
    for args, expected in cases:
        res = _run(*files, *args)
        _rejected(res, expected)
        assert "MLflow" not in res.output and "--set" not in res.output


def test_a_metric_named_twice_runs_once(tmp_path, monkeypatch):
    from gan_pipe.plugins.metrics import parzen

    calls = []
    compute = parzen.ParzenMetric.compute
    monkeypatch.setattr(
        parzen.ParzenMetric, "compute", lambda self, ctx: calls.append(1) or compute(self, ctx)
    )
    a = str(tmp_path / "a.npy")
    np.save(a, np.random.default_rng(0).random((50, 2)))
    out = _score("--real", a, "--fake", a, "-m", "parzen", "-m", "parzen", "-m", "parzen")
    assert len(calls) == 1 and "parzen_ll" in out


def test_two_metrics_reporting_one_key_is_an_error(tmp_path):
    from gan_pipe.manager import load_plugins
    from gan_pipe.registry import Component
    from gan_pipe.scoring import score

    class Constant:
        def __init__(self, params):
            pass

        def compute(self, ctx):
            return {"shared": 1.0}

    reg = load_plugins(entry_points=False).registry
    for name in ("one", "two"):
        reg.add(Component(kind="metric", name=name, factory=Constant, plugin="test"))
    np.save(tmp_path / "a.npy", np.zeros((10, 2)))
    a = tmp_path / "a.npy"
    with pytest.raises(UserError, match="-m one and -m two both report 'shared'"):
        score(reg, a, a, ["one", "two"])
    assert score(reg, a, a, ["one", "one"])[0] == {"shared": 1.0}


# ------------------------------------------------------------------ --dataset
def _dataset(name, **params):
    from gan_pipe.manager import load_plugins

    comp = load_plugins(entry_points=False).registry.get("dataset", name)
    return comp.factory(comp.params(**params))


def _split(n):
    """(validation, test) row indices of a real file of n rows, as score splits it."""
    perm = np.random.default_rng(0).permutation(n)
    return perm[: max(1, n // 10)], perm[max(1, n // 10) :]


def test_dataset_never_replaces_the_real_rows(tmp_path):
    # gaussian-1d is N(4, 0.5) and has a sampler; the files are N(0, 1). Every real row the
    # metrics see must be the file's: W1 and Parzen's splits say which rows were used.
    rng = np.random.default_rng(1)
    real, fake = rng.normal(0, 1, 1000), rng.normal(0, 1, 400)
    np.save(tmp_path / "r.npy", real)
    np.save(tmp_path / "f.npy", fake)
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy")]
    out = _score(*files, "--dataset", "gaussian-1d", "-m", "divergences", "-m", "parzen")
    _, test = _split(1000)
    assert out["w1"] == pytest.approx(st.wasserstein_distance(real[test], fake), rel=1e-6)
    assert out["parzen_n_val"] == 100 and out["parzen_n_test"] == 900
    assert "kl_kde" in out  # the dataset's density is still used


def test_range_with_dataset_is_rejected_unless_it_is_the_datasets(tmp_path):
    x = _dataset("ring8", n_train=10, n_val=0).test[:300].numpy()
    np.save(tmp_path / "r.npy", x)
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "r.npy")]
    _rejected(
        _run(*files, "--dataset", "ring8", "-m", "modes", "--range", "-1,1"),
        "--range cannot be combined with --dataset ring8",
        "-1.04,1.04",
    )
    res = _run(*files, "--dataset", "ring8", "-m", "modes", "--range", "-1.04,1.04")
    assert res.exit_code == 0, res.output


def test_the_registered_dataset_object_is_not_changed(tmp_path):
    from gan_pipe.manager import load_plugins
    from gan_pipe.registry import Component
    from gan_pipe.scoring import score

    ds = _dataset("gaussian-1d", n_train=500, n_val=100, n_test=100)
    before = {"test": ds.test.clone(), "val": ds.val.clone(), "info": dict(ds.info)}
    sample = ds.sample
    reg = load_plugins(entry_points=False).registry
    reg.add(Component(kind="dataset", name="shared", factory=lambda p: ds, plugin="test"))
    np.save(tmp_path / "r.npy", np.random.default_rng(0).normal(4, 0.5, 300))
    r = tmp_path / "r.npy"
    values, _ = score(reg, r, r, ["divergences", "modes"], dataset="shared")
    assert values["modes"] == 1
    assert torch.equal(ds.test, before["test"]) and torch.equal(ds.val, before["val"])
    assert ds.info == before["info"] and ds.sample is sample


def test_rows_must_have_the_datasets_shape(tmp_path):
    one, two = str(tmp_path / "one.npy"), str(tmp_path / "two.npy")
    np.save(one, np.random.default_rng(0).normal(size=300))
    np.save(two, np.random.default_rng(0).normal(size=(300, 2)))
    cases = [
        (two, "gaussian-1d", "rows of shape (2,) (2 values), but dataset 'gaussian-1d' has"),
        (one, "ring8", "rows of shape (1,) (1 value), but dataset 'ring8' has samples"),
        (one, "digits", "of shape (1, 28, 28) (784 values)"),
    ]
    for path, name, expected in cases:
        _rejected(_run("--real", path, "--fake", path, "-m", "fid", "--dataset", name), expected)


def test_modes_and_fid_say_to_pass_a_dataset(tmp_path):
    a = str(tmp_path / "a.npy")
    np.save(a, np.random.default_rng(0).random((300, 2)))
    files = ["--real", a, "--fake", a]
    _rejected(_run(*files, "-m", "parzen", "-m", "modes"), "--dataset ring8|grid25|gaussian-1d")
    _rejected(_run(*files, "-m", "fid"), "-m fid needs labelled", "--dataset digits")
    _rejected(_run(*files, "-m", "fid", "--dataset", "ring8"), "dataset 'ring8' has none")


def test_fid_with_digits_scores_any_number_of_real_rows(tmp_path):
    # The real file has all 1,297 training digits (not the 300 of the test split the labels
    # belong to) and the fake file flat rows of 784 values; the classifier's accuracy is its
    # accuracy on the digits' own labelled test split.
    from gan_pipe.estimators import features
    from gan_pipe.plugins.metrics import frechet

    ds = _dataset("digits")
    np.save(tmp_path / "r.npy", ds.train.numpy())
    np.save(tmp_path / "f.npy", ds.val.numpy().reshape(len(ds.val), -1))
    args = ["-m", "fid", "--dataset", "digits", "-p", "fid.epochs=1", "-p", "fid.n_samples=200"]
    args += ["-p", "fid.kid_subsets=5", "-p", f"fid.cache_dir={tmp_path}"]
    res = _run("--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy"), *args)
    assert res.exit_code == 0, res.output
    assert "reshaped to the sample shape (1, 28, 28) of dataset digits" in res.output
    out = dict(line.split() for line in res.stdout.splitlines())
    assert float(out["fid_n_samples"]) == 200 and float(out["fid_n_ref"]) == 200
    p = frechet.FrechetParams(epochs=1, n_samples=200, kid_subsets=5, cache_dir=str(tmp_path))
    model, cached, _ = features.load_or_train_classifier(ds, p, torch.device("cpu"))
    assert cached  # the classifier score trained: same data, same settings
    acc = features.classifier_accuracy(model, ds.to_unit(ds.test), ds.test_labels, "cpu")
    assert float(out["fid_classifier_acc"]) == pytest.approx(acc, abs=5e-6)


# ------------------------------------------------------------------ output
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_json_has_null_for_nonfinite_values(tmp_path):
    # a constant real file has std 0: divergences' std_ratio is inf
    np.save(tmp_path / "r.npy", np.zeros(100))
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=100))
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy")]
    res = runner.invoke(app, ["score", *files, "-m", "divergences", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert out["std_ratio"] is None and out["w1"] > 0


def test_plain_output_is_rounded_and_json_is_not(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r.npy", rng.normal(0, 1, 300))
    np.save(tmp_path / "f.npy", rng.normal(0.1, 1.3, 300))
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy")]
    plain = runner.invoke(app, ["score", *files, "-m", "divergences"]).stdout.splitlines()
    full = _score(*files, "-m", "divergences")
    assert [line.split()[0] for line in plain] == list(full)
    for line in plain:
        key, text = line.split()
        assert text == f"{full[key]:.6g}"
    assert any(len(repr(v)) > 10 for v in full.values())  # something was rounded


def test_range_note_only_for_metrics_that_use_the_range(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "r.npy", rng.normal(4, 0.5, (300, 1)))
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "r.npy")]
    res = runner.invoke(app, ["score", *files, "-m", "divergences"])
    assert res.exit_code == 0 and "outside --range" not in res.output
    res = runner.invoke(app, ["score", *files, "-m", "divergences", "-m", "parzen"])
    assert "real values span" in res.output and "outside --range 0,1; parzen maps" in res.output


def test_modes_reports_the_samples_it_had(tmp_path):
    ds = _dataset("ring8", n_train=10, n_val=0, n_test=1000)
    np.save(tmp_path / "r.npy", ds.test.numpy())
    np.save(tmp_path / "f.npy", ds.test[:300].numpy())
    files = ["--real", str(tmp_path / "r.npy"), "--fake", str(tmp_path / "f.npy")]
    out = _score(*files, "-m", "modes", "--dataset", "ring8")
    assert out["modes_n_samples"] == 300 and out["modes"] == 8


def test_help_lists_metrics_and_where_params_are():
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "Metrics (-m): divergences, fid, modes, parzen" in text
    assert "gan-pipe plugins --params" in text
    assert "It never replaces --real" in text and "gaussian-1d, grid25" in text
    assert runner.invoke(app, ["plugins", "--params"]).exit_code == 0  # the flag it names


def test_constant_real_data_is_scored_without_warnings(tmp_path):
    import warnings

    np.save(tmp_path / "real.npy", np.full(500, 3.0))
    np.save(tmp_path / "fake.npy", np.random.default_rng(0).normal(3.0, 0.1, 500))
    np.save(tmp_path / "same.npy", np.full(400, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        spread = _score(
            "--real",
            str(tmp_path / "real.npy"),
            "--fake",
            str(tmp_path / "fake.npy"),
            "-m",
            "divergences",
        )
        same = _score(
            "--real",
            str(tmp_path / "real.npy"),
            "--fake",
            str(tmp_path / "same.npy"),
            "-m",
            "divergences",
        )
    assert spread["std_ratio"] is None  # infinite: null in JSON, never NaN
    assert same["std_ratio"] == 1.0 and same["w1"] == 0.0 and same["tv"] == 0.0


def test_data_far_from_zero_keep_their_spread(tmp_path):
    """Samples are kept in float64: N(4, .5) and N(4, .05) shifted by 1e8 score as unshifted
    (a float32 cast would round both to a handful of values: KL ~ 0, std_ratio ~ 1)."""
    q = (np.arange(20000) + 0.5) / 20000
    wide, narrow = st.norm.ppf(q, 4, 0.5), st.norm.ppf(q, 4, 0.05)
    for offset in (0.0, 1e8):
        np.save(tmp_path / "w.npy", wide + offset)
        np.save(tmp_path / "n.npy", narrow + offset)
        out = _score(
            "--real",
            str(tmp_path / "w.npy"),
            "--fake",
            str(tmp_path / "n.npy"),
            "-m",
            "divergences",
            "-p",
            "divergences.n_samples=20000",
        )
        assert out["kl_gauss"] == pytest.approx(47.197, rel=0.01)
        assert out["std_ratio"] == pytest.approx(0.1, rel=0.01)
        assert out["w1"] == pytest.approx(0.35905, rel=0.01)


def test_real_rows_that_do_not_fit_the_dataset_density_get_a_note(tmp_path):
    """--dataset gaussian-1d is N(4, .5): its own kind of rows pass silently; N(0, 1) rows get
    a note that the KDE KLs use the dataset's density, not the rows."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "fits.npy", rng.normal(4, 0.5, 3000))
    np.save(tmp_path / "off.npy", rng.normal(0, 1, 3000))
    for real, noted in (("fits.npy", False), ("off.npy", True)):
        res = runner.invoke(
            app,
            [
                "score",
                "--real",
                str(tmp_path / real),
                "--fake",
                str(tmp_path / "fits.npy"),
                "-m",
                "divergences",
                "--dataset",
                "gaussian-1d",
            ],
        )
        assert res.exit_code == 0, res.output
        assert ("do not look like samples of gaussian-1d" in res.output) == noted


def test_image_rows_of_any_layout_are_reshaped_to_the_dataset(tmp_path):
    """(N, 28, 28) rows for digits' (1, 28, 28) are reshaped with a note; without --dataset
    two layouts of the same size are an error that says so."""
    x = np.random.default_rng(0).random((40, 28, 28)).astype(np.float32) * 2 - 1
    np.save(tmp_path / "hw.npy", x)
    np.save(tmp_path / "chw.npy", x[:, None])
    hw, chw = str(tmp_path / "hw.npy"), str(tmp_path / "chw.npy")
    res = _run("--real", hw, "--fake", chw, "-m", "divergences", "--dataset", "digits", "--json")
    assert res.exit_code == 0, res.output
    assert "reshaped to the sample shape (1, 28, 28)" in res.output
    assert json.loads(res.stdout)["div_n_samples"] == 40  # every fake row was scored
    _rejected(_run("--real", hw, "--fake", chw), "same number of values")


def test_precision_follows_the_file_and_overflow_is_refused(tmp_path):
    """float32 files give float32 tensors (as in a run), float64 files float64; Parzen maps
    far-from-0 data to [0, 1] before its float32 cast; squares beyond float64 are refused
    instead of a NaN Gaussian KL printed as 0."""
    import torch

    from gan_pipe.sample_files import load_samples

    x = np.random.default_rng(0).normal(size=(50, 2))
    for dtype, expected in (
        (np.float32, torch.float32),
        (np.float64, torch.float64),
        (np.int16, torch.float32),
        (np.int64, torch.float64),
    ):
        np.save(tmp_path / "x.npy", x.astype(dtype))
        assert load_samples(tmp_path / "x.npy", "real").dtype == expected

    rng = np.random.default_rng(1)
    far = str(tmp_path / "far.npy")
    near = str(tmp_path / "near.npy")
    np.save(far, 1e8 + 0.5 * rng.normal(size=(3000, 1)))
    np.save(near, np.load(far) - 1e8)
    got = [
        _score("--real", f, "--fake", f, "-m", "parzen", "--range", r)
        for f, r in ((far, "99999995,100000005"), (near, "-5,5"))
    ]
    assert got[0]["parzen_ll_se"] > 0  # not collapsed onto a few float32 values
    assert got[0]["parzen_ll"] == pytest.approx(got[1]["parzen_ll"], abs=1e-3)

    np.save(tmp_path / "huge.npy", 1e200 * rng.normal(size=(500, 1)))
    _rejected(
        _run("--real", str(tmp_path / "huge.npy"), "--fake", near, "-m", "divergences"),
        "overflow even float64",
    )


def test_channels_last_images_are_not_scrambled(tmp_path):
    import types

    import torch

    from gan_pipe.sample_files import _conform

    ds = types.SimpleNamespace(shape=(3, 4, 4), name="rgb")
    notes: list[str] = []
    flat = _conform(torch.zeros(5, 48), ds, "real", tmp_path / "f.npy", notes)
    assert flat.shape == (5, 3, 4, 4) and notes
    with pytest.raises(UserError, match=r"rows of shape \(4, 4, 3\)"):
        _conform(torch.zeros(5, 4, 4, 3), ds, "real", tmp_path / "hwc.npy", notes)
