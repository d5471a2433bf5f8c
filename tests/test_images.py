"""Image data (folders, .npz arrays, scikit-learn's digits), the device-side normalization and
augmentation, the ResNet classifier, and the image recipe from the command line."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import quiet_trainer, run_cli
from PIL import Image

from lightning_accel.data import ImageDataModule, SyntheticImageDataModule
from lightning_accel.data.image_base import crop_and_flip
from lightning_accel.errors import ConfigError
from lightning_accel.models import BasicBlock, ImageClassifier, ResNet
from lightning_accel.optimize.blocks import find_repeated_blocks


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny convolutions run fastest on one thread (and do not stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _image_folder(root: Path) -> dict[Path, tuple[np.ndarray, int]]:
    """Two classes of 6x5 RGB images: PNGs of random pixels and JPEGs of one flat colour
    (JPEG is lossy, but a flat colour survives it almost unchanged)."""
    expected = {}
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for index in range(3):
            pixels = _pixels(10 * label + index, (5, 6, 3))
            path = root / name / f"{index}.png"
            Image.fromarray(pixels).save(path)
            expected[path] = (pixels, label)
        flat = np.full((5, 6, 3), (40 + 100 * label, 90, 200 - 100 * label), dtype=np.uint8)
        path = root / name / "flat.JPG"
        Image.fromarray(flat).save(path, format="JPEG", quality=95)
        expected[path] = (flat, label)
    (root / "dog" / "notes.txt").write_text("not an image, left out")
    return expected


def test_folder_gives_the_right_labels_and_pixels(tmp_path: Path) -> None:
    expected = _image_folder(tmp_path / "pets")
    data = ImageDataModule(str(tmp_path / "pets"), batch_size=2, val_fraction=0.25)
    assert data.classes == ["cat", "dog"]
    assert (data.channels, data.num_classes) == (3, 2)
    assert sorted(data.files) == sorted(expected)
    data.setup("fit")
    files = data.train_set.dataset
    for index, path in enumerate(files.files):
        pixels, label = expected[path]
        image, got_label = files[index]
        assert got_label == label
        assert image.dtype == torch.uint8 and image.shape == (3, 5, 6)
        wanted = torch.from_numpy(pixels).permute(2, 0, 1)
        if path.suffix == ".png":
            assert torch.equal(image, wanted), path
        else:
            assert (image.int() - wanted.int()).abs().max() <= 3, path
    assert len(data.train_set) + len(data.val_set) == 8 and len(data.val_set) == 2
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (2, 3, 5, 6) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    # what the plan measures: the batch as the step receives it, converted on the device
    example_images, example_labels = data.example_batch()
    assert example_images.shape == images.shape and example_images.dtype == torch.float32
    assert example_labels.shape == labels.shape and example_labels.dtype == labels.dtype
    assert example_images.device.type == "meta"


def test_a_folder_is_verified_once_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher's construction verifies every image; its ranks' constructions (and
    later runs) read the record, until a file changes."""
    _image_folder(tmp_path / "pets")
    opened: list[Path] = []
    open_image = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a: opened.append(path) or open_image(path))

    def build() -> ImageDataModule:
        return ImageDataModule(str(tmp_path / "pets"), batch_size=2, cache_dir=str(tmp_path))

    first = build()
    assert len(opened) == 8, "every image verified"
    opened.clear()
    again = build()
    assert opened == [] and (again.channels, again.height_width) == (first.channels, (5, 6))
    changed = tmp_path / "pets" / "cat" / "0.png"
    Image.fromarray(_pixels(7, (5, 6, 3))).save(changed)
    os.utime(changed, ns=(1, 1))  # a new modification time whatever the clock's resolution
    build()
    assert len(opened) == 8, "a changed folder is verified again"


def test_folder_images_are_resized_and_grayscale_kept(tmp_path: Path) -> None:
    for label, size in (("a", (7, 9)), ("b", (12, 4))):
        (tmp_path / label).mkdir()
        for index in range(2):
            Image.fromarray(_pixels(index, size[::-1]), mode="L").save(
                tmp_path / label / f"{index}.png"
            )
    with pytest.raises(ConfigError, match="data.image_size"):
        ImageDataModule(str(tmp_path), batch_size=1)
    data = ImageDataModule(str(tmp_path), image_size=[8, 10], batch_size=1, val_fraction=0.25)
    data.setup("fit")
    assert data.channels == 1
    assert all(data.train_set[i][0].shape == (1, 8, 10) for i in range(len(data.train_set)))
    assert data.example_batch()[0].shape == (1, 1, 8, 10)


LAYOUTS = {
    "NHW": lambda x: x[:, 0],
    "NHWC": lambda x: x.transpose(0, 2, 3, 1),
    "NCHW": lambda x: x,
}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_npz_arrays_in_each_layout(layout: str, dtype: str, tmp_path: Path) -> None:
    channels = 1 if layout == "NHW" else 3
    images = _pixels(0, (20, channels, 6, 7))  # NCHW, the layout batches come in
    if dtype == "float32":
        images = images.astype(np.float32) / 255
    labels = np.arange(20)  # each image its own class, so a label names its image
    np.savez(tmp_path / "x.npz", images=LAYOUTS[layout](images), labels=labels)
    data = ImageDataModule(str(tmp_path / "x.npz"), batch_size=4)
    assert (data.channels, data.num_classes) == (channels, 20)
    data.setup("fit")
    pairs = [*data.train_set, *data.val_set]
    assert sorted(int(label) for _, label in pairs) == list(range(20))
    for image, label in pairs:
        assert torch.equal(image, torch.from_numpy(images[int(label)]))
    assert data.train_set[0][0].dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    assert data.example_batch()[0].shape == (4, channels, 6, 7)


def test_digits_load_and_split_by_the_split_seed() -> None:
    data = ImageDataModule("digits", batch_size=32, val_fraction=0.2)
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) == 1797
    assert len(data.val_set) == 359
    images = data.train_set.tensors[0]
    assert images.shape[1:] == (1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert data.example_batch()[0].shape == (32, 1, 8, 8)
    assert set(data.train_set.tensors[1].tolist()) == set(range(10))

    def val_labels(**options: int) -> list[int]:
        other = ImageDataModule("digits", batch_size=32, **options)
        other.setup("fit")
        return other.val_set.tensors[1].tolist()

    assert val_labels() == data.val_set.tensors[1].tolist()
    assert val_labels(seed=5) == val_labels(), "the training seed leaves the split alone"
    assert val_labels(split_seed=1) != val_labels()


def _synthetic(channels: int = 3, **options: object) -> SyntheticImageDataModule:
    data = SyntheticImageDataModule(
        channels=channels, image_size=6, num_classes=4, batch_size=8, samples=64, **options
    )
    data.setup("fit")
    return data


def test_normalization_statistics_come_from_the_training_split() -> None:
    data = _synthetic()
    train = data.train_set.tensors[0].double() / 255
    assert torch.allclose(data.mean.double(), train.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(data.std.double(), train.std((0, 2, 3), correction=0), atol=1e-6)
    normalized = data.prepare_batch(data.train_set.tensors[0], train=False)
    assert normalized.dtype == torch.float32
    assert torch.allclose(normalized.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(normalized.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)
    given = _synthetic(mean=[0.5], std=[0.25, 0.5, 1.0])
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    white = given.prepare_batch(pixels, train=False)[0, :, 0, 0]
    assert torch.allclose(white, torch.tensor([2.0, 1.0, 0.5]))


def _windows(normalized: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop of ``normalized`` [C, H, W] padded with zeros, and its mirror image."""
    _, height, width = normalized.shape
    padded = F.pad(normalized, (padding,) * 4)
    crops = [
        padded[:, top : top + height, left : left + width]
        for top in range(2 * padding + 1)
        for left in range(2 * padding + 1)
    ]
    return crops + [crop.flip(-1) for crop in crops]


def test_training_batches_are_cropped_and_flipped_validation_batches_are_not() -> None:
    data = _synthetic(crop_padding=2, horizontal_flip=True)
    images, labels = next(iter(data.train_dataloader()))
    plain = data.prepare_batch(images, train=False)
    data.trainer = SimpleNamespace(training=True, global_rank=0)
    augmented, same_labels = data.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(same_labels, labels)
    assert augmented.shape == plain.shape
    changed = 0
    for image, original in zip(augmented, plain, strict=True):
        assert any(torch.equal(image, w) for w in _windows(original, 2)), "a padded crop"
        changed += not torch.equal(image, original)
    assert changed >= 4, "most images of a batch move"
    data.trainer = SimpleNamespace(training=False, global_rank=0)
    assert torch.equal(data.on_after_batch_transfer((images, labels), 0)[0], plain)


def test_augmentation_is_set_by_the_seed() -> None:
    images = next(iter(_synthetic().train_dataloader()))[0]

    def augmented(seed: int) -> list[torch.Tensor]:
        data = _synthetic(crop_padding=2, horizontal_flip=True, seed=seed)
        return [data.prepare_batch(images, train=True) for _ in range(2)]

    first, second = augmented(0)
    assert not torch.equal(first, second), "each batch is augmented afresh"
    again = augmented(0)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, augmented(1)[0])


def test_resumed_augmentation_continues_where_it_stopped() -> None:
    images = next(iter(_synthetic().train_dataloader()))[0]
    first = _synthetic(crop_padding=2, horizontal_flip=True)
    uninterrupted = [first.prepare_batch(images, train=True) for _ in range(3)]
    resumed = _synthetic(crop_padding=2, horizontal_flip=True)
    resumed.load_state_dict({"augmented_batches": 2})
    assert torch.equal(resumed.prepare_batch(images, train=True), uninterrupted[2])
    assert first.state_dict() == {"augmented_batches": 3}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_stay_on_their_device_in_the_asked_memory_format(
    channels_last: bool, channels: int
) -> None:
    # one channel is both layouts by contiguity; its strides must still be the asked ones
    data = _synthetic(channels, crop_padding=1, horizontal_flip=True, channels_last=channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    layout = torch.empty(8, channels, 6, 6, memory_format=memory_format).stride()
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        images = torch.zeros(8, channels, 6, 6, dtype=torch.uint8, device=device)
        for train in (True, False):
            out = data.prepare_batch(images, train=train)
            assert out.device.type == device and out.shape == (8, channels, 6, 6)
            assert out.stride() == layout


def test_a_one_channel_augmented_batch_gives_convolutions_gradients_in_their_weights_layout() -> (
    None
):
    """What DDP needs: its gradient buckets follow the weights' strides."""
    data = _synthetic(1, crop_padding=1, horizontal_flip=True)
    images = next(iter(data.train_dataloader()))[0]
    conv = torch.nn.Conv2d(1, 8, 3)
    torch.nn.Conv2d(8, 8, 3)(conv(data.prepare_batch(images, train=True))).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.stride() == conv.weight.stride()


def test_crop_without_padding_or_flip_is_the_identity() -> None:
    images = torch.randn(4, 3, 5, 5)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(crop_and_flip(images, 0, False, generator), images)


def test_resnet_blocks_are_found_for_checkpointing_and_compile() -> None:
    model = ResNet(in_channels=1, num_classes=10, widths=[8, 16, 32], blocks_per_stage=1)
    blocks = find_repeated_blocks(model)
    assert len(blocks) == 3 and all(isinstance(b, BasicBlock) for b in blocks)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def _trainer(steps: int) -> pl.Trainer:
    return quiet_trainer(max_steps=steps, val_check_interval=1.0)


def test_resnet_learns_digits(one_thread: None) -> None:
    pl.seed_everything(0, verbose=False)
    data = ImageDataModule("digits", batch_size=64, crop_padding=1)
    model = ImageClassifier(
        in_channels=1, widths=[16, 32], blocks_per_stage=1, learning_rate=3e-2, warmup_steps=5
    )
    losses: list[float] = []

    class Losses(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            losses.append(float(outputs["loss"]))

    trainer = _trainer(44)
    trainer.callbacks.append(Losses())
    trainer.fit(model, datamodule=data)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert trainer.callback_metrics["val/accuracy"] > 0.7, "chance is 0.1"


def test_classifier_refuses_data_of_other_shape() -> None:
    data = ImageDataModule("digits", batch_size=64)
    with pytest.raises(
        ConfigError, match=r"model.in_channels=3 .* 1 channel; set model.in_channels=1"
    ):
        _trainer(1).fit(ImageClassifier(in_channels=3), datamodule=data)
    with pytest.raises(
        ConfigError, match=r"model.num_classes=4 .* 10 classes; set model.num_classes=10"
    ):
        _trainer(1).fit(ImageClassifier(in_channels=1, num_classes=4), datamodule=data)


def test_a_classifier_of_one_class_is_refused_in_the_model_and_in_the_data() -> None:
    """torchmetrics' accuracy refused one class with a ValueError as the run began, and
    one-class data had the model's check advise model.num_classes=1."""
    with pytest.raises(ConfigError, match=r"^model.num_classes=1 is too few: a classifier"):
        ImageClassifier(num_classes=1)
    one_class = SimpleNamespace(channels=3, num_classes=1, source="cats")
    with pytest.raises(ConfigError) as refused:
        ImageClassifier().check_data(one_class)
    assert str(refused.value) == (
        "data.source='cats' holds images of 1 class; a classifier needs 2 classes or more."
    )


def _corrupt(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    Image.fromarray(_pixels(0, (4, 4, 3))).save(root / "a" / "good.png")
    bad = root / "a" / "bad.png"
    bad.write_bytes(b"these bytes are no image")
    return bad


def _truncated(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    path = root / "a" / "cut.png"
    Image.fromarray(_pixels(0, (16, 16, 3))).save(path)
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


def _class_without_images(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    Image.fromarray(_pixels(0, (4, 4, 3))).save(root / "a" / "x.png")
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images here")
    return root / "b"


def _npz_without_images(root: Path) -> Path:
    root.mkdir()
    np.savez(root / "x.npz", pictures=_pixels(0, (10, 4, 4)), labels=np.zeros(10, int))
    return root / "x.npz"


def _npz_of_mismatched_lengths(root: Path) -> Path:
    root.mkdir()
    np.savez(root / "x.npz", images=_pixels(0, (10, 4, 4)), labels=np.zeros(9, int))
    return root / "x.npz"


def _npz_that_is_not_a_zip(root: Path) -> Path:
    root.mkdir()
    (root / "x.npz").write_text("plain text")
    return root / "x.npz"


BAD_SOURCES = {
    "empty directory": (_empty, "holds no class sub-directory"),
    "class without images": (_class_without_images, "holds no PNG or JPEG file"),
    "corrupt image": (_corrupt, "is not a readable PNG or JPEG image"),
    "truncated image": (_truncated, "is not a readable PNG or JPEG image"),
    "npz without images": (_npz_without_images, "lacks the array(s) images"),
    "npz of mismatched lengths": (_npz_of_mismatched_lengths, "10 images but 9 labels"),
    "npz that is not a zip": (_npz_that_is_not_a_zip, "is not a readable .npz file"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_source_is_a_config_error_naming_the_file(case: str, tmp_path: Path) -> None:
    make, problem = BAD_SOURCES[case]
    culprit = make(tmp_path / "data")
    source = tmp_path / "data" / culprit.name if culprit.suffix == ".npz" else tmp_path / "data"
    with pytest.raises(ConfigError) as error:
        ImageDataModule(str(source), batch_size=1)
    message = str(error.value)
    assert f"'{culprit}'" in message and problem in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_digits_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigError, match=r"scikit-learn.*lightning-accel\[images\]"):
        ImageDataModule("digits")


@pytest.mark.slow
def test_image_recipe_smoke_run_from_the_command_line(tmp_path: Path) -> None:
    args = ["train", "recipe=image", "trainer=smoke", "logger=none", "callbacks=minimal"]
    result = run_cli([*args, "optimization.channels_last=auto", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "channels_last" in summary["transforms"], "one process keeps convolution weights whole"
    assert config["optimization"]["channels_last"] is config["data"]["channels_last"] is True
    assert "channels-last on: convolution weights kept whole on one device" in result.stderr
    # the model's list arguments are saved as lists: the checkpoint loads as data
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["widths"] == config["model"]["widths"]
    assert summary["recipe"] == "image" and summary["steps"] == 4
    assert [v["step"] for v in summary["validation"]] == [2, 4]
    for validation in summary["validation"]:
        assert 0 <= validation["val/accuracy"] <= 1 and validation["val/loss"] > 0
        assert {"train/loss", *validation} - {"step"} == set(ImageClassifier.logged_metrics)
    assert 0 < summary["first_train_loss"] < 5
    assert summary["tokens_per_second"] is None, "images are not counted as tokens"


def test_empty_image_directory_from_the_command_line(tmp_path: Path) -> None:
    empty = tmp_path / "no images"
    empty.mkdir()
    result = run_cli(["train", "recipe=image", f"data.source={empty}"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(".")
    assert lines[0].startswith(f"lightning-accel: error: data.source='{empty}' holds no class")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no images"], "nothing is written"
