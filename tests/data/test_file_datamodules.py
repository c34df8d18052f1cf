"""File-backed datamodules on tiny real-format files, and on the real MNIST when it is present."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Callable

import pytest
import pytorch_lightning as pl
import torch

from conftest import MNIST_DIR, write_mnist_like
from lightning_echo.data import CIFAR10DataModule, CovtypeDataModule, FashionMNISTDataModule, MNISTDataModule
from lightning_echo.data.formats.cifar_pickle import write_cifar_batch
from lightning_echo.data.modules.covtype import binary_labels
from lightning_echo.data.formats.idx import write_idx
from lightning_echo.data.formats.libsvm import write_libsvm
from lightning_echo.data.modules.mnist import FASHION_MNIST_DEBIAN_DIR, IDX_FILES
from lightning_echo.data.spec import DataSpec
from lightning_echo.errors import ConfigError, DataFileError
from lightning_echo.models import CNN, MLP, LogisticRegression

SHARED_MNIST = MNIST_DIR  # ../shared/data/mnist beside the clone, when it is there
N_TRAIN, N_VAL = 48, 24


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIGHTNING_ECHO_DATA", raising=False)


def fit_three_steps(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """Train 3 steps with a real Trainer; check the steps ran and the parameters moved."""
    before = [p.detach().clone() for p in model.parameters()]
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
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def write_covtype(path: Path, labels: tuple[float, float] = (1, 2), n: int = 80) -> Path:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 54, generator=generator) * 2 - 1
    x[:, 10:] = (x[:, 10:] > 0.8).float()  # the one-hot part of the real file is mostly zeros
    y = torch.tensor(labels, dtype=torch.float64)[torch.randint(0, 2, (n,), generator=generator)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_libsvm(path, x, y)


def write_cifar(batches_dir: Path, n: int = 12) -> Path:
    batches_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
        write_cifar_batch(batches_dir / name, images, torch.randint(0, 10, (n,), generator=generator))
    return batches_dir


# -- training on each dataset with each compatible model -----------------------------------------

MODELS = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}


def make_mnist(root: Path) -> MNISTDataModule:
    write_mnist_like(root / "mnist", gz=True)
    return MNISTDataModule(root=str(root), verify_checksums=False, batch_size=8)


def make_fashion(root: Path) -> FashionMNISTDataModule:
    write_mnist_like(root / "fashion_mnist", gz=False)
    return FashionMNISTDataModule(root=str(root), verify_checksums=False, batch_size=8)


def make_covtype(root: Path) -> CovtypeDataModule:
    write_covtype(root / "covtype" / "covtype.libsvm.binary.scale")
    return CovtypeDataModule(root=str(root), batch_size=8)


def make_cifar(root: Path) -> CIFAR10DataModule:
    write_cifar(root / "cifar10" / "cifar-10-batches-py")
    return CIFAR10DataModule(root=str(root), batch_size=8)


CASES = [
    ("mnist", make_mnist, ["logreg", "mlp", "cnn"]),
    ("fashion", make_fashion, ["logreg", "mlp", "cnn"]),
    ("covtype", make_covtype, ["logreg", "mlp"]),
    ("cifar10", make_cifar, ["logreg", "mlp", "cnn"]),
]


@pytest.mark.parametrize(
    "make, model_name",
    [pytest.param(make, model, id=f"{name}-{model}") for name, make, models in CASES for model in models],
)
def test_fit_on_tiny_real_format_files(tmp_path: Path, make: Callable, model_name: str) -> None:
    dm = make(tmp_path)
    dm.check_files()
    fit_three_steps(MODELS[model_name](dm.spec), dm)


@pytest.mark.parametrize(
    "make, spec, n_train, n_val",
    [
        (make_mnist, DataSpec("mnist", (1, 28, 28), 10), N_TRAIN, N_VAL),
        (make_fashion, DataSpec("fashion_mnist", (1, 28, 28), 10), N_TRAIN, N_VAL),
        (make_covtype, DataSpec("covtype", (54,), 2), 72, 8),
        (make_cifar, DataSpec("cifar10", (3, 32, 32), 10), 60, 12),
    ],
    ids=["mnist", "fashion", "covtype", "cifar10"],
)
def test_splits_shapes_and_types(tmp_path: Path, make: Callable, spec: DataSpec, n_train: int, n_val: int) -> None:
    dm = make(tmp_path)
    assert dm.spec == spec
    splits = dm.splits
    assert splits.x_train.shape == (n_train, *spec.input_shape) and splits.x_val.shape == (n_val, *spec.input_shape)
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    assert splits.y_train.shape == (n_train,) and splits.y_val.shape == (n_val,)
    assert 0 <= int(splits.y_train.min()) and int(splits.y_train.max()) < spec.num_classes
    if spec.is_image:
        assert 0.0 <= float(splits.x_train.min()) and float(splits.x_train.max()) <= 1.0


def test_mnist_inputs_are_scaled_pixels(tmp_path: Path) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[0, 3, 4], images[1, 27, 27] = 255, 51
    for prefix in ("train", "t10k"):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", torch.tensor([7, 2], dtype=torch.uint8))
    splits = MNISTDataModule(root=str(tmp_path), verify_checksums=False).splits
    assert splits.x_train[0, 0, 3, 4] == 1.0 and splits.x_train[1, 0, 27, 27] == pytest.approx(0.2)
    assert splits.y_val.tolist() == [7, 2]


def test_max_examples_and_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_like(tmp_path / "mnist")
    monkeypatch.setenv("LIGHTNING_ECHO_DATA", str(tmp_path))
    dm = MNISTDataModule(verify_checksums=False, max_train_examples=10, max_val_examples=5)
    dm.check_files()
    assert len(dm.train_dataset) == 10 and len(dm.val_dataset) == 5


def test_files_directly_in_root_are_found(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, gz=False)
    dm = MNISTDataModule(root=str(tmp_path), verify_checksums=False)
    assert {p.parent for p in dm.locate()[0].values()} == {tmp_path}


# -- shape problems always raise, checksums only when verified ------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"image_shape": (27, 28)}, "images must be uint8 of shape [N, 28, 28], got torch.uint8 [48, 27, 28]"),
        ({"n_labels": {"train": 47}}, "has 47 labels but"),
        ({"n_labels": {"t10k": 30}}, "has 30 labels but"),
        ({"max_label": 12}, "labels must lie in 0..9"),
    ],
    ids=["image-size", "train-count", "val-count", "label-range"],
)
def test_mnist_shape_problems_raise_even_without_checksums(tmp_path: Path, kwargs: dict, fragment: str) -> None:
    write_mnist_like(tmp_path / "mnist", **kwargs)
    dm = MNISTDataModule(root=str(tmp_path), verify_checksums=False)
    dm.check_files()  # cheap check: the files are there
    with pytest.raises(DataFileError) as excinfo:
        dm.setup()
    message = str(excinfo.value)
    assert "\n" not in message and fragment in message and str(tmp_path / "mnist") in message


def test_mnist_wrong_dtype_raises(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", torch.zeros(N_TRAIN, 28, 28, dtype=torch.int32))
    with pytest.raises(DataFileError, match="images must be uint8"):
        MNISTDataModule(root=str(tmp_path), verify_checksums=False).setup()


def test_mnist_generated_files_fail_checksum_when_verified(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist")
    with pytest.raises(DataFileError) as excinfo:
        MNISTDataModule(root=str(tmp_path)).setup()
    message = str(excinfo.value)
    assert "\n" not in message
    assert "train-images-idx3-ubyte.gz" in message and "expected ba891046" in message
    assert "data.verify_checksums=false" in message


def test_covtype_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    write_covtype(tmp_path / "covtype" / "covtype.libsvm.binary.scale.bz2", n=100)
    a = CovtypeDataModule(root=str(tmp_path), seed=3, val_fraction=0.25).splits
    b = CovtypeDataModule(root=str(tmp_path), seed=3, val_fraction=0.25).splits
    c = CovtypeDataModule(root=str(tmp_path), seed=4, val_fraction=0.25).splits
    assert a.x_train.shape == (75, 54) and a.x_val.shape == (25, 54)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)
    # Whatever the seed, train and validation together are exactly the file's rows.
    def rows(splits) -> list[tuple[float, ...]]:
        return sorted(map(tuple, torch.cat([splits.x_train, splits.x_val]).tolist()))

    assert rows(a) == rows(c)


@pytest.mark.parametrize("raw, mapped", [((1, 2), (0, 1)), ((-1, 1), (0, 1)), ((0, 1), (0, 1))])
def test_covtype_label_conventions(tmp_path: Path, raw: tuple[float, float], mapped: tuple[int, int]) -> None:
    assert binary_labels(torch.tensor([raw[1], raw[0], raw[1]], dtype=torch.float64), "f").tolist() == [
        mapped[1], mapped[0], mapped[1]
    ]
    write_covtype(tmp_path / "covtype" / "covtype.libsvm.binary.scale.gz", labels=raw)
    splits = CovtypeDataModule(root=str(tmp_path)).splits
    assert set(torch.cat([splits.y_train, splits.y_val]).tolist()) == {0, 1}


def test_covtype_rejects_other_labels_and_bad_settings(tmp_path: Path) -> None:
    path = write_covtype(tmp_path / "covtype" / "covtype.libsvm.binary.scale", labels=(1, 3))
    with pytest.raises(DataFileError) as excinfo:
        CovtypeDataModule(root=str(tmp_path)).setup()
    assert str(path) in str(excinfo.value) and "found labels 1, 3" in str(excinfo.value)
    with pytest.raises(ConfigError, match="val_fraction"):
        CovtypeDataModule(root=str(tmp_path), val_fraction=0.0)
    with pytest.raises(ConfigError, match="download"):
        CovtypeDataModule(root=str(tmp_path), download="yes")


def test_covtype_index_beyond_54_features(tmp_path: Path) -> None:
    path = tmp_path / "covtype" / "covtype.libsvm.binary.scale"
    path.parent.mkdir()
    path.write_text("1 1:0.5 54:1\n2 55:1\n")
    with pytest.raises(DataFileError, match=r"line 2: feature index 55 is outside 1\.\.54"):
        CovtypeDataModule(root=str(tmp_path)).setup()


def test_cifar_bad_batch_raises(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    write_cifar_batch(batches / "data_batch_3", torch.zeros(4, 3072, dtype=torch.uint8), [1, 2, 3])
    with pytest.raises(DataFileError, match="data_batch_3: 3 labels for 4 images"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


# -- missing files -------------------------------------------------------------------------------


def test_missing_file_message_names_file_and_places(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    dm = MNISTDataModule(root=str(tmp_path))
    with pytest.raises(DataFileError) as excinfo:
        dm.check_files()
    message = str(excinfo.value)
    assert message == (
        f"mnist: missing t10k-labels-idx1-ubyte(.gz); looked in {tmp_path / 'mnist'}, {tmp_path}; "
        f"get it with data.download=true (data.root={tmp_path}) or copy the files into {tmp_path / 'mnist'}"
    )
    with pytest.raises(DataFileError, match="missing t10k-labels-idx1-ubyte"):
        dm.setup()  # loading says the same, instead of failing later


@pytest.mark.parametrize(
    "cls, missing",
    [
        (CovtypeDataModule, "covtype: missing covtype.libsvm.binary.scale(.bz2/.gz); looked in "),
        (CIFAR10DataModule, "cifar10: missing cifar-10-batches-py/data_batch_1, "),
    ],
)
def test_missing_files_of_other_datasets(tmp_path: Path, cls: type, missing: str) -> None:
    with pytest.raises(DataFileError) as excinfo:
        cls(root=str(tmp_path / "data")).check_files()
    message = str(excinfo.value)
    assert message.startswith(missing) and "\n" not in message
    assert f"looked in {tmp_path / 'data' / cls.folder}, {tmp_path / 'data'};" in message


def test_missing_without_any_root(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as excinfo:
        MNISTDataModule().check_files()
    message = str(excinfo.value)
    assert "looked in nowhere" in message and "data.root" in message and "LIGHTNING_ECHO_DATA" in message


def test_check_files_is_cheap_and_download_defers(tmp_path: Path) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name in IDX_FILES:
        (directory / name).write_bytes(b"garbage")  # check_files only looks for the files
    MNISTDataModule(root=str(tmp_path)).check_files()

    empty = tmp_path / "empty"
    MNISTDataModule(root=str(empty), download=True).check_files()  # will download in prepare_data
    assert not empty.exists()  # and check_files wrote nothing


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verify_checksums"):
        MNISTDataModule(root=str(tmp_path), verify_checksums="no")
    with pytest.raises(ConfigError, match="batch_size"):
        FashionMNISTDataModule(root=str(tmp_path), batch_size=0)


# -- the real datasets ---------------------------------------------------------------------------

needs_mnist = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present in {SHARED_MNIST}")


@needs_mnist
def test_real_mnist_verified_and_trains() -> None:
    dm = MNISTDataModule(root=str(SHARED_MNIST.parent), max_train_examples=512, max_val_examples=256, batch_size=32)
    dm.check_files()
    dm.setup()  # reads the full files and verifies their checksums
    assert dm.splits.x_train.shape == (512, 1, 28, 28) and dm.splits.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert dm.splits.y_val[:5].tolist() == [7, 2, 1, 0, 4]
    fit_three_steps(CNN(dm.spec), dm)


@needs_mnist
def test_corrupted_copy_of_real_mnist_fails_checksum(tmp_path: Path) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"):
        shutil.copy(SHARED_MNIST / f"{name}.gz", directory / f"{name}.gz")
    labels = bytearray(gzip.decompress((SHARED_MNIST / "train-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # one flipped label: still a well-formed file
    (directory / "train-labels-idx1-ubyte").write_bytes(bytes(labels))

    with pytest.raises(DataFileError) as excinfo:
        MNISTDataModule(root=str(tmp_path)).setup()
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(directory / "train-labels-idx1-ubyte") in message
    assert "expected 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5" in message
    assert "data.verify_checksums=false" in message
    # A user who means to use a modified file can.
    splits = MNISTDataModule(root=str(tmp_path), verify_checksums=False, max_train_examples=200).splits
    assert splits.y_train.shape == (200,)


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package_is_verified(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(root=str(tmp_path), max_train_examples=256, max_val_examples=128, batch_size=32)
    assert all(p.parent == FASHION_MNIST_DEBIAN_DIR for p in dm.locate()[0].values())
    dm.setup()  # checksums verified
    assert dm.splits.x_train.shape == (256, 1, 28, 28)
    fit_three_steps(LogisticRegression(dm.spec), dm)
