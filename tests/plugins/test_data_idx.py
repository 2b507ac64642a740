"""The IDX reader and the ``mnist`` / ``fashion-mnist`` datasets, on small files written here.

No test touches the network: the downloader is replaced, or fed ``file://`` URLs.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data import idx
from gan_pipe.plugins.data.idx import (
    FILE_NAMES,
    MNIST,
    FashionMnistParams,
    IdxFormatError,
    IdxSource,
    MnistParams,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from gan_pipe.registry import Register, Registry

CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
N_TRAIN, N_TEST = 30, 12


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """IDX encoding written from the format's definition, independent of the reader."""
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(CODES[code]).tobytes()


def write(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    data = idx_bytes(arr, code)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def fake_arrays(seed: int = 0, n_train: int = N_TRAIN) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        FILE_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        FILE_NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        FILE_NAMES[2]: rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        FILE_NAMES[3]: rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }


def make_data_dir(
    directory: Path, gz: tuple[bool, ...] = (True, False, False, True), n_train: int = N_TRAIN
) -> dict[str, np.ndarray]:
    """The four files in ``directory`` (some .gz, some raw); returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = fake_arrays(n_train=n_train)
    for (name, arr), compressed in zip(arrays.items(), gz, strict=True):
        write(directory / (name + (".gz" if compressed else "")), arr)
    return arrays


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the downloader; any call is recorded and fails like an offline machine."""
    calls: list[str] = []

    def offline(url: str, dest: Path, md5: str | None = None, timeout: float = 0) -> None:
        calls.append(url)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(idx, "download_file", offline)
    return calls


# ---------------------------------------------------------------- the IDX format
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code", sorted(CODES))
def test_round_trip_every_type(tmp_path: Path, code: int, suffix: str) -> None:
    rng = np.random.default_rng(code)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(np.dtype(CODES[code]).newbyteorder("="))
    path = write(tmp_path / f"x-idx3-ubyte{suffix}", arr, code)
    got = read_idx(path)
    assert got.dtype == arr.dtype and got.dtype.byteorder in ("=", "|")
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_images_and_labels(tmp_path: Path, suffix: str) -> None:
    arrays = fake_arrays()
    for name, arr in arrays.items():
        got = read_idx(write(tmp_path / (name + suffix), arr))
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arr)


def test_header_is_big_endian(tmp_path: Path) -> None:
    # 2051 / 2049 are the magic numbers of MNIST's image / label files.
    arr = np.arange(2 * 3 * 256, dtype=np.uint8).reshape(2, 3, 256)
    data = idx_bytes(arr, 0x08)
    assert struct.unpack(">I", data[:4])[0] == 2051
    assert struct.unpack(">I", idx_bytes(np.zeros(4, np.uint8), 0x08)[:4])[0] == 2049
    (tmp_path / "a").write_bytes(data)
    assert read_idx(tmp_path / "a").shape == (2, 3, 256)


def test_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x1f\x8b\x08\x03" + bytes(100))
    with pytest.raises(IdxFormatError, match="bad magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UserError)


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(IdxFormatError, match="type code 0x0A") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [2, 6, -1, -500])
def test_truncated_file_names_the_file(tmp_path: Path, keep: int) -> None:
    data = idx_bytes(fake_arrays()[FILE_NAMES[0]], 0x08)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:keep])
    with pytest.raises(IdxFormatError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8), 0x08) + b"extra")
    with pytest.raises(IdxFormatError, match="5 bytes after"):
        read_idx(path)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(fake_arrays()[FILE_NAMES[0]], 0x08))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError) as info:
        read_idx(path)
    assert str(path) in str(info.value) and "gzip" in str(info.value)


def test_not_gzip_with_gz_suffix_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8), 0x08))
    with pytest.raises(IdxFormatError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- the datasets
def test_loads_mixed_raw_and_gz_without_downloading(tmp_path: Path, no_download: list) -> None:
    arrays = make_data_dir(tmp_path / "mn")
    ds = load_mnist(MnistParams(data_dir=str(tmp_path / "mn"), val_size=10))
    assert no_download == []
    assert ds.name == "mnist" and ds.is_image and ds.value_range == (-1.0, 1.0)
    assert ds.train.shape == (N_TRAIN - 10, 1, 28, 28)
    assert ds.val.shape == (10, 1, 28, 28)
    assert ds.test.shape == (N_TEST, 1, 28, 28)
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
        assert t.min() >= -1 and t.max() <= 1
    images = arrays[FILE_NAMES[0]].astype(np.float32)
    np.testing.assert_allclose(ds.train[:, 0].numpy(), (images[:20] - 127.5) / 127.5, atol=1e-7)
    # Validation is the LAST val_size training images, as in Goodfellow's train[50000:60000].
    np.testing.assert_allclose(ds.val[:, 0].numpy(), (images[20:] - 127.5) / 127.5, atol=1e-7)
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays[FILE_NAMES[1]][:20])
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays[FILE_NAMES[3]])
    assert ds.train_labels.dtype == torch.int64
    assert ds.info["n_train"] == 20 and ds.info["n_val"] == 10 and ds.info["n_test"] == N_TEST
    assert ds.info["val_slice"] == "train[20:30]"
    assert ds.info["data_dir"] == str((tmp_path / "mn").resolve())


def test_unit_scale_and_flatten(tmp_path: Path, no_download: list) -> None:
    arrays = make_data_dir(tmp_path)
    ds = load_mnist(MnistParams(data_dir=str(tmp_path), val_size=5, scale="unit", flatten=True))
    assert ds.value_range == (0.0, 1.0)
    assert ds.train.shape == (25, 784) and ds.val.shape == (5, 784) and ds.test.shape == (12, 784)
    want = arrays[FILE_NAMES[2]].reshape(N_TEST, -1).astype(np.float32) / 255.0
    np.testing.assert_allclose(ds.test.numpy(), want, atol=1e-7)
    assert ds.test.is_contiguous()


def test_limit_uses_the_first_images_and_keeps_validation(tmp_path: Path, no_download) -> None:
    arrays = make_data_dir(tmp_path)
    full = load_mnist(MnistParams(data_dir=str(tmp_path), val_size=10))
    ds = load_mnist(MnistParams(data_dir=str(tmp_path), val_size=10, limit=7))
    assert ds.train.shape[0] == 7 and ds.train_labels.shape == (7,)
    assert torch.equal(ds.train, full.train[:7])
    assert torch.equal(ds.val, full.val)
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays[FILE_NAMES[1]][:7])
    # A limit above what is left after validation is simply everything left.
    big = load_mnist(MnistParams(data_dir=str(tmp_path), val_size=10, limit=1000))
    assert big.train.shape[0] == 20


def test_val_size_zero_and_too_large(tmp_path: Path, no_download: list) -> None:
    make_data_dir(tmp_path)
    ds = load_mnist(MnistParams(data_dir=str(tmp_path), val_size=0))
    assert ds.val is None and ds.train.shape[0] == N_TRAIN
    with pytest.raises(UserError, match="val_size"):
        load_mnist(MnistParams(data_dir=str(tmp_path), val_size=N_TRAIN))


def test_default_val_size_is_goodfellow_protocol() -> None:
    assert MnistParams().val_size == 10000 and MnistParams().limit is None
    assert MnistParams().data_dir == "./data/mnist"
    assert FashionMnistParams().data_dir == "./data/fashion-mnist"
    assert MnistParams().download is True and MnistParams().scale == "tanh"


@pytest.mark.parametrize(
    "raw", [{"scale": "sigmoid"}, {"val_size": -1}, {"limit": 0}, {"data_dir": ""}, {"dir": "x"}]
)
def test_bad_params_are_rejected(raw: dict) -> None:
    with pytest.raises(ValidationError):
        MnistParams.model_validate(raw)


def test_every_param_is_described() -> None:
    for model in (MnistParams, FashionMnistParams):
        for name, field in model.model_fields.items():
            assert field.description, name


def test_home_is_expanded(tmp_path: Path, monkeypatch, no_download) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    make_data_dir(tmp_path / "mnist-here")
    ds = load_mnist(MnistParams(data_dir="~/mnist-here", val_size=1))
    assert ds.info["data_dir"] == str((tmp_path / "mnist-here").resolve())


def test_mismatched_counts_are_an_error(tmp_path: Path, no_download: list) -> None:
    make_data_dir(tmp_path, gz=(False, False, False, False))
    write(tmp_path / FILE_NAMES[1], np.zeros(N_TRAIN - 1, np.uint8))
    with pytest.raises(IdxFormatError, match="labels") as info:
        load_mnist(MnistParams(data_dir=str(tmp_path), val_size=1))
    assert FILE_NAMES[1] in str(info.value)


def test_corrupt_existing_file_is_reported_not_redownloaded(tmp_path: Path, no_download) -> None:
    make_data_dir(tmp_path, gz=(False, False, False, False))
    (tmp_path / FILE_NAMES[2]).write_bytes(b"\x00\x00\x08\x03" + bytes(10))
    with pytest.raises(IdxFormatError, match="truncated") as info:
        load_mnist(MnistParams(data_dir=str(tmp_path), val_size=1))
    assert str(tmp_path / FILE_NAMES[2]) in str(info.value)
    assert no_download == []


# ---------------------------------------------------------------- missing files
def assert_explains_where_to_put_files(message: str, directory: Path) -> None:
    for name in FILE_NAMES:
        assert name in message
    assert str(directory.resolve()) in message
    assert ".gz" in message and "uncompressed" in message


def test_missing_files_offline_raise_data_not_found(tmp_path: Path, no_download) -> None:
    target = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        load_mnist(MnistParams(data_dir=str(target)))
    assert isinstance(info.value, UserError)
    assert_explains_where_to_put_files(str(info.value), target)
    # Both mirrors were tried, in order, for the first missing file; then it gave up.
    assert no_download == [m + FILE_NAMES[0] + ".gz" for m in MNIST.mirrors]
    assert "network is unreachable" in str(info.value)


def test_download_off_never_calls_the_downloader(tmp_path: Path, no_download) -> None:
    make_data_dir(tmp_path)
    (tmp_path / (FILE_NAMES[3] + ".gz")).unlink()
    with pytest.raises(DataNotFoundError, match="download is off") as info:
        load_mnist(MnistParams(data_dir=str(tmp_path), download=False))
    assert no_download == []
    assert_explains_where_to_put_files(str(info.value), tmp_path)
    assert f"missing in {tmp_path.resolve()}: {FILE_NAMES[3]};" in str(info.value)


def test_fashion_mnist_missing_offline(tmp_path: Path, no_download, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError, match="Fashion-MNIST") as info:
        load_fashion_mnist(FashionMnistParams())
    assert_explains_where_to_put_files(str(info.value), tmp_path / "data" / "fashion-mnist")
    assert no_download == [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz"
    ]


def test_downloads_only_missing_files_with_md5_and_mirror_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_dir = tmp_path / "mirror"
    arrays = make_data_dir(source_dir, gz=(True, True, True, True))
    target = tmp_path / "data"
    make_data_dir(target, gz=(False, False, False, False))
    for name in (FILE_NAMES[0], FILE_NAMES[3]):
        (target / name).unlink()
    calls: list[tuple[str, str | None]] = []

    def fake(url: str, dest: Path, md5: str | None = None, timeout: float = 0) -> None:
        calls.append((url, md5))
        if url.startswith(MNIST.mirrors[0]):
            raise OSError("first mirror down (test)")
        dest.write_bytes((source_dir / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(idx, "download_file", fake)
    ds = load_mnist(MnistParams(data_dir=str(target), val_size=3))
    assert [u for u, _ in calls] == [
        MNIST.mirrors[0] + FILE_NAMES[0] + ".gz",
        MNIST.mirrors[1] + FILE_NAMES[0] + ".gz",
        MNIST.mirrors[0] + FILE_NAMES[3] + ".gz",
        MNIST.mirrors[1] + FILE_NAMES[3] + ".gz",
    ]
    assert calls[1][1] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert calls[3][1] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert (target / (FILE_NAMES[0] + ".gz")).is_file()
    want = (arrays[FILE_NAMES[0]][: N_TRAIN - 3].astype(np.float32) - 127.5) / 127.5
    np.testing.assert_allclose(ds.train[:, 0].numpy(), want, atol=1e-7)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_full_download_path_with_file_urls(tmp_path: Path, monkeypatch) -> None:
    """The real downloader and ensure_files, fed file:// URLs: no network involved."""
    good = tmp_path / "good"
    make_data_dir(good, gz=(True, True, True, True))
    md5 = {n + ".gz": md5_of(good / (n + ".gz")) for n in FILE_NAMES}
    md5[FILE_NAMES[2] + ".gz"] = "0" * 32  # wrong on purpose: that file must fail, cleanly
    source = IdxSource(
        "fake", "Fake", "./x", (f"file://{tmp_path}/absent/", f"file://{good}/"), md5
    )
    target = tmp_path / "target"
    with pytest.raises(DataNotFoundError, match="MD5 mismatch") as info:
        idx.ensure_files(source, target, download=True)
    assert_explains_where_to_put_files(str(info.value), target)
    present = sorted(p.name for p in target.iterdir())
    # Files before the bad one arrived; nothing half-written (no .part) is left behind.
    assert present == sorted([FILE_NAMES[0] + ".gz", FILE_NAMES[1] + ".gz"])
    md5[FILE_NAMES[2] + ".gz"] = md5_of(good / (FILE_NAMES[2] + ".gz"))
    paths = idx.ensure_files(source, target, download=True)
    assert sorted(paths) == sorted(FILE_NAMES)
    assert sorted(p.name for p in target.iterdir()) == sorted(n + ".gz" for n in FILE_NAMES)
    for name, path in paths.items():
        assert path.read_bytes() == (good / (name + ".gz")).read_bytes()


def test_download_file_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        idx.download_file(f"file://{tmp_path}/does-not-exist.gz", tmp_path / "out.gz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- registration
def test_registration_through_the_hook(tmp_path: Path, monkeypatch, no_download) -> None:
    registry = Registry()
    idx.register_datasets(Register(registry, "dataset", "test"))
    assert registry.names("dataset") == ["fashion-mnist", "mnist"]
    monkeypatch.chdir(tmp_path)
    # Enough training images for the default val_size (10,000) to leave 5 for training.
    arrays = make_data_dir(tmp_path / "data" / "mnist", n_train=10_005)
    make_data_dir(tmp_path / "data" / "fashion-mnist", gz=(False, True, False, True))
    mnist = registry.get("dataset", "mnist")
    assert mnist.plugin == "test" and mnist.description and mnist.params is MnistParams
    ds = mnist.factory(mnist.params())
    assert ds.name == "mnist" and ds.value_range == (-1.0, 1.0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 10_000, N_TEST)
    want = (arrays[FILE_NAMES[0]][5:].astype(np.float32) - 127.5) / 127.5
    np.testing.assert_allclose(ds.val[:, 0].numpy(), want, atol=1e-7)
    fashion = registry.get("dataset", "fashion-mnist")
    assert fashion.params is FashionMnistParams
    with pytest.raises(UserError, match="val_size"):  # 10,000 > the 30 written there
        fashion.factory(fashion.params())
    ds = fashion.factory(fashion.validate_params({"val_size": 6, "limit": 4}))
    assert ds.name == "fashion-mnist"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 6, N_TEST)
    assert no_download == []


def test_module_import_is_light() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys; import gan_pipe.plugins.data.idx; "
        "print(sorted(m for m in ('torch', 'numpy', 'urllib.request') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert "torch" not in out.stdout
