"""CelebA's aligned faces at 64x64 (Liu et al. 2015): both folder layouts, a uint8 cache, a generated stand-in.

Nothing here downloads anything: a missing data set is an error that says where to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .levels import to_model_range

SPLITS = {"train": 0, "valid": 1, "test": 2}  # the codes of CelebA's official list_eval_partition
CELEBA_SIZE = (178, 218)  # width, height of the aligned images (img_align_celeba)
# Crop boxes (left, top, right, bottom) of the 178x218 image, by name:
# "ddim": DDIM's CelebA 64 (Song et al. 2021, ermongroup/ddim datasets/__init__.py), the 128x128 square
#   centred at (x=89, y=121): rows 121 ± 64, columns 89 ± 64. The celeba64 preset is DDIM's network.
# "ncsnv2": NCSNv2's centred 140x140 square (Song & Ermon 2020, ermongroup/ncsnv2 datasets/__init__.py:
#   transforms.CenterCrop(140)): left 19, top 39.
CELEBA_CROPS = {"ddim": (25, 57, 153, 185), "ncsnv2": (19, 39, 159, 179)}
CELEBA_CROP = CELEBA_CROPS["ddim"]  # the default crop

GET_CELEBA = (
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
        f"no CelebA found under {root}: expected torchvision's layout ({root}/celeba/img_align_celeba/*.jpg "
        f"and {root}/celeba/list_eval_partition.txt; root may also be the celeba/ folder itself) or Kaggle's "
        f"({root}/img_align_celeba/img_align_celeba/*.jpg, or one img_align_celeba level, and "
        f"{root}/list_eval_partition.csv). " + GET_CELEBA)


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


def _jpeg_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole JPEG file (checked from its first 2 and last 32 bytes), or None.

    A JPEG starts with the marker FF D8 and ends with FF D9; a download or unzip cut short loses the end.
    Files of other types are only checked to exist. Decoding finds more (see ``preprocess_celeba``).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 32, 0))
            tail = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if size == 0:
        return "empty"
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    if head != b"\xff\xd8":
        return "not a JPEG"
    return None if b"\xff\xd9" in tail else "truncated: no JPEG end marker"


def _unreadable(problems: list[tuple[Path, str]], total: int, split: str, partition: Path, then: str = ""):
    """One ValueError for all unreadable images: how many, the first three with the reason, what to do."""
    shown = ", ".join(f"{path} ({why})" for path, why in problems[:3])
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return ValueError(f"{len(problems)} of {total} CelebA {split} images cannot be read: {shown}{more}. Replace "
                      f"them with good copies (re-download img_align_celeba), or delete them and their lines "
                      f"in {partition}{then}")


class CelebA(Dataset):
    """CelebA's aligned faces (Liu et al. 2015) as float tensors [3, S, S] on the 256-level grid in [-1, 1].

    Each 178x218 image is cropped to the box ``CELEBA_CROPS[crop]``: "ddim" (the default), the 128x128
    square centred at (x=89, y=121) of DDIM (Song et al. 2021), whose CelebA network is the celeba64 preset,
    or "ncsnv2", the centred 140x140 square of NCSNv2 (Song & Ermon 2020). It is then resized to
    ``image_size`` with Pillow's antialiased bilinear filter, kept as uint8 levels (so the grid holds
    exactly) and scaled k ↦ k/127.5 − 1. Training images are flipped left-right with probability 1/2
    (``flip`` defaults to split == "train"). Splits come from the official partition (train 162,770, valid
    19,867, test 19,962 images). ``root`` holds torchvision's layout (celeba/img_align_celeba,
    list_eval_partition.txt) or Kaggle's (img_align_celeba/img_align_celeba, list_eval_partition.csv);
    it may also be the celeba/ folder itself. ``verify`` checks every file of the split for JPEG's start
    and end markers (a few bytes each), so that a missing or truncated image is an error here, with all
    such paths, rather than when training reaches it; an image that still fails to decode raises a
    one-line ValueError naming it.
    """

    def __init__(self, root, split: str = "train", image_size: int = 64, flip: bool | None = None,
                 crop: str = "ddim", verify: bool = True):
        if split not in SPLITS:
            raise ValueError(f"CelebA split must be one of {tuple(SPLITS)}, got {split!r}")
        if crop not in CELEBA_CROPS:
            raise ValueError(f"CelebA crop must be 'ddim' (DDIM's 128x128 square centred at x=89, y=121) or "
                             f"'ncsnv2' (NCSNv2's centred 140x140 square), got {crop!r}")
        left, _, right, _ = box = CELEBA_CROPS[crop]
        if not (isinstance(image_size, int) and 1 <= image_size <= right - left):
            raise ValueError(f"CelebA image_size must be an integer in 1..{right - left} (crop {crop!r} is "
                             f"{right - left}x{right - left}), got {image_size!r}")
        self.image_dir, self.partition_file = _find_celeba(Path(root).expanduser())
        self.files = [self.image_dir / name for name in _read_partition(self.partition_file, split)]
        if not self.files:
            raise ValueError(f"{self.partition_file} lists no images for split {split!r} (code {SPLITS[split]})")
        if not self.files[0].is_file():
            raise FileNotFoundError(f"{self.files[0]} is listed in {self.partition_file} but missing. " + GET_CELEBA)
        self.split, self.image_size, self.crop, self.box = split, image_size, crop, box
        self.flip = split == "train" if flip is None else flip
        if verify:
            problems = [(path, why) for path in self.files if (why := _jpeg_problem(path))]
            if problems:
                raise _unreadable(problems, len(self.files), split, self.partition_file)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> Tensor | str:
        """Image i as uint8 levels [3, S, S], cropped and resized, or the reason it cannot be read."""
        try:
            with Image.open(self.files[i]) as img:
                img = img.convert("RGB")
        except FileNotFoundError:
            return "missing"
        except UnidentifiedImageError:
            return "not an image"
        except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt
            return "truncated or corrupt: " + " ".join(str(e).split())
        if why := _jpeg_problem(self.files[i]):  # decodable, yet cut short: agree with the check at build
            return why
        if img.size != CELEBA_SIZE:
            return (f"{img.size[0]}x{img.size[1]}, not {CELEBA_SIZE[0]}x{CELEBA_SIZE[1]} as the aligned "
                    "images of img_align_celeba")
        img = img.crop(self.box).resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()

    def levels(self, i: int) -> Tensor:
        """Image i, cropped and resized, as uint8 levels [3, S, S], never flipped."""
        x = self._load(i)
        if isinstance(x, str):
            raise ValueError(f"cannot use CelebA image {self.files[i]} ({x}). Replace it with a good "
                             f"copy (re-download img_align_celeba), or delete it and its line in "
                             f"{self.partition_file}")
        return x

    def __getitem__(self, i: int) -> Tensor:
        x = self.levels(i)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return to_model_range(x)


class _Decoded(Dataset):
    """(levels, "") for each CelebA image, or (zeros, the reason) when it cannot be read: for the cache."""

    def __init__(self, celeba: CelebA):
        self.celeba = celeba

    def __len__(self) -> int:
        return len(self.celeba)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        x = self.celeba._load(i)
        if isinstance(x, str):
            return torch.zeros(3, self.celeba.image_size, self.celeba.image_size, dtype=torch.uint8), x
        return x, ""


def preprocess_celeba(root, out_path, split: str = "train", image_size: int = 64, crop: str = "ddim",
                      workers: int = min(8, os.cpu_count() or 1), progress: bool = True) -> Path:
    """Crop and resize one CelebA split once, into a uint8 array [N, 3, S, S] saved as ``.npy``.

    ``out_path`` is a folder, where the file is named ``celeba{S}_{crop}_{split}.npy``, or a ``.npy`` path
    whose name contains the crop's name, so that arrays of two crops are never mixed up. The train split
    at 64x64 is 162,770 × 3·64·64 = 2,000,117,760 bytes (2.0 GB, 1.86 GiB), plus a 128-byte header. The
    array is written to a temporary file next to the final path and moved into place only when complete
    (``os.replace``), so a failure never leaves a partial file. Every image is decoded here: those that
    cannot be read are collected and reported together in one ValueError, and nothing is written.
    Read the array with ``ImageArray(path)``; images are not flipped here (ImageArray flips them).
    """
    celeba = CelebA(root, split, image_size, flip=False, crop=crop, verify=False)  # decoding checks more
    out_path, name = Path(out_path).expanduser(), f"celeba{image_size}_{crop}_{split}.npy"
    if out_path.suffix == "" or out_path.is_dir():
        out_path = out_path / name
    if out_path.suffix != ".npy":
        raise ValueError(f"out_path must be a folder or end in .npy, got {out_path}")
    if crop not in out_path.stem:
        raise ValueError(f"name the array after its crop, e.g. {out_path.with_name(name)} (or pass a folder), "
                         f"so that arrays of two crops are never mixed up; got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    problems = []
    try:
        shape = (len(celeba), 3, image_size, image_size)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        loader = DataLoader(_Decoded(celeba), batch_size=256, num_workers=workers)
        start = 0
        for batch, reasons in tqdm(loader, desc=f"CelebA {split} -> {out_path.name}", unit="batch",
                                   disable=not progress):
            array[start:start + len(batch)] = batch.numpy()
            problems += [(celeba.files[start + j], why) for j, why in enumerate(reasons) if why]
            start += len(batch)
        if problems:
            raise _unreadable(problems, len(celeba), split, celeba.partition_file,
                              then=f"; then run preprocess_celeba again (nothing was written to {out_path})")
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
        try:
            array = np.load(self.path, mmap_mode="r")  # allow_pickle stays False: a file cannot run code
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{self.path} is not a .npy array of images ({type(e).__name__}); make one with "
                             "ddpm.preprocess_celeba, or np.save a uint8 array [N, C, H, W]") from None
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
