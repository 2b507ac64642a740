"""The ``image-folder`` dataset on small PNG/JPEG files written here with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data import image_folder
from gan_pipe.plugins.data.image_folder import (
    ImageFolderParams,
    decode_image,
    list_images,
    load_image_folder,
)

RED, GREEN, BLUE, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)


def solid(path: Path, color, size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def params(path: Path, **kw) -> ImageFolderParams:
    kw.setdefault("val_fraction", 0.0)
    kw.setdefault("test_fraction", 0.0)
    return ImageFolderParams(path=str(path), **kw)


def test_known_pixels_map_to_tanh_and_unit_range(tmp_path):
    # values 0, 51, 255 in the three channels of one image: (x - 127.5) / 127.5 and x / 255
    solid(tmp_path / "a.png", (0, 51, 255), size=(4, 4))
    ds = load_image_folder(params(tmp_path, image_size=4))
    assert ds.train.shape == (1, 3, 4, 4) and ds.train.dtype == torch.float32
    expected = torch.tensor([-1.0, (51 - 127.5) / 127.5, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(ds.train[0], expected, rtol=0, atol=1e-7)
    assert ds.value_range == (-1.0, 1.0) and ds.is_image
    unit = load_image_folder(params(tmp_path, image_size=4, scale="unit"))
    expected = torch.tensor([0.0, 51 / 255, 1.0]).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(unit.train[0], expected, rtol=0, atol=1e-7)
    assert unit.value_range == (0.0, 1.0)


def test_wide_image_keeps_its_centre_square(tmp_path):
    # 12x4, short side already 4: no resize, the middle 4 columns are green, flanks red/blue
    img = np.zeros((4, 12, 3), dtype=np.uint8)
    img[:, :4], img[:, 4:8], img[:, 8:] = RED, GREEN, BLUE
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 4, 3)
    assert out.shape == (3, 4, 4)
    assert (out.transpose(1, 2, 0) == GREEN).all()


def test_tall_image_is_resized_by_its_short_side_then_cropped(tmp_path):
    # 24 wide x 48 tall, image_size 12: resized to 12x24, then rows 6..18 of that are kept,
    # i.e. the original rows 12..36. Those are green; the rows outside are red.
    img = np.zeros((48, 24, 3), dtype=np.uint8)
    img[:] = RED
    img[12:36] = GREEN
    Image.fromarray(img).save(tmp_path / "tall.png")
    out = decode_image(tmp_path / "tall.png", 12, 3).transpose(1, 2, 0)
    assert out.shape == (12, 12, 3)
    # away from the band's edges (bilinear blends +-1 output pixel) the crop is pure green
    assert (out[1:-1] == GREEN).all()
    # the crop is the resized centre, not the original's centre 12x12 (which is all green)
    assert out[0, :, 0].min() > 0 and out[-1, :, 0].min() > 0
    # the whole result is Pillow's BILINEAR resize of the short side to 12, centre crop
    ref = np.asarray(Image.fromarray(img).resize((12, 24), Image.Resampling.BILINEAR))[6:18]
    np.testing.assert_array_equal(out, ref)


def test_grayscale_png_and_jpeg(tmp_path):
    solid(tmp_path / "g.png", 100, mode="L", size=(6, 6))
    solid(tmp_path / "c.jpg", GREY, size=(16, 16))  # a flat colour survives JPEG exactly
    ds = load_image_folder(params(tmp_path, image_size=4, channels=1))
    assert ds.train.shape == (2, 1, 4, 4)
    # path order: c.jpg then g.png; RGB (128,128,128) -> L 128
    assert ds.train[0].unique().tolist() == [pytest.approx((128 - 127.5) / 127.5)]
    assert ds.train[1].unique().tolist() == [pytest.approx((100 - 127.5) / 127.5)]
    rgb = load_image_folder(params(tmp_path, image_size=4))
    assert rgb.train.shape == (2, 3, 4, 4)
    assert rgb.train[1].unique().tolist() == [pytest.approx((100 - 127.5) / 127.5)]


def test_rgba_drops_alpha(tmp_path):
    solid(tmp_path / "a.png", (10, 20, 30, 0), mode="RGBA", size=(4, 4))
    ds = load_image_folder(params(tmp_path, image_size=4, scale="unit"))
    torch.testing.assert_close(
        ds.train[0, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0, rtol=0, atol=1e-7
    )


def test_files_order_recursion_extensions_and_hidden(tmp_path):
    for rel in ("b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.png", ".hidden.png"):
        solid(tmp_path / rel, GREY)
    solid(tmp_path / ".git" / "e.png", GREY)
    (tmp_path / "notes.txt").write_text("not an image")
    exts = ImageFolderParams(path="x").extensions
    rel = lambda ps: [p.relative_to(tmp_path).as_posix() for p in ps]  # noqa: E731
    assert rel(list_images(tmp_path, exts, True)) == [
        "a.JPG",
        "b.png",
        "sub/c.jpeg",
        "sub/deeper/d.png",
    ]
    assert rel(list_images(tmp_path, exts, False)) == ["a.JPG", "b.png"]
    assert ImageFolderParams(path="x", extensions=["PNG"]).extensions == [".png"]
    assert rel(list_images(tmp_path, [".png"], True)) == ["b.png", "sub/deeper/d.png"]


def test_order_follows_paths_and_max_images(tmp_path):
    values = [30, 10, 20]
    for i, v in enumerate(values):
        solid(tmp_path / f"img{i}.png", (v, v, v), size=(4, 4))
    ds = load_image_folder(params(tmp_path, image_size=4, scale="unit"))
    assert [round(float(x) * 255) for x in ds.train[:, 0, 0, 0]] == values
    two = load_image_folder(params(tmp_path, image_size=4, max_images=2))
    assert len(two.train) == 2 and two.info["n_files"] == 2


def test_split_sizes_are_disjoint_and_cover(tmp_path):
    n = 40
    for i in range(n):
        solid(tmp_path / f"{i:03d}.png", (i, i, i), size=(4, 4))
    ds = load_image_folder(
        params(tmp_path, image_size=4, scale="unit", val_fraction=0.1, test_fraction=0.25)
    )
    assert (len(ds.train), len(ds.val), len(ds.test)) == (26, 4, 10)
    ids = [set(round(float(x) * 255) for x in s[:, 0, 0, 0]) for s in (ds.train, ds.val, ds.test)]
    assert set.union(*ids) == set(range(n)) and sum(map(len, ids)) == n
    again = load_image_folder(
        params(tmp_path, image_size=4, scale="unit", val_fraction=0.1, test_fraction=0.25)
    )
    assert torch.equal(again.test, ds.test)
    other = load_image_folder(
        params(
            tmp_path,
            image_size=4,
            scale="unit",
            val_fraction=0.1,
            test_fraction=0.25,
            split_seed=1,
        )
    )
    assert not torch.equal(other.test, ds.test)
    assert ds.train_labels is None and ds.test_labels is None
    # a small folder still gets one validation and one test image
    assert image_folder.split_sizes(5, 0.05, 0.05) == (1, 1)
    assert image_folder.split_sizes(5, 0.0, 0.05) == (0, 1)


def test_missing_and_empty_directory_are_user_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"does-not-exist does not exist.*data.params.path"):
        load_image_folder(params(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataNotFoundError, match=r"no files ending in \.png, \.jpg, \.jpeg.*empty"):
        load_image_folder(params(tmp_path / "empty"))
    solid(tmp_path / "flat" / "sub" / "a.png", GREY)
    with pytest.raises(UserError, match="recursive = true"):
        load_image_folder(params(tmp_path / "flat", recursive=False))
    solid(tmp_path / "file.png", GREY)
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        load_image_folder(params(tmp_path / "file.png"))


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path, capsys):
    solid(tmp_path / "good.png", GREY, size=(4, 4))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # a truncated JPEG: the header decodes, the pixels do not
    solid(tmp_path / "cut.jpg", GREY, size=(64, 64))
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cannot decode .*bad\.png.*skip_corrupt = true"):
        load_image_folder(params(tmp_path, image_size=4))
    ds = load_image_folder(params(tmp_path, image_size=4, skip_corrupt=True))
    assert len(ds.train) == 1 and ds.info["n_skipped"] == 2
    assert "bad.png" in capsys.readouterr().err
    (tmp_path / "good.png").unlink()
    with pytest.raises(UserError, match="leave none for training"):
        load_image_folder(params(tmp_path, image_size=4, skip_corrupt=True))


def test_too_few_images_for_the_splits(tmp_path):
    solid(tmp_path / "a.png", GREY)
    solid(tmp_path / "b.png", GREY)
    with pytest.raises(UserError, match=r"2 image\(s\) .* leave none for training"):
        load_image_folder(params(tmp_path, val_fraction=0.1, test_fraction=0.1))


def test_params_are_checked():
    with pytest.raises(ValidationError):
        ImageFolderParams(path="x", channels=2)
    with pytest.raises(ValidationError):
        ImageFolderParams(path="x", extensions=["."])
    with pytest.raises(ValidationError):
        ImageFolderParams(path="x", sizes=3)
    with pytest.raises(ValidationError):
        ImageFolderParams()


def test_cache_is_reused_until_a_file_changes(tmp_path, monkeypatch):
    data, cache = tmp_path / "imgs", tmp_path / "cache"
    for i in range(3):
        solid(data / f"{i}.png", (i * 50, 0, 0), size=(4, 4))
    p = params(data, image_size=4, cache=True, cache_dir=str(cache))
    first = load_image_folder(p)
    assert first.info["cache"] == "written"
    assert len(list((cache / "image-folder").glob("*.npy"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(image_folder, "decode_image", no_decoding)
        second = load_image_folder(p)
    assert second.info["cache"] == "hit"
    assert torch.equal(second.train, first.train)
    # another image size is another entry; a changed file invalidates the entry
    assert (
        load_image_folder(params(data, image_size=8, cache=True, cache_dir=str(cache))).info[
            "cache"
        ]
        == "written"
    )
    solid(data / "1.png", (7, 0, 0), size=(4, 4))
    os.utime(data / "1.png", ns=(1, 1))
    third = load_image_folder(p)
    assert third.info["cache"] == "written"
    assert round(float(third.train[1, 0, 0, 0]) * 127.5 + 127.5) == 7


def test_cache_default_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GAN_PIPE_CACHE", str(tmp_path / "c"))
    assert image_folder.default_cache_dir() == tmp_path / "c" / "datasets"


def test_long_decodes_print_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(image_folder, "PROGRESS_MIN_IMAGES", 3)
    for i in range(3):
        solid(tmp_path / f"{i}.png", GREY, size=(4, 4))
    load_image_folder(params(tmp_path, image_size=4))
    err = capsys.readouterr().err
    assert "decoding 3 images" in err and "3/3 images (100%" in err


def test_uint8_to_float_chunks(monkeypatch):
    monkeypatch.setattr(image_folder, "CHUNK_ROWS", 2)
    images = np.arange(5 * 3, dtype=np.uint8).reshape(5, 3, 1, 1) * 17
    rows = np.array([4, 0, 2])
    got = image_folder.uint8_to_float(images, rows, "unit")
    torch.testing.assert_close(got, torch.from_numpy(images[rows] / 255.0).float())


RUN_RECIPE = """
[experiment]
name = "folder"
seed = 0

[data]
name = "image-folder"
[data.params]
path = "{path}"
image_size = 28
val_fraction = 0.1
test_fraction = 0.2

[model.generator]
name = "dcgan"

[model.discriminator]
name = "dcgan"

[noise]
distribution = "uniform"
dim = 20

[loss]
name = "non-saturating"

[train]
batch_size = 8
steps = 2
log_every = 1
progress = false

[[evaluate.metrics]]
name = "parzen"
[evaluate.metrics.params]
n_samples = 32
n_val = 4
n_test = 8

[[report]]
name = "sample-grid"
[report.params]
n = 4
"""


@pytest.mark.slow
def test_tiny_run_over_a_folder_through_the_cli(workdir):
    """The digits-size DCGAN (28x28, seed 003's defaults) on 3-channel images from a folder."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from gan_pipe.cli import app

    rng = np.random.default_rng(0)
    folder = workdir / "faces"
    folder.mkdir()
    for i in range(40):
        size = tuple(int(s) for s in rng.integers(30, 60, 2))
        img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png" if i % 2 else folder / f"{i:03d}.jpg")
    recipe = workdir / "folder.toml"
    recipe.write_text(RUN_RECIPE.format(path=folder.as_posix()))
    res = CliRunner().invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output
    (run,) = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.name"] == "image-folder"
    assert np.isfinite(run.data.metrics["eval/parzen_ll"])
    assert run.data.metrics["eval/parzen_n_test"] == 8


def test_unwritable_cache_only_warns(tmp_path, capsys):
    solid(tmp_path / "imgs" / "a.png", GREY, size=(4, 4))
    (tmp_path / "blocker").write_text("a file where the cache directory should be")
    ds = load_image_folder(
        params(tmp_path / "imgs", image_size=4, cache=True, cache_dir=str(tmp_path / "blocker"))
    )
    assert len(ds.train) == 1 and ds.info["cache"] == "failed"
    assert "could not write the cache" in capsys.readouterr().err
