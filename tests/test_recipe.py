"""Recipe loading: structure, component params, overrides and the error messages users read."""

from __future__ import annotations

import pytest

from gan_pipe.errors import RecipeError
from gan_pipe.facade import Plugins
from gan_pipe.manager import load_plugins
from gan_pipe.recipe import apply_override, flatten, load_recipe, parse_override

from .conftest import RECIPES, write

MINIMAL = """
[experiment]
name = "t"

[data]
name = "digits"

[model.generator]
name = "dcgan"

[model.discriminator]
name = "dcgan"

[loss]
name = "non-saturating"
"""


@pytest.fixture(scope="module")
def registry():
    return Plugins(load_plugins(entry_points=False)).registry


def problems(tmp_path, registry, text, overrides=None):
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry, overrides)
    assert info.value.source == str(path)
    return info.value.problems


def test_minimal_recipe_fills_defaults(tmp_path, registry):
    r = load_recipe(write(tmp_path / "r.toml", MINIMAL), registry)
    d = r.to_dict()
    assert d["train"]["lr"] == 2e-4
    assert d["model"]["generator"]["params"]["n_filters"] == 128  # component default filled in
    assert d["loss"]["params"] == {"real_label": 1.0, "fake_label": 0.0, "d_reduction": "sum"}
    assert r.components["model.generator"].kind == "generator"


def test_dcgan_recipe_validates(registry):
    r = load_recipe(RECIPES / "dcgan.toml", registry)
    assert r.recipe.noise.dim == 20 and r.recipe.noise.distribution == "uniform"


def test_unknown_key_names_path_value_and_close_match(tmp_path, registry):
    (p,) = problems(tmp_path, registry, MINIMAL + "\n[train]\nlrr = 0.1\n")
    assert p.startswith("train.lrr = 0.1: unknown key")
    assert "'lr'" in p


def test_wrong_type_names_expected(tmp_path, registry):
    (p,) = problems(tmp_path, registry, MINIMAL + '\n[train]\nbatch_size = "big"\n')
    assert p.startswith("train.batch_size = 'big'")
    assert "integer" in p


def test_unknown_component_lists_close_matches(tmp_path, registry):
    text = MINIMAL.replace('name = "non-saturating"', 'name = "non-saturatin"')
    (p,) = problems(tmp_path, registry, text)
    assert p.startswith("loss.name = 'non-saturatin': unknown loss")
    assert "did you mean 'non-saturating'" in p


def test_component_params_validated_by_component(tmp_path, registry):
    text = MINIMAL + "\n[loss.params]\nreal_lable = 0.9\n"
    (p,) = problems(tmp_path, registry, text)
    assert p.startswith("loss.params.real_lable = 0.9: unknown key")
    assert "'real_label'" in p
    text = MINIMAL + "\n[loss.params]\nreal_label = 1.5\n"
    (p,) = problems(tmp_path, registry, text)
    assert p.startswith("loss.params.real_label = 1.5") and "less than or equal to 1" in p


def test_all_problems_reported_at_once(tmp_path, registry):
    text = MINIMAL.replace('"digits"', '"digitz"') + "\n[loss.params]\nbogus = 1\n"
    ps = problems(tmp_path, registry, text)
    assert len(ps) == 2
    assert any(p.startswith("data.name = 'digitz'") for p in ps)


def test_missing_section(tmp_path, registry):
    ps = problems(tmp_path, registry, MINIMAL.replace('[loss]\nname = "non-saturating"', ""))
    assert ps == ["loss: required key is missing"]


def test_toml_syntax_error(tmp_path, registry):
    (p,) = problems(tmp_path, registry, MINIMAL + "\n[train\n")
    assert p.startswith("not valid TOML") and "line" in p


def test_missing_file(tmp_path, registry):
    with pytest.raises(RecipeError, match="file not found") as err:
        load_recipe(tmp_path / "nope.toml", registry)
    assert "did you mean" not in str(err.value)
    (tmp_path / "ring8-gan.toml").write_text("")
    with pytest.raises(RecipeError, match="did you mean 'ring8-gan.toml'"):
        load_recipe(tmp_path / "ring8-gan.tml", registry)


def test_overrides_parse_toml_values():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("train.betas=[0.0, 0.9]") == (["train", "betas"], [0.0, 0.9])
    assert parse_override("loss.name=wgan-gp") == (["loss", "name"], "wgan-gp")
    assert parse_override("train.progress=false") == (["train", "progress"], False)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_override_applies_and_validates(tmp_path, registry):
    path = write(tmp_path / "r.toml", MINIMAL)
    r = load_recipe(
        path, registry, ["train.lr=1e-4", "loss.params.real_label=0.9", "data.params.image_size=16"]
    )
    assert r.recipe.train.lr == 1e-4
    assert r.params["loss"].real_label == 0.9
    assert r.params["data"].image_size == 16
    ps = problems(tmp_path, registry, MINIMAL, ["train.lr=fast"])
    assert ps[0].startswith("train.lr = 'fast'")


def test_override_into_list_of_tables():
    data = {"report": [{"name": "a"}, {"name": "b"}]}
    apply_override(data, ["report", "1", "name"], "c")
    assert data["report"][1]["name"] == "c"
    with pytest.raises(RecipeError, match="no list item"):
        apply_override(data, ["report", "5", "name"], "c")


def test_per_network_optimizer_inherits(tmp_path, registry):
    text = (
        MINIMAL + '\n[train]\nlr = 1e-3\n[train.discriminator]\nlr = 4e-4\noptimizer = "rmsprop"\n'
    )
    r = load_recipe(write(tmp_path / "r.toml", text), registry)
    g, d = r.recipe.train.optimizer_for("generator"), r.recipe.train.optimizer_for("discriminator")
    assert g["lr"] == 1e-3 and g["optimizer"] == "adam"
    assert d["lr"] == 4e-4 and d["optimizer"] == "rmsprop" and d["betas"] == g["betas"]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}]}) == {
        "a.b": 1,
        "a.c": [1, 2],
        "d.0.e": 3,
    }


def test_problems_from_the_command_line_say_so(tmp_path, registry):
    ps = problems(tmp_path, registry, MINIMAL, ["train.lr=fast", "loss.params.real_label=2"])
    assert ps[0].startswith("train.lr = 'fast'") and ps[0].endswith("(set with --set)")
    ps = problems(tmp_path, registry, MINIMAL + "\n[train]\nlr = 'slow'\n")
    assert not ps[0].endswith("(set with --set)")


def test_bracketed_override_must_be_toml():
    with pytest.raises(RecipeError, match="not valid TOML"):
        parse_override("train.betas=[0.0,0.9")
