"""The data: scikit-learn's handwritten digits, 2-D toy sets, and one entry point for every data set.

Images are float tensors [C, H, W] on the 256-level grid k/127.5 − 1, k ∈ {0, …, 255}, as in Ho et al.
(2020): the levels are 2/255 apart, which is what the discretized decoder L_0 assumes. Nothing here
downloads anything, except torchvision's CIFAR-10 (ddpm/cifar10.py).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .celeba import GET_CELEBA, CELEBA_CROPS, CelebA, ImageArray
from .cifar10 import CIFAR10
from .levels import to_model_range

TOY_2D = ("moons", "swissroll", "gaussians8", "checkerboard")
NUM_CLASSES = {"digits": 10, "cifar10": 10}  # the labelled data sets, for class-conditional training


class _Images(Dataset):
    """A Dataset over a tensor of images, yielding the tensors alone (no labels)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> Tensor:
        return self.images[i]


class _Labelled(_Images):
    """A Dataset over images and their labels, yielding (image, label) pairs."""

    def __init__(self, images: Tensor, labels: Tensor):
        super().__init__(images)
        self.labels = labels

    def __getitem__(self, i) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


# ----------------------------------------------------------------------------------------- digits

@lru_cache(maxsize=1)
def _digit_levels() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: real handwriting, offline

    d = load_digits()
    levels = np.rint(d.images * (255 / 16)).astype(np.uint8)  # intensities 0..16 onto the 256 levels
    return torch.from_numpy(levels)[:, None], torch.from_numpy(d.target).long()


def digits(split: str = "train", image_size: int = 8, test_fraction: float = 0.2, seed: int = 0,
           return_labels: bool = False):
    """scikit-learn's 1,797 handwritten 8x8 digits as a float tensor [N, 1, S, S] on the 256-level grid.

    Intensities v ∈ {0, …, 16} become levels k = round(v·255/16). ``image_size`` > 8 upsamples
    bilinearly (align_corners=False) and rounds back onto the grid. The split is a fixed permutation
    drawn from ``seed``: round(1797·test_fraction) test images (359 at the default 0.2, leaving 1,438
    for training). ``return_labels=True`` returns (images, labels) with labels a long tensor [N].
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    if not (isinstance(image_size, int) and image_size >= 8):
        raise ValueError(f"digits image_size must be an integer >= 8 (the data is 8x8), got {image_size!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    levels, labels = _digit_levels()
    order = torch.randperm(len(levels), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(levels) * test_fraction)
    idx = order[:n_test] if split == "test" else order[n_test:]
    x = levels[idx]
    if image_size != 8:
        x = torch.nn.functional.interpolate(x.float(), size=(image_size, image_size), mode="bilinear",
                                            align_corners=False).round().clamp(0, 255).to(torch.uint8)
    images = to_model_range(x)
    return (images, labels[idx]) if return_labels else images


# ----------------------------------------------------------------------------------------- toy 2-D sets

def _curve_moments(curve) -> tuple[Tensor, float]:
    """Mean and mean squared distance from it of curve(u), u ~ U(0, 1), by a fine midpoint rule."""
    pts = curve((torch.arange(1 << 16, dtype=torch.float64) + 0.5) / (1 << 16))
    mean = pts.mean(0)
    return mean, float(((pts - mean) ** 2).sum(1).mean())


def _moons(u: Tensor) -> Tensor:  # two interleaved half circles, u < 1/2 the upper one
    theta = math.pi * torch.where(u < 0.5, 2 * u, 2 * u - 1)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    return torch.where((u < 0.5)[:, None], upper, torch.stack([1 - upper[:, 0], 0.5 - upper[:, 1]], 1))


def _swissroll(u: Tensor) -> Tensor:  # the spiral (t cos t, t sin t), t from 1.5π to 4.5π
    t = math.pi * (1.5 + 3 * u)
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], 1)


_CURVES = {"moons": (_moons, 0.05), "swissroll": (_swissroll, 0.3)}  # curve, noise std before scaling


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n points [n, 2] (float32) from a 2-D toy distribution, centred with E|x|² = 2 (unit variance on average).

    "moons" and "swissroll" are curves plus Gaussian noise, centred and scaled by one common factor
    (from the curve's moments, by quadrature), so shapes are not distorted; "gaussians8" (8 Gaussians
    of std 0.1 on a circle of radius √1.98) and "checkerboard" (uniform on the 8 dark squares of a 4x4
    board) have mean 0 and unit variance in each coordinate exactly. For train/test sets, call twice
    with two generators.
    """
    g = generator
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"toy_2d needs a positive integer number of points n, got {n!r}")
    if name in _CURVES:
        curve, noise_std = _CURVES[name]
        mean, spread = _curve_moments(curve)
        x = curve(torch.rand(n, generator=g, dtype=torch.float64)) - mean
        x = x + noise_std * torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = x / math.sqrt((spread + 2 * noise_std**2) / 2)
    elif name == "gaussians8":  # per-coordinate variance r²/2 + σ² = 1.98/2 + 0.01 = 1
        angle = 2 * math.pi / 8 * torch.randint(0, 8, (n,), generator=g).double()
        x = math.sqrt(1.98) * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        x = x + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    elif name == "checkerboard":  # each coordinate is U(-2, 2), variance 4/3, scaled by √3/2
        col, row = torch.randint(0, 4, (n,), generator=g), 2 * torch.randint(0, 2, (n,), generator=g)
        cell = torch.stack([col, row + col % 2], 1).double()
        x = (cell + torch.rand(n, 2, generator=g, dtype=torch.float64) - 2) * (math.sqrt(3) / 2)
    else:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {TOY_2D}")
    return x.float()


# ----------------------------------------------------------------------------------------- one entry point

def check_labelled(name) -> None:
    """A ValueError unless data set ``name`` has class labels (``NUM_CLASSES``)."""
    if name not in NUM_CLASSES:
        raise ValueError(f"class-conditional training needs labelled data (digits or cifar10); {str(name)!r} has "
                         "no labels")


def get_dataset(name: str, split: str = "train", data_dir=None, image_size: int | None = None,
                crop: str | None = None, labels: bool = False) -> Dataset:
    """The training loop's data: a Dataset whose items are image tensors [C, S, S] in [-1, 1], or with
    ``labels=True`` (digits and cifar10 only, classes 0..9) (image, label) pairs.

    ``name`` is "digits" (8x8 unless ``image_size``), "celeba" (needs ``data_dir``; 64x64 unless
    ``image_size``; cropped with ``crop``, "ddim" unless given, see ``CelebA``; flipped when split ==
    "train"), "cifar10" (``data_dir`` holds or receives torchvision's copy; 32x32; splits "train" and
    "test"; flipped when split == "train") or a ``.npy`` path written by ``preprocess_celeba`` (flipped
    when split == "train"; ``image_size``, if given, must match the array; ``crop``, if given, must not
    contradict the crop named in the file name).
    """
    if labels:
        check_labelled(name)
    if name == "digits":
        data = digits(split, image_size or 8, return_labels=labels)
        return _Labelled(*data) if labels else _Images(data)
    if name in ("celeba", "cifar10") and data_dir is None:
        holds = "CelebA. " + GET_CELEBA if name == "celeba" else "CIFAR-10, or receives it (torchvision downloads it)"
        raise ValueError(f"get_dataset({name!r}) needs data_dir, the folder that holds {holds}")
    if crop is not None and crop not in CELEBA_CROPS:
        raise ValueError(f"crop must be one of {tuple(CELEBA_CROPS)}, got {crop!r}")
    if name == "celeba":
        return CelebA(data_dir, split, image_size or 64, crop=crop or "ddim")
    if name == "cifar10":
        if image_size not in (None, 32):
            raise ValueError(f"CIFAR-10 images are 32x32, not {image_size}x{image_size}")
        return CIFAR10(data_dir, split, with_labels=labels)
    if str(name).endswith(".npy"):
        dataset = ImageArray(name, flip=split == "train")
        if image_size is not None and dataset.shape[2:] != (image_size, image_size):
            raise ValueError(f"{name} holds {dataset.shape[2]}x{dataset.shape[3]} images, "
                             f"not {image_size}x{image_size}")
        named = [other for other in CELEBA_CROPS if other in Path(name).stem]
        if crop is not None and named and crop not in named:
            raise ValueError(f"{name} is named after crop {named[0]!r}, but crop={crop!r} was asked: pass "
                             f"crop={named[0]!r} (--crop {named[0]}) or an array built with crop {crop!r}")
        return dataset
    raise ValueError(f"unknown data set {name!r}; choose 'digits', 'celeba', 'cifar10' or the path of a .npy "
                     "array written by ddpm.preprocess_celeba")
