"""The ``cifar10`` dataset on small binary batch files written here (no network).

Records are built from the format's definition: one label byte, then 1,024 red, 1,024 green
and 1,024 blue bytes (row-major 32x32). Each image's pixels encode its position so order and
channel layout can be checked exactly.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from gan_pipe.errors import DataNotFoundError, UserError
from gan_pipe.plugins.data import cifar10
from gan_pipe.plugins.data.cifar10 import FILES, Cifar10Params, load_cifar10

R = 6  # records per file: 30 training images, 6 test images


def image(k: int) -> np.ndarray:
    """A (3, 32, 32) uint8 image that identifies k: red = k, green = 2k + row, blue = column."""
    img = np.empty((3, 32, 32), dtype=np.uint8)
    img[0] = k
    img[1] = (2 * k + np.arange(32)[:, None]) % 256
    img[2] = np.arange(32)[None, :]
    return img


def batch_bytes(start: int, labels: list[int]) -> bytes:
    """Records for images ``start``, ``start + 1``, ... with the given labels."""
    out = bytearray()
    for i, label in enumerate(labels):
        out.append(label)
        out += image(start + i).tobytes()  # C-order (3, 32, 32): R plane, G plane, B plane
    return bytes(out)


def labels_of(k: int) -> int:
    return (7 * k) % 10


def all_files() -> dict[str, bytes]:
    files = {}
    for i, name in enumerate(FILES):
        start = 100 if name == "test_batch.bin" else i * R
        files[name] = batch_bytes(start, [labels_of(start + j) for j in range(R)])
    return files


def write_folder(folder: Path, files: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in (files or all_files()).items():
        (folder / name).write_bytes(data)
    return folder


def write_archive(path: Path, files: dict[str, bytes] | None = None, extra=()) -> Path:
    """A .tar.gz like the official one; ``extra`` adds (member name, bytes) pairs first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    members = list(extra) + [
        (f"cifar-10-batches-bin/{n}", d) for n, d in (files or all_files()).items()
    ]
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def params(data_dir: Path, **kw) -> Cifar10Params:
    kw.setdefault("batch_records", R)
    kw.setdefault("val_size", 5)
    kw.setdefault("download", False)
    return Cifar10Params(data_dir=str(data_dir), **kw)


def unit(x: torch.Tensor) -> np.ndarray:
    """tanh-scaled pixels back to bytes."""
    return np.rint(x.numpy() * 127.5 + 127.5).astype(int)


@pytest.fixture
def no_download(monkeypatch):
    calls = []

    def offline(url, dest, md5=None, timeout=0):
        calls.append((url, md5))
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(cifar10, "download_file", offline)
    return calls


def test_pixels_labels_order_and_splits(tmp_path):
    # data_dir is the extracted folder itself, or its parent
    inner = load_cifar10(params(write_folder(tmp_path / "cifar-10-batches-bin")))
    ds = load_cifar10(params(tmp_path))
    assert torch.equal(inner.train, ds.train) and torch.equal(inner.test, ds.test)
    assert ds.shape == (3, 32, 32) and ds.is_image and ds.value_range == (-1.0, 1.0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (25, 5, R)
    # training = images 0..24 in file order, validation = the last 5 (25..29)
    assert unit(ds.train[:, 0, 0, 0]).tolist() == list(range(25))
    assert unit(ds.val[:, 0, 0, 0]).tolist() == list(range(25, 30))
    assert unit(ds.test[:, 0, 0, 0]).tolist() == list(range(100, 100 + R))
    # CHW: green varies with the row, blue with the column
    np.testing.assert_array_equal(unit(ds.train[7]), image(7).astype(int))
    assert ds.train_labels.dtype == torch.int64
    assert ds.train_labels.tolist() == [labels_of(k) for k in range(25)]
    assert ds.test_labels.tolist() == [labels_of(k) for k in range(100, 100 + R)]
    # exact scale: byte 0 -> -1, 255 -> 1
    assert ds.train[0, 0].min() == -1.0
    assert float(ds.train[0, 2].max()) == pytest.approx((31 - 127.5) / 127.5, abs=1e-7)


def test_unit_scale_limit_and_val_zero(tmp_path):
    folder = write_folder(tmp_path)
    ds = load_cifar10(params(folder, scale="unit", limit=4, val_size=0))
    assert len(ds.train) == 4 and ds.val is None
    torch.testing.assert_close(
        ds.train[3], torch.from_numpy(image(3)).float() / 255, rtol=0, atol=1e-7
    )
    assert ds.value_range == (0.0, 1.0)


def test_classes_subset(tmp_path):
    ds = load_cifar10(params(write_folder(tmp_path), classes=[3, 1], val_size=2))
    keep = [k for k in range(30) if labels_of(k) in (1, 3)]
    assert set(ds.train_labels.tolist()) | set(ds.test_labels.tolist()) <= {1, 3}
    assert unit(ds.train[:, 0, 0, 0]).tolist() == keep[:-2]
    assert unit(ds.val[:, 0, 0, 0]).tolist() == keep[-2:]
    assert ds.test_labels.tolist() == [
        labels_of(k) for k in range(100, 106) if labels_of(k) in (1, 3)
    ]
    assert ds.info["classes"] == "automobile,cat"
    with pytest.raises(UserError, match="val_size = 50 leaves no training images"):
        load_cifar10(params(tmp_path, classes=[3], val_size=50))


def test_params_are_checked():
    with pytest.raises(ValidationError, match="labels are 0..9"):
        Cifar10Params(classes=[10])
    with pytest.raises(ValidationError, match="repeated"):
        Cifar10Params(classes=[1, 1])
    with pytest.raises(ValidationError):
        Cifar10Params(data_dirr="x")
    assert Cifar10Params().data_dir == "./data/cifar10" and Cifar10Params().batch_records == 10000


def test_wrong_size_names_the_file_and_the_expected_size(tmp_path):
    files = all_files()
    files["data_batch_3.bin"] = files["data_batch_3.bin"][:-100]
    write_folder(tmp_path, files)
    with pytest.raises(UserError, match=r"data_batch_3\.bin: 18,338 bytes, expected 18,438"):
        load_cifar10(params(tmp_path))
    # the official size is 10,000 records
    write_folder(tmp_path)
    with pytest.raises(UserError, match=r"data_batch_1\.bin: .* expected 30,730,000 \(10,000 rec"):
        load_cifar10(params(tmp_path, batch_records=10000))


def test_bad_label_names_the_file_and_record(tmp_path):
    files = all_files()
    files["test_batch.bin"] = batch_bytes(100, [0, 1, 2, 12, 4, 5])
    write_folder(tmp_path, files)
    with pytest.raises(UserError, match=r"test_batch\.bin: record 3 has label 12"):
        load_cifar10(params(tmp_path))


def test_archive_is_read_without_extracting(tmp_path):
    write_archive(tmp_path / "cifar-10-binary.tar.gz")
    ds = load_cifar10(params(tmp_path))
    assert unit(ds.train[:, 0, 0, 0]).tolist() == list(range(25))
    assert ds.test_labels.tolist() == [labels_of(k) for k in range(100, 100 + R)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_archive_errors_name_the_archive(tmp_path):
    bad = tmp_path / "traversal"
    write_archive(bad / "cifar-10-binary.tar.gz", extra=[("../evil.bin", b"x")])
    with pytest.raises(UserError, match=r"cifar-10-binary\.tar\.gz: refusing .*'\.\./evil\.bin'"):
        load_cifar10(params(bad))
    assert not (tmp_path / "evil.bin").exists()
    absolute = tmp_path / "absolute"
    write_archive(absolute / "cifar-10-binary.tar.gz", extra=[("/tmp/evil.bin", b"x")])
    with pytest.raises(UserError, match="unsafe member name '/tmp/evil.bin'"):
        load_cifar10(params(absolute))
    partial = tmp_path / "partial"
    files = all_files()
    del files["data_batch_4.bin"]
    write_archive(partial / "cifar-10-binary.tar.gz", files)
    with pytest.raises(UserError, match=r"lacks data_batch_4\.bin"):
        load_cifar10(params(partial))
    cut = tmp_path / "cut"
    data = write_archive(cut / "cifar-10-binary.tar.gz").read_bytes()
    (cut / "cifar-10-binary.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut/cifar-10-binary\.tar\.gz: corrupt or truncated"):
        load_cifar10(params(cut))
    sized = tmp_path / "sized"
    files = all_files()
    files["data_batch_2.bin"] += b"\0"
    write_archive(sized / "cifar-10-binary.tar.gz", files)
    with pytest.raises(UserError, match=r"tar\.gz:cifar-10-batches-bin/data_batch_2\.bin: 18,439"):
        load_cifar10(params(sized))


def test_missing_data_says_what_to_put_where(tmp_path, no_download):
    files = all_files()
    del files["data_batch_5.bin"]
    write_folder(tmp_path / "cifar-10-batches-bin", files)
    with pytest.raises(DataNotFoundError) as e:
        load_cifar10(params(tmp_path))
    msg = str(e.value)
    assert "download is off" in msg and "cifar-10-binary.tar.gz" in msg
    assert str(tmp_path / "cifar-10-batches-bin") in msg and "data_batch_5.bin" in msg
    assert no_download == []
    with pytest.raises(DataNotFoundError, match="the download failed .*network is unreachable"):
        load_cifar10(params(tmp_path, download=True))
    assert no_download == [(cifar10.URL, cifar10.ARCHIVE_MD5)]


def test_download_puts_the_archive_in_data_dir(tmp_path, monkeypatch):
    source = write_archive(tmp_path / "server" / "cifar-10-binary.tar.gz")

    def fake_download(url, dest, md5=None, timeout=0):
        assert url == cifar10.URL
        dest.write_bytes(source.read_bytes())

    monkeypatch.setattr(cifar10, "download_file", fake_download)
    ds = load_cifar10(params(tmp_path / "new" / "dir", download=True))
    assert len(ds.train) == 25
    assert (tmp_path / "new" / "dir" / "cifar-10-binary.tar.gz").is_file()


def test_real_downloader_checks_md5(tmp_path):
    """The shared downloader (idx.download_file) on a file:// URL: a wrong MD5 leaves nothing."""
    from gan_pipe.plugins.data.idx import download_file

    src = write_archive(tmp_path / "src.tar.gz")
    with pytest.raises(ValueError, match="MD5 mismatch"):
        download_file(src.as_uri(), tmp_path / "out.tar.gz", cifar10.ARCHIVE_MD5)
    assert not (tmp_path / "out.tar.gz").exists()
