"""Downloads over a local http.server (127.0.0.1) and file:// URLs, checksums and tar extraction.

Nothing here touches the internet.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import shutil
import socket
import tarfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import pytorch_lightning as pl
import torch

from conftest import MNIST_DIR
from lightning_echo.data import CIFAR10DataModule, CovtypeDataModule, MNISTDataModule
from lightning_echo.data.formats.cifar_pickle import write_cifar_batch
from lightning_echo.data.modules.covtype import COVTYPE_BZ2_MD5
from lightning_echo.data.download import download_file, extract_tar, md5_of, sha256_of
from lightning_echo.data.formats.idx import write_idx
from lightning_echo.data.formats.libsvm import write_libsvm
from lightning_echo.data.modules.mnist import IDX_FILES, MNIST_SHA256
from lightning_echo.errors import ConfigError, DataFileError
from lightning_echo.models import LogisticRegression

SHARED_MNIST = MNIST_DIR  # ../shared/data/mnist beside the clone, when it is there


@pytest.fixture(autouse=True)
def no_proxy_no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib would send 127.0.0.1 requests to a configured proxy; LIGHTNING_ECHO_DATA must not leak in.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "LIGHTNING_ECHO_DATA"):
        monkeypatch.delenv(name, raising=False)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over http on 127.0.0.1 (any free port), and its base URL."""
    directory = tmp_path / "served"
    directory.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fit_three_steps(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == 3
    return trainer


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- download_file ----------------------------------------------------------------------------


def test_download_http_with_checksums(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    content = b"some dataset bytes\n" * 1000
    (directory / "file.bin").write_bytes(content)
    dest = tmp_path / "out" / "nested" / "file.bin"
    result = download_file(
        f"{base}/file.bin", dest, sha256=hashlib.sha256(content).hexdigest(), md5=hashlib.md5(content).hexdigest()
    )
    assert result == dest and dest.read_bytes() == content
    assert files_in(dest.parent) == ["file.bin"]  # no temporary file left behind


@pytest.mark.parametrize("kind", ["sha256", "md5"])
def test_download_checksum_mismatch_leaves_nothing(served: tuple[Path, str], tmp_path: Path, kind: str) -> None:
    directory, base = served
    (directory / "file.bin").write_bytes(b"the wrong file")
    dest = tmp_path / "out" / "file.bin"
    expected = "0" * (64 if kind == "sha256" else 32)
    with pytest.raises(DataFileError) as excinfo:
        download_file(f"{base}/file.bin", dest, **{kind: expected})
    message = str(excinfo.value)
    got = hashlib.new(kind, b"the wrong file").hexdigest()
    assert "\n" not in message
    assert f"{base}/file.bin" in message and f"expected {expected}" in message and f"got {got}" in message
    assert files_in(dest.parent) == []


def test_download_sha256_of_decompressed_bytes(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    raw = b"raw idx-like content" * 100
    (directory / "data.gz").write_bytes(gzip.compress(raw))
    dest = download_file(
        f"{base}/data.gz", tmp_path / "data.gz", sha256=hashlib.sha256(raw).hexdigest(), sha256_of_decompressed=True
    )
    assert sha256_of(dest, decompress_gz=True) == hashlib.sha256(raw).hexdigest()
    assert sha256_of(dest) == hashlib.sha256(dest.read_bytes()).hexdigest() != hashlib.sha256(raw).hexdigest()
    assert md5_of(dest) == hashlib.md5(dest.read_bytes()).hexdigest()


def test_download_file_url(tmp_path: Path) -> None:
    source = tmp_path / "source dir" / "file.bin"
    source.parent.mkdir()
    source.write_bytes(b"local bytes")
    dest = download_file(source.as_uri(), tmp_path / "out" / "file.bin", sha256=hashlib.sha256(b"local bytes").hexdigest())
    assert dest.read_bytes() == b"local bytes"


def test_download_errors_are_one_line(served: tuple[Path, str], tmp_path: Path) -> None:
    _, base = served
    cases = {
        f"{base}/absent.bin": "HTTP Error 404",
        (tmp_path / "absent.bin").as_uri(): "No such file",
        "notascheme://x/y": "unknown url type",
    }
    for url, fragment in cases.items():
        with pytest.raises(DataFileError) as excinfo:
            download_file(url, tmp_path / "out" / "file.bin")
        message = str(excinfo.value)
        assert "\n" not in message and url in message and fragment in message, message
        assert files_in(tmp_path / "out") == []


def test_download_times_out(tmp_path: Path) -> None:
    # A server that accepts the connection and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(DataFileError, match="timed out"):
            download_file(f"http://127.0.0.1:{listener.getsockname()[1]}/x", tmp_path / "x", timeout=0.5)
        assert time.monotonic() - start < 10
        assert files_in(tmp_path) == []
    finally:
        listener.close()


# -- extract_tar ------------------------------------------------------------------------------


def _tar_gz(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_extract_tar(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "a.tar.gz", {"top/x.bin": b"x", "top/sub/y.bin": b"yy"})
    target = extract_tar(archive, tmp_path / "out")
    assert (target / "top" / "x.bin").read_bytes() == b"x"
    assert (target / "top" / "sub" / "y.bin").read_bytes() == b"yy"


@pytest.mark.parametrize(
    "members, links",
    [
        ({"ok.bin": b"1", "../escape.bin": b"2"}, None),
        ({"ok.bin": b"1", "top/../../escape.bin": b"2"}, None),
        ({"ok.bin": b"1", "/tmp/absolute-escape.bin": b"2"}, None),
        ({"ok.bin": b"1"}, {"link": "/etc/passwd"}),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink"],
)
def test_extract_tar_refuses_escaping_members(tmp_path: Path, members: dict[str, bytes], links) -> None:
    archive = _tar_gz(tmp_path / "evil.tar.gz", members, links)
    target = tmp_path / "out"
    with pytest.raises(DataFileError) as excinfo:
        extract_tar(archive, target)
    message = str(excinfo.value)
    assert "\n" not in message and "refusing to extract" in message and str(archive) in message
    assert not target.exists()  # checked before anything is written
    assert not (tmp_path / "escape.bin").exists()


def test_extract_tar_broken_archive(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"not a tar")
    with pytest.raises(DataFileError, match="cannot extract"):
        extract_tar(archive, tmp_path / "out")


# -- datamodule downloads ---------------------------------------------------------------------


def _tiny_mnist_gz(directory: Path, n: int = 40) -> None:
    generator = torch.Generator().manual_seed(0)
    for prefix in ("train", "t10k"):
        images = torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=generator, dtype=torch.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present in {SHARED_MNIST}")
def test_mnist_download_end_to_end_with_real_files(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    for name in IDX_FILES:
        shutil.copy(SHARED_MNIST / f"{name}.gz", directory / f"{name}.gz")
    root = tmp_path / "root"
    dm = MNISTDataModule(root=str(root), download=True, url=base + "/", max_train_examples=256, max_val_examples=128, batch_size=32)
    dm.check_files()  # missing but downloadable: no error, and nothing written yet
    assert not root.exists()
    fit_three_steps(LogisticRegression(dm.spec), dm)  # Trainer runs prepare_data(), which downloads
    assert files_in(root / "mnist") == sorted(f"{name}.gz" for name in IDX_FILES)
    for name in IDX_FILES:
        assert sha256_of(root / "mnist" / f"{name}.gz", decompress_gz=True) == MNIST_SHA256[name]

    # A later run without download finds the files where the download put them.
    again = MNISTDataModule(root=str(root), max_train_examples=64, max_val_examples=64)
    again.check_files()
    assert again.splits.x_train.shape == (64, 1, 28, 28)
    fit_three_steps(LogisticRegression(again.spec), again)


def test_mnist_download_checksum_mismatch_leaves_no_file(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    _tiny_mnist_gz(directory)  # right names, wrong content
    root = tmp_path / "root"
    dm = MNISTDataModule(root=str(root), download=True, url=base)
    with pytest.raises(DataFileError) as excinfo:
        dm.prepare_data()
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"{base}/train-images-idx3-ubyte.gz" in message
    assert f"expected {MNIST_SHA256['train-images-idx3-ubyte']}" in message and "got " in message
    assert "data.verify_checksums=false" in message
    assert files_in(root / "mnist") == []


def test_mnist_download_from_file_url_without_checksums(tmp_path: Path) -> None:
    source = tmp_path / "mirror"
    source.mkdir()
    _tiny_mnist_gz(source)
    root = tmp_path / "root"
    dm = MNISTDataModule(root=str(root), download=True, verify_checksums=False, url=source.as_uri(), batch_size=8)
    fit_three_steps(LogisticRegression(dm.spec), dm)
    assert files_in(root / "mnist") == sorted(f"{name}.gz" for name in IDX_FILES)
    assert dm.splits.x_train.shape == (40, 1, 28, 28)


def test_download_only_fetches_missing_files(tmp_path: Path) -> None:
    source = tmp_path / "mirror"
    source.mkdir()
    _tiny_mnist_gz(source)
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    shutil.copy(source / "t10k-labels-idx1-ubyte.gz", root / "mnist" / "t10k-labels-idx1-ubyte.gz")
    (source / "t10k-labels-idx1-ubyte.gz").unlink()  # would fail if it were requested
    dm = MNISTDataModule(root=str(root), download=True, verify_checksums=False, url=source.as_uri())
    dm.prepare_data()
    assert dm.locate()[1] == []


def test_download_needs_a_root(tmp_path: Path) -> None:
    dm = MNISTDataModule(download=True)
    with pytest.raises(ConfigError, match="root"):
        dm.check_files()


def test_covtype_download(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(60, 54, generator=generator)
    y = torch.randint(1, 3, (60,), generator=generator)
    write_libsvm(directory / "covtype.libsvm.binary.scale.bz2", x, y)
    url = f"{base}/covtype.libsvm.binary.scale.bz2"

    checked = CovtypeDataModule(root=str(tmp_path / "checked"), download=True, url=url)
    with pytest.raises(DataFileError) as excinfo:
        checked.prepare_data()  # the tiny file does not have the real file's md5
    assert f"expected {COVTYPE_BZ2_MD5}" in str(excinfo.value) and "data.verify_checksums=false" in str(excinfo.value)
    assert files_in(tmp_path / "checked" / "covtype") == []

    root = tmp_path / "root"
    dm = CovtypeDataModule(root=str(root), download=True, verify_checksums=False, url=url, batch_size=8)
    fit_three_steps(LogisticRegression(dm.spec), dm)
    assert files_in(root / "covtype") == ["covtype.libsvm.binary.scale.bz2"]
    assert bz2.decompress((root / "covtype" / "covtype.libsvm.binary.scale.bz2").read_bytes()).startswith((b"1 ", b"2 "))
    assert len(dm.splits.y_train) + len(dm.splits.y_val) == 60


def test_cifar10_download_and_extract(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    build = tmp_path / "build" / "cifar-10-batches-py"
    build.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = torch.randint(0, 256, (8, 3, 32, 32), generator=generator, dtype=torch.uint8)
        write_cifar_batch(build / name, images, torch.randint(0, 10, (8,), generator=generator))
    (build / "batches.meta").write_bytes(b"meta")
    with tarfile.open(directory / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(build, arcname="cifar-10-batches-py")
    url = f"{base}/cifar-10-python.tar.gz"

    checked = CIFAR10DataModule(root=str(tmp_path / "checked"), download=True, url=url)
    with pytest.raises(DataFileError, match="md5 mismatch: expected c58f30108f718f92721af3b95e74349a"):
        checked.prepare_data()
    assert files_in(tmp_path / "checked" / "cifar10") == []

    root = tmp_path / "root"
    dm = CIFAR10DataModule(root=str(root), download=True, verify_checksums=False, url=url, batch_size=8)
    fit_three_steps(LogisticRegression(dm.spec), dm)
    # Only the extracted batches remain: no archive, no scratch directory.
    assert files_in(root / "cifar10") == ["cifar-10-batches-py"]
    assert dm.splits.x_train.shape == (40, 3, 32, 32) and dm.splits.x_val.shape == (8, 3, 32, 32)


def test_download_of_corrupt_archive_with_decompressed_checksum(served: tuple[Path, str], tmp_path: Path) -> None:
    directory, base = served
    (directory / "data.gz").write_bytes(gzip.compress(b"payload")[:-6])  # truncated gzip stream
    with pytest.raises(DataFileError) as excinfo:
        download_file(f"{base}/data.gz", tmp_path / "data.gz", sha256="0" * 64, sha256_of_decompressed=True)
    assert "cannot check its sha256" in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert files_in(tmp_path) == ["served"]
