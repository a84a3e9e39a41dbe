"""Pixel-sequence classification: sklearn digits, and IDX files the tests write themselves."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from rnnscope.models.sequence import SequenceModel
from rnnscope.tasks import get_task
from rnnscope.tasks.pixels import IDX_FILES, read_idx


def write_idx(path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    dims = array.ndim
    header = struct.pack(">I", magic if magic is not None else 0x0800 | dims)
    header += struct.pack(f">{dims}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    data = data[: len(data) - cut] if cut else data
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(data)


def make_mnist(directory, train=6, valid=4, size=(4, 5), gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", train), ("valid", valid)):
        images = rng.integers(0, 256, (count, *size), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        image_name, label_name = IDX_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / (image_name + suffix), images)
        write_idx(directory / (label_name + suffix), labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_read_back_exactly(tmp_path, gz):
    arrays = make_mnist(tmp_path, gz=gz)
    task = get_task("idx", path=str(tmp_path))
    for split, (images, labels) in arrays.items():
        torch.testing.assert_close(task.images[split], torch.from_numpy(images).float() / 255)
        assert torch.equal(task.labels[split], torch.from_numpy(labels).long())
    assert (task.seq_len, task.input_size, task.output_size) == (20, 1, 10)


def test_pixel_and_row_orders(tmp_path):
    arrays = make_mnist(tmp_path)
    images = torch.from_numpy(arrays["train"][0]).float() / 255
    pixel = get_task("idx", path=str(tmp_path))
    rows = get_task("idx", path=str(tmp_path), mode="row")
    sequence = pixel.sequences(images[:2])
    assert sequence.shape == (20, 2, 1)
    assert torch.equal(sequence[:, 1, 0], images[1].flatten())  # raster order
    by_row = rows.sequences(images[:2])
    assert by_row.shape == (4, 2, 5) and torch.equal(by_row[2, 0], images[0, 2])


def test_permutation_is_fixed_and_applied_to_every_image(tmp_path):
    arrays = make_mnist(tmp_path)
    images = torch.from_numpy(arrays["train"][0]).float() / 255
    task = get_task("idx", path=str(tmp_path), permuted=True, permutation_seed=3)
    again = get_task("idx", path=str(tmp_path), permuted=True, permutation_seed=3)
    assert torch.equal(task.permutation, again.permutation)
    assert sorted(task.permutation.tolist()) == list(range(20))
    assert not torch.equal(task.permutation, torch.arange(20))
    sequence = task.sequences(images)
    for b in range(len(images)):
        assert torch.equal(sequence[:, b, 0], images[b].flatten()[task.permutation])


def test_batches_are_deterministic_by_seed_and_keep_splits_apart(tmp_path):
    make_mnist(tmp_path, train=50, valid=30)
    task = get_task("idx", path=str(tmp_path))
    first = task.batch(8, torch.Generator().manual_seed(1))
    second = task.batch(8, torch.Generator().manual_seed(1))
    other = task.batch(8, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])
    inputs, labels = task.batch(64, torch.Generator().manual_seed(0), split="valid")
    valid_images = task.sequences(task.images["valid"])
    for b in range(64):  # every held-out batch row is one of the t10k images
        assert any(torch.equal(inputs[:, b], valid_images[:, i]) for i in range(30))


@pytest.mark.parametrize(("damage", "message"), [
    ("missing", "has no t10k-labels-idx1-ubyte"),
    ("magic", "wrong magic number 0x00000802; expected 0x00000801"),
    ("truncated", "truncated or padded: its header says 6 = 6 bytes of data, found 4"),
    ("header", "truncated: 3 bytes"),
    ("count", "6 images but 5 labels"),
    ("labels", "labels must be 0..9, found 12"),
    ("nodir", "task.path: no such directory"),
])
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, damage, message):
    make_mnist(tmp_path)
    labels_path = tmp_path / "train-labels-idx1-ubyte"
    path = str(tmp_path)
    if damage == "missing":
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "magic":
        write_idx(labels_path, np.zeros(6), magic=0x0802)
    elif damage == "truncated":
        write_idx(labels_path, np.zeros(6), cut=2)
    elif damage == "header":
        labels_path.write_bytes(b"\x00\x00\x08")
    elif damage == "count":
        write_idx(labels_path, np.zeros(5))
    elif damage == "labels":
        write_idx(labels_path, np.full(6, 12))
    elif damage == "nodir":
        path = str(tmp_path / "nowhere")
    with pytest.raises(ValueError) as info:
        get_task("idx", path=path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_read_idx_is_the_inverse_of_write(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array)
    assert np.array_equal(read_idx(tmp_path / "a", 3), array)


def test_digits_split_baseline_and_shapes():
    task = get_task("digits")
    assert (task.seq_len, task.input_size, task.output_size) == (64, 1, 10)
    assert len(task.labels["train"]) + len(task.labels["valid"]) == 1797
    assert len(task.labels["valid"]) == 359
    assert 0.88 < task.baseline < 0.91  # ten nearly balanced classes
    assert float(task.images["train"].min()) >= 0.0 and float(task.images["train"].max()) == 1.0
    again = get_task("digits")
    assert torch.equal(task.labels["valid"], again.labels["valid"])  # fixed held-out set
    inputs, labels = task.batch(5, torch.Generator().manual_seed(0), split="valid")
    assert inputs.shape == (64, 5, 1) and labels.dtype == torch.long
    permuted = get_task("digits", permuted=True)
    assert torch.equal(permuted.sequences(task.images["train"][:1])[:, 0, 0],
                       task.images["train"][0].flatten()[permuted.permutation])


def test_error_rate_and_loss_on_hand_set_logits():
    task = get_task("digits")
    output = torch.full((64, 4, 10), -5.0)
    output[-1, torch.arange(4), torch.tensor([3, 1, 4, 1])] = 5.0
    labels = torch.tensor([3, 1, 0, 0])
    assert task.metric(output, labels).item() == 0.5
    expected = torch.nn.functional.cross_entropy(output[-1], labels)
    assert task.loss(output, labels).item() == pytest.approx(expected.item())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"mode": "column"}, "task.mode"), ({"valid_fraction": 1.5}, "task.valid_fraction"),
    ({"permutation_seed": -1}, "task.permutation_seed"),
    ({"permutation_seed": 10**23}, "task.permutation_seed"),  # overflowed torch's seed
    ({"valid_fraction": 0.0001}, "task.valid_fraction"),  # issue 19: no held-out image
    ({"valid_fraction": 0.9999}, "task.valid_fraction"),  # no training image
])
def test_bad_digits_parameters(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        get_task("digits", **kwargs)


def test_pixel_tasks_train_a_model():
    task = get_task("digits", mode="row")
    torch.manual_seed(0)
    model = SequenceModel("gru", task.input_size, 16, task.output_size)
    inputs, labels = task.batch(8, torch.Generator().manual_seed(0))
    output, _ = model(inputs)
    loss = task.loss(output, labels)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None


def test_idx_issue_19_headers_that_overflow_and_images_of_no_pixels(tmp_path):
    """Issue 19: dimensions whose product overflows numpy's int64 named no file, and
    zero-height images failed later with "the sequence is empty"."""
    make_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    huge = struct.pack(">4I", 0x0803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(10)
    images.write_bytes(huge)
    with pytest.raises(ValueError) as info:
        get_task("idx", path=str(tmp_path))
    assert str(info.value) == (
        f"{images}: truncated or padded: its header says 4294967295 x 4294967295 x "
        f"4294967295 = {(2**32 - 1) ** 3:,} bytes of data, found 10")
    make_mnist(tmp_path, size=(0, 5))
    with pytest.raises(ValueError) as info:
        get_task("idx", path=str(tmp_path))
    assert str(info.value) == f"{images}: images of 0x5 pixels; expected at least 1x1"


def test_idx_path_expands_the_home_directory(tmp_path, monkeypatch):
    """Issue 19: --task.path=~/data reaches the task unexpanded (the README's example)."""
    (tmp_path / "mnist").mkdir()
    make_mnist(tmp_path / "mnist")
    monkeypatch.setenv("HOME", str(tmp_path))
    task = get_task("idx", path="~/mnist")
    assert task.seq_len == 20
