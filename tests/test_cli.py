"""The CLI as a user meets it: validate, plugins, broken recipes, and a full run read back
from MLflow with its own client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gan_pipe.cli import app

from .conftest import RECIPES, write

runner = CliRunner()

TINY = """
[experiment]
name = "tiny"
seed = 1

[data]
name = "digits"
[data.params]
image_size = 16
val_size = 100
test_size = 100

[model.generator]
name = "dcgan"
[model.generator.params]
n_filters = 16

[model.discriminator]
name = "dcgan"
[model.discriminator.params]
n_filters = 8

[noise]
distribution = "uniform"
dim = 8

[loss]
name = "non-saturating"
[loss.params]
real_label = 0.9

[train]
batch_size = 32
steps = 6
log_every = 2
sample_every = 3
progress = false

[[evaluate.metrics]]
name = "parzen"
[evaluate.metrics.params]
n_samples = 300
n_val = 50
n_test = 80

[[report]]
name = "loss-curves"

[[report]]
name = "sample-grid"
[report.params]
n = 16
"""


def test_help_and_version():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "validate", "plugins", "schema"):
        assert cmd in res.output
    assert runner.invoke(app, ["--version"]).output.startswith("gan-pipe ")


def test_validate_ok():
    res = runner.invoke(app, ["validate", str(RECIPES / "dcgan.toml")])
    assert res.exit_code == 0, res.output
    assert "valid" in res.output and "model.generator" in res.output


def test_plugins_lists_components_and_versions():
    res = runner.invoke(app, ["plugins"])
    assert res.exit_code == 0
    assert "gan_pipe.plugins.models.dcgan" in res.output and "0.1.0" in res.output
    assert "non-saturating" in res.output and "parzen" in res.output
    res = runner.invoke(app, ["plugins", "--params"])
    assert "real_label = 1.0" in res.output


@pytest.mark.parametrize(
    "mutation,expected",
    [
        (("[train]", "[train]\nlrr = 1"), "train.lrr = 1: unknown key"),
        (("steps = 6", 'steps = "six"'), "train.steps = 'six'"),
        (('name = "non-saturating"', 'name = "wgan-gpp"'), "loss.name = 'wgan-gpp': unknown loss"),
        (("n_filters = 16", "n_filters = -3"), "model.generator.params.n_filters = -3"),
        (("[experiment]", "[experiment"), "not valid TOML"),
    ],
)
def test_broken_recipes_exit_2_and_write_nothing(workdir, mutation, expected):
    path = write(workdir / "bad.toml", TINY.replace(*mutation, 1))
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert str(path) in res.output
    assert "Traceback" not in res.output
    assert not (workdir / "mlflow.db").exists()


def test_bad_override_is_a_recipe_error(workdir):
    res = runner.invoke(app, ["validate", str(RECIPES / "dcgan.toml"), "--set", "train.lr=fast"])
    assert res.exit_code == 2 and "train.lr = 'fast'" in res.output


def test_console_script_has_no_traceback_for_user_errors(workdir):
    path = write(workdir / "bad.toml", TINY.replace('"digits"', '"digitz"'))
    proc = subprocess.run(
        [sys.executable, "-m", "gan_pipe.cli", "run", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "did you mean 'digits'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_missing_gpu_is_a_user_error_before_any_run(workdir, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on GPU machines
    path = write(workdir / "r.toml", TINY)
    res = runner.invoke(app, ["run", str(path), "--set", "experiment.device=cuda"])
    assert res.exit_code == 2 and "no usable CUDA GPU" in res.output
    assert not (workdir / "mlartifacts").exists() and not (workdir / "mlflow.db").exists()


def _client(workdir):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def test_run_end_to_end_is_tracked(workdir):
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["run", str(path), "--set", "train.lr=1e-3"])
    assert res.exit_code == 0, res.output
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in res.output
    assert "experiment: tiny (id 1)" in res.output
    run_id = next(line.split()[-1] for line in res.output.splitlines() if "run id:" in line)

    client = _client(workdir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("tiny-")
    p = run.data.params
    assert p["train.lr"] == "0.001" and p["loss.params.real_label"] == "0.9"
    assert p["model.generator.params.n_blocks"] == "2"  # component defaults are logged too
    # metric settings keyed by the metric's name; settings that do not apply are left out
    assert p["evaluate.metrics"] == "parzen" and p["evaluate.metrics.parzen.n_samples"] == "300"
    assert not any(k.startswith("evaluate.metrics.0") for k in p)
    assert "train.decay_rate" not in p and "noise.jitter" not in p and "train.momentum" not in p
    assert "train.epochs" not in p  # unset
    assert p["train.betas"] == "[0.5, 0.999]"
    t = run.data.tags
    assert t["gan_pipe.version"] == "0.1.0"
    assert t["gan_pipe.component.loss"].startswith(
        "non-saturating (plugin gan_pipe.plugins.losses.bce"
    )
    assert "torch.version" in t and t["device"].startswith("cpu")

    hist = client.get_metric_history(run_id, "train/d_loss")
    assert [m.step for m in hist] == [2, 4, 6]
    assert {"train/g_loss", "train/d_real", "train/d_fake", "train/js_estimate"} <= set(
        run.data.metrics
    )
    m = run.data.metrics
    assert m["eval/parzen_n_samples"] == 300 and m["eval/parzen_n_test"] == 80
    assert m["eval/parzen_ll"] < 1e6

    def walk(path=None):
        for f in client.list_artifacts(run_id, path):
            yield from walk(f.path) if f.is_dir else [f.path]

    files = set(walk())
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.artifact_location == (workdir / "mlartifacts" / "tiny").as_uri()
    assert (
        workdir / "mlartifacts" / "tiny" / run_id / "artifacts" / "plots" / "losses.png"
    ).exists()
    assert not (workdir / "mlruns").exists()
    assert {
        "recipe/recipe.toml",
        "recipe/resolved.json",
        "plots/losses.png",
        "plots/samples.png",
    } <= files
    assert "checkpoints/checkpoint-0000006.pt" in files
    images = [f for f in files if f.startswith("images/")]
    assert len([f for f in images if f.endswith(".png")]) >= 3  # steps 0, 3, 6 (+ the final grid)

    import mlflow
    import torch

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list"
    )
    assert [lm.source_run_id for lm in models] == [run_id]
    # the model carries the run's final metrics, at the final step, without doubling history
    linked = {m.key: (m.value, m.step) for m in models[0].metrics}
    assert linked["eval/parzen_ll"] == (m["eval/parzen_ll"], 6)
    assert len(client.get_metric_history(run_id, "eval/parzen_ll")) == 1
    # wall time and throughput, consistent with each other
    assert m["perf/steps_per_s"] == pytest.approx(6 / m["perf/train_time_s"], rel=1e-6)
    assert m["perf/samples_per_s"] == pytest.approx(32 * m["perf/steps_per_s"], rel=1e-6)
    assert m["perf/wall_time_s"] > m["perf/train_time_s"] > 0
    assert "steps/s" in res.output
    gen = mlflow.pytorch.load_model(models[0].model_uri)
    out = gen(torch.rand(4, 8) * 2 - 1)
    assert out.shape == (4, 1, 16, 16)


def test_run_name_description_and_overrides_are_recorded(workdir):
    """Runs can be told apart: the recipe's run name and description, the --set overrides as
    a tag, and the recipe as run (overrides applied) beside the original file."""
    text = TINY.replace(
        "seed = 1", 'seed = 1\nrun_name = "lr-probe"\ndescription = "does a lower lr help?"'
    )
    path = write(workdir / "tiny.toml", text)
    res = runner.invoke(app, ["run", str(path), "--set", "train.lr=1e-3", "--set", "train.steps=2"])
    assert res.exit_code == 0, res.output
    run_id = next(line.split()[-1] for line in res.output.splitlines() if "run id:" in line)
    client = _client(workdir)
    run = client.get_run(run_id)
    assert run.info.run_name == "lr-probe"
    assert run.data.tags["mlflow.note.content"] == "does a lower lr help?"
    assert json.loads(run.data.tags["gan_pipe.overrides"]) == ["train.lr=1e-3", "train.steps=2"]
    import tomllib

    got = Path(client.download_artifacts(run_id, "recipe", str(workdir / "got")))
    as_run = tomllib.loads((got / "recipe.toml").read_text())
    assert as_run["train"]["lr"] == 1e-3 and as_run["train"]["steps"] == 2
    assert (got / "original.toml").read_text() == text


def test_failing_stage_marks_run_failed(workdir, monkeypatch):
    from gan_pipe.plugins.losses import bce

    def boom(self, x):
        raise RuntimeError("exploding loss")

    monkeypatch.setattr(bce.NonSaturatingLoss, "generator_loss", boom)
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["run", str(path)])
    assert res.exit_code == 1
    assert "exploding loss" in res.output and "FAILED" in res.output
    runs = _client(workdir).search_runs(experiment_ids=["1"])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["gan_pipe.failed_stage"] == "train"
    assert "exploding loss" in runs[0].data.tags["gan_pipe.error"]


def test_evaluate_adds_to_the_same_run(workdir):
    path = write(workdir / "tiny.toml", TINY)
    res = runner.invoke(app, ["run", str(path), "--set", "report=[]"])
    assert res.exit_code == 0, res.output
    run_id = next(line.split()[-1] for line in res.output.splitlines() if "run id:" in line)
    before = _client(workdir).get_run(run_id).data.metrics["eval/parzen_ll"]

    res = runner.invoke(
        app, ["evaluate", run_id, "-m", "parzen", "--set", "evaluate.metrics.0.params.n_test=60"]
    )
    assert res.exit_code == 0, res.output
    assert "step 6" in res.output
    client = _client(workdir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval/parzen_n_test"] == 60
    hist = client.get_metric_history(run_id, "eval/parzen_ll")
    assert len(hist) == 2 and {m.step for m in hist} == {6}
    assert hist[0].value == before  # the first value is kept, the new one is added
    assert "gan_pipe.reevaluated" in run.data.tags

    res = runner.invoke(app, ["evaluate", run_id, "--set", "train.lr=1"])
    assert res.exit_code == 2 and "only evaluate.*" in res.output
    res = runner.invoke(app, ["evaluate", "0123abc"])
    assert res.exit_code == 2 and "no run '0123abc'" in res.output


def test_plugins_without_builtins_and_json():
    res = runner.invoke(app, ["plugins", "--no-builtin"])
    assert res.exit_code == 0
    assert "gan_pipe.plugins.models.dcgan" not in res.output
    assert "relativistic" in res.output  # the example package installed by `make install`
    import json

    data = json.loads(runner.invoke(app, ["plugins", "--json"]).stdout)
    names = {p["name"]: p for p in data["plugins"]}
    assert "generator:dcgan" in names["gan_pipe.plugins.models.dcgan"]["components"]
    assert names["relativistic"]["package"] == "gan-pipe-relativistic"


def test_ctrl_c_marks_run_killed_and_keeps_a_checkpoint(workdir, monkeypatch):
    from gan_pipe.plugins.losses import bce

    original = bce.NonSaturatingLoss.discriminator_loss
    calls = []

    def interrupt_at_step_4(self, x):
        import signal

        calls.append(1)
        if len(calls) == 4:  # Ctrl-C inside step 4: the step is finished, then training stops
            signal.raise_signal(signal.SIGINT)
        return original(self, x)

    monkeypatch.setattr(bce.NonSaturatingLoss, "discriminator_loss", interrupt_at_step_4)
    res = runner.invoke(app, ["run", str(write(workdir / "tiny.toml", TINY))])
    assert res.exit_code == 130 and "KILLED" in res.output
    client = _client(workdir)
    (run,) = client.search_runs(experiment_ids=["1"])
    assert run.info.status == "KILLED"
    assert f"checkpoint of step 4: continue it with gan-pipe resume {run.info.run_id}" in res.output
    ckpts = [f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert ckpts == ["checkpoints/checkpoint-0000004.pt"]  # the last completed step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/d_loss")] == [2, 4]


def test_schema_and_show():
    import json

    schema = json.loads(runner.invoke(app, ["schema"]).stdout)
    assert "experiment" in schema["properties"] and "train" in schema["properties"]
    shown = json.loads(runner.invoke(app, ["show", str(RECIPES / "dcgan.toml")]).stdout)
    assert shown["model"]["generator"]["params"]["n_filters"] == 128
    assert shown["train"]["n_critic"] == 1


def test_tracking_uri_from_the_environment(workdir, monkeypatch):
    other = workdir / "team"
    other.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'store.db'}")
    res = runner.invoke(app, ["run", str(write(workdir / "tiny.toml", TINY)), "--set", "report=[]"])
    assert res.exit_code == 0, res.output
    assert not (workdir / "mlflow.db").exists()
    from mlflow import MlflowClient

    (run,) = MlflowClient(f"sqlite:///{other / 'store.db'}").search_runs(experiment_ids=["1"])
    assert run.info.status == "FINISHED"
    assert f"sqlite:///{other / 'store.db'}" in res.output


def test_schema_checks_component_params():
    import json
    import tomllib

    import jsonschema

    schema = json.loads(runner.invoke(app, ["schema"]).stdout)
    for path in sorted(RECIPES.glob("*.toml")):
        jsonschema.validate(tomllib.loads(path.read_text()), schema)
    bad = tomllib.loads((RECIPES / "dcgan.toml").read_text())
    bad["loss"]["params"] = {"real_lable": 0.9}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad["loss"] = {"name": "no-such-loss"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _final_generator(client, run_id, tmp):
    import torch

    ckpts = sorted(f.path for f in client.list_artifacts(run_id, "checkpoints"))
    path = client.download_artifacts(run_id, ckpts[-1], str(tmp))
    return torch.load(path, weights_only=True)


def test_resume_equals_an_uninterrupted_run(workdir, tmp_path_factory):
    import torch

    path = write(workdir / "tiny.toml", TINY)
    base = ["--set", "report=[]", "--set", "evaluate.metrics=[]"]
    res = runner.invoke(app, ["run", str(path), "--set", "train.steps=10", *base])
    assert res.exit_code == 0, res.output
    straight = next(ln.split()[-1] for ln in res.output.splitlines() if "run id:" in ln)
    res = runner.invoke(app, ["run", str(path), *base])  # 6 steps, then 4 more
    part = next(ln.split()[-1] for ln in res.output.splitlines() if "run id:" in ln)

    res = runner.invoke(app, ["resume", part, "--steps", "6"])
    assert res.exit_code == 2 and "ask for more with --steps" in res.output
    res = runner.invoke(app, ["resume", part, "--set", "train.lr=1"])
    assert res.exit_code == 2 and "only train.steps*" in res.output
    res = runner.invoke(app, ["resume", part, "--steps", "10"])
    assert res.exit_code == 0, res.output

    client = _client(workdir)
    run = client.get_run(part)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gan_pipe.resumed_from_step"] == "6"
    hist = [m.step for m in client.get_metric_history(part, "train/d_loss")]
    assert hist == [2, 4, 6, 8, 10]
    tmp = tmp_path_factory.mktemp("ckpt")
    a, b = _final_generator(client, straight, tmp / "a"), _final_generator(client, part, tmp / "b")
    assert a["step"] == b["step"] == 10
    for key in ("generator", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    d_straight = [m.value for m in client.get_metric_history(straight, "train/d_loss")]
    d_resumed = [m.value for m in client.get_metric_history(part, "train/d_loss")]
    assert d_straight == d_resumed


def test_missing_data_is_a_user_error_and_the_run_says_failed(workdir):
    text = TINY.replace('name = "digits"', 'name = "mnist"').replace(
        "image_size = 16\nval_size = 100\ntest_size = 100",
        f'data_dir = "{workdir / "nodata"}"\ndownload = false',
    )
    res = runner.invoke(app, ["run", str(write(workdir / "m.toml", text))])
    assert res.exit_code == 2, res.output
    assert "train-images-idx3-ubyte" in res.output and "Traceback" not in res.output
    (run,) = _client(workdir).search_runs(experiment_ids=["1"])
    assert run.info.status == "FAILED"
    assert f"MLflow run {run.info.run_id} is marked FAILED" in res.output


def test_run_summary_hides_settings_but_shows_raised_flags():
    from gan_pipe.evaluation import is_setting as _is_setting

    assert _is_setting("div_gauss_ridge") and _is_setting("fine_div_n_real")
    assert _is_setting("parzen_n_samples") and not _is_setting("parzen_ll")
    assert _is_setting("parzen_sigma_at_edge", 0.0)
    assert not _is_setting("parzen_sigma_at_edge", -1.0)
    assert not _is_setting("kl") and not _is_setting("kl_gauss")


def test_python_dash_m_gan_pipe_cli_has_every_command(tmp_path):
    """``python -m gan_pipe.cli`` runs the module as __main__: the commands registered from
    gan_pipe.cli_tools must land on the same app (they once went to a second copy)."""
    import subprocess
    import sys

    from gan_pipe.cli import app as imported

    names = {c.name or c.callback.__name__.replace("_", "-") for c in imported.registered_commands}
    assert {"run", "plugins", "validate", "sync", "schema", "new-plugin"} <= names
    for module in ("gan_pipe.cli", "gan_pipe"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"TYPER_USE_RICH": "0", "PATH": ""},
        ).stdout
        missing = [n for n in names if n not in out]
        assert not missing, (module, missing, out)
