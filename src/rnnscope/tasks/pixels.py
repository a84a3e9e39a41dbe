"""Images classified from a sequence of their pixels: sequential (and permuted) digits.

`digits`: scikit-learn's bundled 8x8 digits (1797 images, T=64), always there.
`idx`: MNIST-style IDX files from a directory the user gives (T=784 pixel by
pixel, or 28 rows of 28); nothing is downloaded.

The network reads one pixel (or one row) per step and is scored at the last
step: cross-entropy of output[-1] against the label; the metric is the error
rate. The permuted variant applies one fixed random permutation of the pixel
order, drawn from `permutation_seed`, to every image.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnscope.checks import number, seed
from rnnscope.tasks import register_task
from rnnscope.tasks.base import Task, data_path

MODES = ("pixel", "row")


class PixelClassification(Task):
    """Shared by `digits` and `idx`: images [N, H, W] in [0, 1] and integer labels per split."""

    metric_name = "error_rate"
    solved_below = None  # the papers report accuracy curves, not a threshold

    def __init__(self, images: dict[str, Tensor], labels: dict[str, Tensor], *, mode: str,
                 permuted: bool, permutation_seed: int, classes: int) -> None:
        if mode not in MODES:
            raise ValueError(f"task.mode: unknown {mode!r}; accepted: {', '.join(MODES)}")
        seed("task.permutation_seed", permutation_seed)
        self.mode, self.permuted = mode, bool(permuted)
        height, width = images["train"].shape[1:]
        self.seq_len = height * width if mode == "pixel" else height
        self.input_size = 1 if mode == "pixel" else width
        self.output_size = classes
        self.images, self.labels = images, labels
        self.permutation = None
        if self.permuted:
            generator = torch.Generator().manual_seed(permutation_seed)
            self.permutation = torch.randperm(height * width, generator=generator)
        counts = torch.bincount(labels["train"], minlength=classes).double()
        self.baseline = 1.0 - float(counts.max() / counts.sum())  # always the commonest class

    def sequences(self, images: Tensor) -> Tensor:
        """Images [B, H, W] -> time-major sequences [T, B, input_size]."""
        batch = images.shape[0]
        flat = images.reshape(batch, -1)
        if self.permutation is not None:
            flat = flat[:, self.permutation]
        steps = flat.reshape(batch, self.seq_len, self.input_size)
        return steps.transpose(0, 1).contiguous()

    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        pick = torch.randint(0, len(self.labels[split]), (batch_size,), generator=generator)
        return self.sequences(self.images[split][pick]), self.labels[split][pick]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(output[-1], target)

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        return (output[-1].argmax(dim=-1) != target).double().mean()


@register_task("digits")
class DigitsTask(PixelClassification):
    """scikit-learn's 8x8 digits as 64-step pixel sequences; a fixed 20% held out."""

    def __init__(self, permuted: bool = False, mode: str = "pixel", permutation_seed: int = 0,
                 valid_fraction: float = 0.2) -> None:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        number("task.valid_fraction", valid_fraction, above=0.0, below=1.0)
        data = load_digits()
        images = torch.from_numpy(data.images).float() / 16.0  # pixel values 0..16
        labels = torch.from_numpy(data.target).long()
        # One fixed shuffle (seed 0) so the held-out set never depends on the run's seed.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        held_out = int(round(valid_fraction * len(labels)))
        if not 0 < held_out < len(labels):  # both splits need an image to draw from
            raise ValueError(f"task.valid_fraction: {valid_fraction:g} of {len(labels)} "
                             f"images holds out {held_out}; accepted: a fraction that holds "
                             f"out 1 to {len(labels) - 1} of them (about "
                             f"{1 / len(labels):.1g} to {1 - 1 / len(labels):.4f})")
        cut = len(labels) - held_out
        train, valid = order[:cut], order[cut:]
        super().__init__({"train": images[train], "valid": images[valid]},
                         {"train": labels[train], "valid": labels[valid]},
                         mode=mode, permuted=permuted, permutation_seed=permutation_seed,
                         classes=10)


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "valid": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@register_task("idx")
class IdxTask(PixelClassification):
    """MNIST-style pixel classification from IDX files in `path` (standard file names, plain
    or .gz); the t10k files are the held-out split."""

    def __init__(self, path: str, mode: str = "pixel", permuted: bool = False,
                 permutation_seed: int = 0) -> None:
        directory = data_path(path, "a directory")
        if not directory.is_dir():
            raise ValueError(f"task.path: no such directory: {directory}")
        images, labels = {}, {}
        for split, (image_name, label_name) in IDX_FILES.items():
            images[split] = torch.from_numpy(read_idx(_find(directory, image_name), 3)).float()
            images[split] /= 255.0
            labels[split] = torch.from_numpy(read_idx(_find(directory, label_name), 1)).long()
            if len(images[split]) != len(labels[split]):
                raise ValueError(
                    f"{directory / image_name}: {len(images[split])} images but "
                    f"{len(labels[split])} labels in {label_name}"
                )
            if len(labels[split]) == 0:
                raise ValueError(f"{directory / label_name}: holds no labels")
            if int(labels[split].max()) > 9:
                raise ValueError(f"{directory / label_name}: labels must be 0..9, found "
                                 f"{int(labels[split].max())}")
        if 0 in images["train"].shape[1:]:
            raise ValueError(f"{directory / IDX_FILES['train'][0]}: images of "
                             f"{'x'.join(map(str, images['train'].shape[1:]))} pixels; "
                             f"expected at least 1x1")
        if images["train"].shape[1:] != images["valid"].shape[1:]:
            raise ValueError(f"{directory}: train and t10k images differ in size "
                             f"({tuple(images['train'].shape[1:])} vs "
                             f"{tuple(images['valid'].shape[1:])})")
        super().__init__(images, labels, mode=mode, permuted=permuted,
                         permutation_seed=permutation_seed, classes=10)


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"task.path: {directory} has no {name} (or {name}.gz)")


def read_idx(path: Path, dims: int) -> np.ndarray:
    """An unsigned-byte IDX array with `dims` dimensions (the MNIST format), checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read ({error})") from None
    expected_magic = 0x0800 | dims  # zero, zero, type 0x08 (unsigned byte), dims
    if len(data) < 4 + 4 * dims:
        raise ValueError(f"{path}: truncated: {len(data)} bytes, shorter than its header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise ValueError(f"{path}: wrong magic number 0x{magic:08x}; expected "
                         f"0x{expected_magic:08x} (unsigned bytes, {dims} dimensions)")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = data[4 + 4 * dims :]
    size = math.prod(shape)  # Python's integers: numpy's product of four uint32 can wrap
    if len(body) != size:
        raise ValueError(f"{path}: truncated or padded: its header says "
                         f"{' x '.join(map(str, shape))} = {size:,} bytes of data, found "
                         f"{len(body):,}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape).copy()
