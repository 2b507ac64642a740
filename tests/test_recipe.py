"""Recipe loading: structure, component params, overrides and the error messages users read."""

from __future__ import annotations

import pytest

from gan_pipe.errors import RecipeError
from gan_pipe.host import PluginHost
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
    return PluginHost.load(entry_points=False).registry


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


# ---------------------------------------------------------------- names
def with_experiment(extra: str) -> str:
    return MINIMAL.replace('[experiment]\nname = "t"\n', f"[experiment]\n{extra}\n")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "cannot be empty"),
        (".", "only dots"),
        ("..", "only dots"),
        ("runs/../../etc", "path separator"),
        ("a\\\\b", "path separator"),
        ("x" * 201, "201 characters long"),
        ("x" * 495, "495 characters long"),
        ("x" * 10_000, "10000 characters long"),
        ("a\\nb", "U+000A"),
        ("a\\u200bb", "U+200B"),
        (" padded", "white space"),
    ],
)
@pytest.mark.parametrize("key", ["name", "run_name"])
def test_unsafe_names_are_refused(tmp_path, registry, key, name, why):
    extra = f'name = "ok"\n{key} = "{name}"' if key == "run_name" else f'name = "{name}"'
    (p,) = problems(tmp_path, registry, with_experiment(extra))
    assert p.startswith(f"experiment.{key} = ") and why in p
    assert len(p) < 400  # a 10,000-character name is not echoed whole


@pytest.mark.parametrize("name", ["ring8 gan", "Ünïcødé-実験 (v2)", "a.b_c-d", "x" * 200, "..a"])
def test_safe_names_are_kept(tmp_path, registry, name):
    text = with_experiment(f'name = "{name}"\nrun_name = "{name}"')
    e = load_recipe(write(tmp_path / "r.toml", text), registry).recipe.experiment
    assert e.name == name and e.run_name == name


# ---------------------------------------------------------------- tags
@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("mlflow.runName", "experiment.run_name"),
        ("MLflow.parentRunId", "use another key"),
        ("mlflow.note.content", "experiment.description"),
        ("gan_pipe.recipe", "use another key"),
        ("device", "use another key"),
    ],
)
def test_reserved_tags_are_refused(tmp_path, registry, key, hint):
    text = with_experiment(f'name = "t"\ntags = {{"{key}" = "mine", team = "vision"}}')
    (p,) = problems(tmp_path, registry, text)
    assert p.startswith(f"experiment.tags: key {key!r}") and hint in p
    assert "'mlflow.'" in p and "'gan_pipe.'" in p


@pytest.mark.parametrize(
    ("tags", "why"),
    [
        ('{"k\\n" = "v"}', "only contain"),
        ('{"a/../b" = "v"}', "another path"),
        ('{"/abs" = "v"}', "another path"),
        (f'{{"{"k" * 251}" = "v"}}', "at most 250"),
    ],
)
def test_tag_keys_follow_mlflow_rules(tmp_path, registry, tags, why):
    (p,) = problems(tmp_path, registry, with_experiment(f'name = "t"\ntags = {tags}'))
    assert p.startswith("experiment.tags: key") and why in p


def test_tag_values_and_description_fit_mlflow(tmp_path, registry):
    from gan_pipe.recipe import TAG_VALUE_MAX

    ok = with_experiment(f'name = "t"\ntags = {{team = "{"v" * TAG_VALUE_MAX}"}}')
    assert len(load_recipe(write(tmp_path / "r.toml", ok), registry).recipe.experiment.tags["team"])
    long = "v" * (TAG_VALUE_MAX + 1)
    (p,) = problems(tmp_path, registry, with_experiment(f'name = "t"\ntags = {{team = "{long}"}}'))
    assert p.startswith("experiment.tags.team = ") and f"at most {TAG_VALUE_MAX}" in p
    (p,) = problems(tmp_path, registry, with_experiment(f'name = "t"\ndescription = "{long}"'))
    assert p.startswith("experiment.description = ") and str(TAG_VALUE_MAX) in p


# ---------------------------------------------------------------- strict types
@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("train", 'lr = "2e-4"', "valid number"),
        ("train", "batch_size = 64.0", "valid integer"),
        ("train", "batch_size = true", "valid integer"),
        ("train", "lr = true", "valid number"),
        ("train", "progress = 1", "valid boolean"),
        ("train", 'betas = ["0.5", 0.9]', "valid number"),
        ("noise", 'dim = "20"', "valid integer"),
        ("loss.params", 'real_label = "0.9"', "valid number"),
        ("model.generator.params", "n_filters = 64.0", "valid integer"),
        ("data.params", "image_size = 1.6e1", "valid integer"),
    ],
)
def test_no_type_coercion(tmp_path, registry, section, line, expected):
    (p,) = problems(tmp_path, registry, MINIMAL + f"\n[{section}]\n{line}\n")
    key = line.split(" = ")[0]
    assert p.startswith(f"{section}.{key}") and expected in p


def test_experiment_name_must_be_a_string(tmp_path, registry):
    (p,) = problems(tmp_path, registry, with_experiment("name = 3"))
    assert p == "experiment.name = 3: input should be a valid string"


def test_ints_are_floats_and_arrays_are_tuples(tmp_path, registry):
    text = MINIMAL + "\n[train]\nlr = 1\nbetas = [0, 0.999]\n[loss.params]\nreal_label = 1\n"
    r = load_recipe(write(tmp_path / "r.toml", text), registry)
    assert r.recipe.train.lr == 1.0 and isinstance(r.recipe.train.lr, float)
    assert r.recipe.train.betas == (0.0, 0.999) and isinstance(r.recipe.train.betas, tuple)
    assert isinstance(r.params["loss"].real_label, float)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "+nan"])
@pytest.mark.parametrize(
    "where",
    [
        "train.lr",
        "train.batch_size",
        "train.generator.lr",
        "loss.params.real_label",
        "success.ok.modes.min",
        "model.generator.params.no_such_key",
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, registry, where, value):
    ps = problems(tmp_path, registry, MINIMAL, [f"{where}={value}"])
    assert ps == [
        f"{where} = {float(value)!r}: expected a finite number (nan and inf are not accepted)"
        " (set with --set)"
    ]


def test_non_finite_reported_with_the_other_problems(tmp_path, registry):
    text = MINIMAL + '\n[train]\nlr = nan\nbatch_size = "big"\nlrr = 1\n'
    ps = problems(tmp_path, registry, text)
    assert sorted(p.split(" = ")[0] for p in ps) == ["train.batch_size", "train.lr", "train.lrr"]


def test_toml_dates_are_refused(tmp_path, registry):
    (p,) = problems(tmp_path, registry, with_experiment('name = "t"\ndescription = 2024-05-01'))
    assert p.startswith("experiment.description = datetime.date(2024, 5, 1)") and "quote" in p


# ---------------------------------------------------------------- --set applies whole or not
@pytest.mark.parametrize(
    "item",
    [
        "train.lr=1e-4\ntrain.steps=5",
        "train.lr=1e-4\n[data]\nname = 'mnist'",
        "experiment.name=my run",
        "train.lr='1e-4",
        "train.lr=",
        "loss.name=minimax\nwgan",
        "train.l\nr=1",
    ],
)
def test_set_is_one_value_or_an_error(tmp_path, registry, item):
    path = write(tmp_path / "r.toml", MINIMAL)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry, [item])
    assert info.value.source == "--set" and repr(item) in str(info.value)


def test_set_inline_table_merges_key_by_key(tmp_path, registry):
    text = MINIMAL + "\n[train]\nbatch_size = 32\nlr = 1e-3\n"
    r = load_recipe(write(tmp_path / "r.toml", text), registry, ["train={lr=1e-4, n_critic=5}"])
    t = r.recipe.train
    assert (t.batch_size, t.lr, t.n_critic) == (32, 1e-4, 5)  # batch_size kept
    ps = problems(tmp_path, registry, text, ["train={lr='x', bogus=1}"])
    assert ps[0].startswith("train.lr = 'x'") and ps[0].endswith("(set with --set)")
    assert ps[1].startswith("train.bogus = 1: unknown key") and ps[1].endswith("(set with --set)")


def test_set_bare_words_stay_strings_and_typos_fail(tmp_path, registry):
    assert parse_override("experiment.device=cuda:1")[1] == "cuda:1"
    (p,) = problems(tmp_path, registry, MINIMAL, ["train.lr=2e-4x"])
    assert p.startswith("train.lr = '2e-4x': input should be a valid number")


def test_set_through_a_value_in_a_list_is_an_error():
    data = {"train": {"betas": [0.5, 0.9]}}
    with pytest.raises(RecipeError, match=r"train.betas.0 is a value \(0.5\), not a table"):
        apply_override(data, ["train", "betas", "0", "x"], 1)
    with pytest.raises(RecipeError, match="no list item '2'"):
        apply_override(data, ["train", "betas", "2"], 1)
