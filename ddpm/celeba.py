"""CelebA's aligned faces at 64x64 (Liu et al. 2015): both folder layouts, a uint8 cache, a generated stand-in.

Nothing here downloads anything: a missing data set is an error that says where to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .levels import to_model_range, to_uint8

SPLITS = {"train": 0, "valid": 1, "test": 2}  # the codes of CelebA's official list_eval_partition
CELEBA_SIZE = (178, 218)  # width, height of the aligned images (img_align_celeba)
# The centred 140x140 crop of NCSNv2 (Song & Ermon 2020, ermongroup/ncsnv2 datasets/__init__.py:
# transforms.CenterCrop(140)): left 19, top 39 of the 178x218 image, i.e. the box (19, 39, 159, 179).
CELEBA_CROP = (19, 39, 159, 179)

_GET_CELEBA = (
    "CelebA is not downloaded by this package. Get the aligned images and the partition file either with "
    "torchvision (`torchvision.datasets.CelebA(root, download=True)`, from Google Drive; it creates "
    "<root>/celeba/) or from Kaggle (the data set 'jessicali9530/celeba-dataset', unzipped into <root>), "
    "then pass that <root>. For a small generated stand-in, use ddpm.fake_celeba(root)."
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
            raise FileNotFoundError(f"no image array at {self.path}; make one with ddpm.preprocess_celeba")
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
