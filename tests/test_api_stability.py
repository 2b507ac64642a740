"""The plugin API held to a snapshot (tests/data/api.json): a hook, a Protocol member, a
boundary field or ``register``'s signature that disappears or changes breaks plugins written
against today's documented API, so it fails here; so does an addition until it is accepted
(``python tests/api_snapshot.py --write``), so that every change to the API is deliberate."""

from __future__ import annotations

import json

from .api_snapshot import SNAPSHOT, snapshot


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_plugin_api_matches_its_snapshot():
    accepted = _flat(json.loads(SNAPSHOT.read_text()))
    live = _flat(snapshot())
    removed = sorted(set(accepted) - set(live))
    changed = sorted(k for k in set(accepted) & set(live) if accepted[k] != live[k])
    added = sorted(set(live) - set(accepted))
    problems = [f"removed (breaks plugins): {k}" for k in removed]
    problems += [f"changed (breaks plugins): {k}: {accepted[k]} -> {live[k]}" for k in changed]
    problems += [f"added (accept with python tests/api_snapshot.py --write): {k}" for k in added]
    assert not problems, "\n".join(problems)


def test_the_snapshot_covers_every_kind_of_component():
    api = snapshot()
    for hook in (
        "datasets",
        "architectures",
        "losses",
        "regularizers",
        "metrics",
        "reports",
        "callbacks",
    ):
        assert f"register_{hook}" in api["hooks"]
    for protocol in (
        "GanLoss",
        "Regularizer",
        "Metric",
        "Report",
        "Callback",
        "DatasetFactory",
        "ArchitectureFactory",
        "EvalContext",
        "ReportContext",
    ):
        assert protocol in api["protocols"], protocol
    assert "replaces" in api["register"]
