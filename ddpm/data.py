"""The data: scikit-learn's handwritten digits, CelebA 64x64 (both common folder layouts), 2-D toy sets.

Images are float tensors [C, H, W] on the 256-level grid k/127.5 − 1, k ∈ {0, …, 255}, as in Ho et al.
(2020): the levels are 2/255 apart, which is what the discretized decoder L_0 assumes. Nothing here
downloads anything.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

SPLITS = {"train": 0, "valid": 1, "test": 2}  # the codes of CelebA's official list_eval_partition
CELEBA_SIZE = (178, 218)  # width, height of the aligned images (img_align_celeba)
# The centred 140x140 crop of NCSNv2 (Song & Ermon 2020, ermongroup/ncsnv2 datasets/__init__.py:
# transforms.CenterCrop(140)): left 19, top 39 of the 178x218 image, i.e. the box (19, 39, 159, 179).
CELEBA_CROP = (19, 39, 159, 179)
TOY_2D = ("moons", "swissroll", "gaussians8", "checkerboard")


def to_model_range(x_uint8) -> Tensor:
    """Integer levels k ∈ {0, …, 255} to the model's range: k ↦ k/127.5 − 1 (float32)."""
    x = torch.as_tensor(x_uint8)
    if x.is_floating_point():
        raise ValueError(f"to_model_range expects integer levels 0..255 (e.g. uint8), got {x.dtype}; "
                         "use to_uint8 first if the values are already in [-1, 1]")
    return x.to(torch.float32) / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """The inverse of ``to_model_range``: [-1, 1] ↦ the nearest level round((x + 1)·127.5), clamped to 0..255."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class _Images(Dataset):
    """A Dataset over a tensor of images, yielding the tensors alone (no labels)."""

    def __init__(self, images: Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> Tensor:
        return self.images[i]


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


# ----------------------------------------------------------------------------------------- CelebA

_GET_CELEBA = (
    "CelebA is not downloaded by this package. Get the aligned images and the partition file either with "
    "torchvision (`torchvision.datasets.CelebA(root, download=True)`, from Google Drive; it creates "
    "<root>/celeba/) or from Kaggle (the data set 'jessicali9530/celeba-dataset', unzipped into <root>), "
    "then pass that <root>. For a small generated stand-in, use ddpm.data.fake_celeba(root)."
)


def _find_celeba(root: Path) -> tuple[Path, Path]:
    """The image folder and the partition file, in torchvision's or Kaggle's layout, under root or root/celeba."""
    for base in (root / "celeba", root):
        for partition in ("list_eval_partition.txt", "list_eval_partition.csv"):
            for images in ("img_align_celeba/img_align_celeba", "img_align_celeba"):
                if (base / partition).is_file() and (base / images).is_dir():
                    return base / images, base / partition
    raise FileNotFoundError(
        f"no CelebA found under {root}. Expected one of:\n"
        f"  torchvision: {root}/celeba/img_align_celeba/*.jpg and {root}/celeba/list_eval_partition.txt "
        f"(root may also be the celeba/ folder itself)\n"
        f"  Kaggle:      {root}/img_align_celeba/img_align_celeba/*.jpg (or one img_align_celeba level) "
        f"and {root}/list_eval_partition.csv\n" + _GET_CELEBA)


def _read_partition(path: Path, split: str) -> list[str]:
    """The image names of one split from list_eval_partition (.txt "000001.jpg 0" or .csv "image_id,partition")."""
    names = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0] == "image_id":
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {n}: expected '<image name> <0|1|2>', got {line!r}")
        if int(fields[1]) == SPLITS[split]:
            names.append(fields[0])
    return names


class CelebA(Dataset):
    """CelebA's aligned faces (Liu et al. 2015) as float tensors [3, S, S] on the 256-level grid in [-1, 1].

    Each 178x218 image is cropped to the centred 140x140 square ``CELEBA_CROP`` (the crop of NCSNv2,
    Song & Ermon 2020), resized to ``image_size`` with Pillow's antialiased bilinear filter, kept as
    uint8 levels (so the grid holds exactly) and scaled k ↦ k/127.5 − 1. Training images are flipped
    left-right with probability 1/2 (``flip`` defaults to split == "train"). Splits come from the
    official partition (train 162,770, valid 19,867, test 19,962 images). ``root`` holds torchvision's
    layout (celeba/img_align_celeba, list_eval_partition.txt) or Kaggle's (img_align_celeba/img_align_celeba,
    list_eval_partition.csv); it may also be the celeba/ folder itself.
    """

    def __init__(self, root, split: str = "train", image_size: int = 64, flip: bool | None = None):
        if split not in SPLITS:
            raise ValueError(f"CelebA split must be one of {tuple(SPLITS)}, got {split!r}")
        if not (isinstance(image_size, int) and 1 <= image_size <= 140):
            raise ValueError(f"CelebA image_size must be an integer in 1..140 (the crop is 140x140), "
                             f"got {image_size!r}")
        self.image_dir, self.partition_file = _find_celeba(Path(root).expanduser())
        self.files = [self.image_dir / name for name in _read_partition(self.partition_file, split)]
        if not self.files:
            raise ValueError(f"{self.partition_file} lists no images for split {split!r} (code {SPLITS[split]})")
        if not self.files[0].is_file():
            raise FileNotFoundError(f"{self.files[0]} is listed in {self.partition_file} but missing. " + _GET_CELEBA)
        self.split, self.image_size = split, image_size
        self.flip = split == "train" if flip is None else flip

    def __len__(self) -> int:
        return len(self.files)

    def levels(self, i: int) -> Tensor:
        """Image i, cropped and resized, as uint8 levels [3, S, S], never flipped."""
        path = self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # missing, truncated or corrupt files
            raise RuntimeError(f"could not read CelebA image {path}: {e}") from e
        if img.size != CELEBA_SIZE:
            raise ValueError(f"{path} is {img.size[0]}x{img.size[1]}, but the aligned CelebA images "
                             f"(img_align_celeba) are {CELEBA_SIZE[0]}x{CELEBA_SIZE[1]}")
        img = img.crop(CELEBA_CROP).resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, i: int) -> Tensor:
        x = self.levels(i)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_model_range(x)


def preprocess_celeba(root, out_path, split: str = "train", image_size: int = 64,
                      workers: int = min(8, os.cpu_count() or 1)) -> Path:
    """Crop and resize one CelebA split once, into a uint8 array [N, 3, S, S] saved as ``.npy``.

    The train split at 64x64 is 162,770 × 3·64·64 = 2,000,117,760 bytes (2.0 GB, 1.86 GiB), plus a
    128-byte header. The array is written to a temporary file next to ``out_path`` and moved into
    place only when complete (``os.replace``), so a failure never leaves a partial file at ``out_path``.
    Read it with ``ImageArray(out_path)``; images are not flipped here (ImageArray flips them).
    """
    out_path = Path(out_path).expanduser()
    if out_path.suffix != ".npy":
        raise ValueError(f"out_path must end in .npy, got {out_path}")
    celeba = CelebA(root, split, image_size, flip=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    try:
        shape = (len(celeba), 3, image_size, image_size)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        loader = DataLoader(celeba, batch_size=256, num_workers=workers)
        start = 0
        for batch in tqdm(loader, desc=f"CelebA {split} -> {out_path.name}", unit="batch"):
            array[start:start + len(batch)] = to_uint8(batch).numpy()  # exact: the levels round-trip
            start += len(batch)
        array.flush()
        del array
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


class ImageArray(Dataset):
    """Images from a uint8 ``.npy`` array [N, C, H, W] (see ``preprocess_celeba``), memory-mapped, in [-1, 1].

    The file is opened with ``np.load(mmap_mode="r")`` in each process that reads it, so DataLoader
    workers share the page cache instead of copying the array. ``flip`` flips left-right with probability 1/2.
    """

    def __init__(self, path, flip: bool = False):
        self.path, self.flip = Path(path).expanduser(), flip
        if not self.path.is_file():
            raise FileNotFoundError(f"no image array at {self.path}; make one with ddpm.data.preprocess_celeba")
        array = np.load(self.path, mmap_mode="r")
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3):
            raise ValueError(f"{self.path} must hold uint8 images [N, C, H, W] with C = 1 or 3, "
                             f"got {array.dtype} {array.shape}")
        self.shape, self._array = array.shape, None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):
        return {**self.__dict__, "_array": None}  # each worker maps the file itself

    def __getitem__(self, i: int) -> Tensor:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        x = torch.from_numpy(np.array(self._array[i]))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_model_range(x)


def fake_celeba(root, n: int = 40, layout: str = "torchvision", seed: int = 0) -> Path:
    """Write a generated STAND-IN for CelebA (not faces): n smooth 178x218 JPEGs and a partition file.

    Images are gradients with a few soft blobs; the first 80% are train, the next 10% valid, the rest
    test, as in the real partition's order. ``layout`` is "torchvision" (root/celeba/...) or "kaggle"
    (root/img_align_celeba/img_align_celeba/..., root/list_eval_partition.csv). Returns root, ready for
    ``CelebA(root)``. Used by the tests, and by the book when the real CelebA is absent.
    """
    if layout not in ("torchvision", "kaggle"):
        raise ValueError(f"layout must be 'torchvision' or 'kaggle', got {layout!r}")
    if n < 3:
        raise ValueError(f"fake_celeba needs n >= 3 (one image per split), got {n}")
    root = Path(root).expanduser()
    base, images = (root / "celeba", root / "celeba" / "img_align_celeba") if layout == "torchvision" else \
        (root, root / "img_align_celeba" / "img_align_celeba")
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:CELEBA_SIZE[1], 0:CELEBA_SIZE[0]] / 200.0
    n_train, n_valid = round(0.8 * n), max(1, round(0.1 * n))
    rows = []
    for i in range(1, n + 1):
        img = rng.uniform(0, 255, 3) + rng.uniform(-120, 120, 3) * (xx[..., None] + yy[..., None]) / 2
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1.09), rng.uniform(0, 0.89), rng.uniform(0.05, 0.2)
            img += rng.uniform(-150, 150, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2)[..., None]
        name = f"{i:06d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / name, quality=90)
        rows.append((name, 0 if i <= n_train else 1 if i <= n_train + n_valid else 2))
    if layout == "torchvision":
        (base / "list_eval_partition.txt").write_text("".join(f"{a} {b}\n" for a, b in rows))
    else:
        (base / "list_eval_partition.csv").write_text("image_id,partition\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return root


# ----------------------------------------------------------------------------------------- one entry point

def get_dataset(name: str, split: str = "train", data_dir=None, image_size: int | None = None) -> Dataset:
    """The training loop's data: a Dataset whose items are image tensors [C, S, S] in [-1, 1] (no labels).

    ``name`` is "digits" (8x8 unless ``image_size``), "celeba" (needs ``data_dir``; 64x64 unless
    ``image_size``; flipped when split == "train") or a ``.npy`` path written by ``preprocess_celeba``
    (flipped when split == "train"; ``image_size``, if given, must match the array).
    """
    if name == "digits":
        return _Images(digits(split, image_size or 8))
    if name == "celeba":
        if data_dir is None:
            raise ValueError("get_dataset('celeba') needs data_dir, the folder that holds CelebA. " + _GET_CELEBA)
        return CelebA(data_dir, split, image_size or 64)
    if str(name).endswith(".npy"):
        dataset = ImageArray(name, flip=split == "train")
        if image_size is not None and dataset.shape[2:] != (image_size, image_size):
            raise ValueError(f"{name} holds {dataset.shape[2]}x{dataset.shape[3]} images, "
                             f"not {image_size}x{image_size}")
        return dataset
    raise ValueError(f"unknown data set {name!r}; choose 'digits', 'celeba' or the path of a .npy array "
                     "written by ddpm.data.preprocess_celeba")
