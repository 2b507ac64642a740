"""End to end in a real browser: a tiny study logged to an `mlflow server` on loopback, its
comparison report logged to the study run, and the MLflow UI opened in headless Chromium.

Needs Debian's `chromium` (installed here with apt-get when missing and possible; skipped with
the reason otherwise). Screenshots are kept in ``$GAN_PIPE_TEST_ARTIFACTS`` (default
``test-artifacts/``) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gan_pipe.cli import app

from .conftest import ROOT, write
from .test_study import TINY

pytestmark = pytest.mark.slow


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium()
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, capture_output=True, timeout=900, check=False)
        path = _find_chromium()
    if path is None:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(mlflow_exe),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--default-artifact-root",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share the group: stopped together by _stop
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(1)
    else:
        _stop(proc)
        pytest.fail("mlflow server did not answer within 180 s")
    yield url
    _stop(proc)
    log.close()


def _stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (uvicorn workers, job runners)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        deadline = time.time() + 30
        while time.time() < deadline:  # until no process of the group is left
            proc.poll()  # reap the leader: a zombie would still count as the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.wait(5)
                return
            time.sleep(0.5)


def _browser(chromium: str, url: str, out: Path | None = None) -> str:
    """The page's DOM after its scripts ran; with ``out``, a screenshot too."""
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1600,1300",
        "--virtual-time-budget=30000",
    ]
    if out is not None:
        subprocess.run([*base, f"--screenshot={out}", url], capture_output=True, timeout=180)
        assert out.exists() and out.stat().st_size > 10_000, f"no screenshot of {url}"
    res = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return res.stdout


def test_study_in_the_mlflow_ui(workdir, chromium, mlflow_server, monkeypatch):
    shots = Path(os.environ.get("GAN_PIPE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    path = write(workdir / "tiny.toml", TINY)
    runner = CliRunner()
    # two worker processes start their first runs against the fresh server at once
    res = runner.invoke(
        app,
        [
            "sweep",
            str(path),
            "--grid",
            "train.lr=1e-3,1e-4",
            "--seeds",
            "2",
            "--jobs",
            "2",
            "--name",
            "ui-study",
        ],
    )
    assert res.exit_code == 0, res.output
    study_id = re.search(r"study run:\s+(\w+)", res.output)[1]
    res = runner.invoke(app, ["compare", study_id, "--html", str(workdir / "report.html")])
    assert res.exit_code == 0, res.output

    from mlflow import MlflowClient

    c = MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name("tiny-ring")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    variants = c.search_runs([exp.experiment_id], "tags.gan_pipe.kind = 'variant'")
    base = f"{mlflow_server}/#/experiments/{exp.experiment_id}"

    # the study is one expandable tree: its 7 runs, the study at the top level
    dom = _browser(chromium, f"{base}/runs", shots / "study-tree.png")
    assert "ui-study" in dom
    assert re.search(r"7(</strong>)?\s*matching runs", dom), "run count not shown"

    # a variant's page: its parent, its seed runs and its aggregated metrics
    v = variants[0]
    dom = _browser(chromium, f"{base}/runs/{v.info.run_id}", shots / "variant.png")
    assert "Parent run" in dom and "ui-study" in dom
    assert f"{v.data.tags['gan_pipe.variant']} · seed 0" in dom
    for key in ("eval/modes", "eval/modes.ci95_lo", "eval/modes.n", "rate/some_modes"):
        assert key in dom, key

    # the comparison report, logged to the study run, with its pictures
    dom = _browser(
        chromium, f"{base}/runs/{study_id}/artifacts/compare/report.html", shots / "report.png"
    )
    assert "compare/report.html" in dom
    with urllib.request.urlopen(
        f"{mlflow_server}/get-artifact?path=compare/report.html&run_uuid={study_id}", timeout=30
    ) as r:
        html = r.read().decode()
    assert html.count("data:image/png;base64,") >= 3  # curves and the variants' samples
    assert "tiny train.lr=0.001" in html and "tiny train.lr=0.0001" in html
