"""CIFAR-10 (Krizhevsky 2009), the data set of the paper's Table 1, read by torchvision.

torchvision downloads it where there is network; offline, a missing copy is an error that says what to do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .levels import to_model_range

CIFAR10_SPLITS = ("train", "test")  # 50,000 and 10,000 images


class CIFAR10(Dataset):
    """CIFAR-10's 32x32 colour images as float tensors [3, 32, 32] on the 256-level grid in [-1, 1].

    The images come from ``torchvision.datasets.CIFAR10(root, download=True)``, which checks each file's
    MD5 and, where one is missing or altered, downloads and unpacks ``cifar-10-python.tar.gz`` into
    ``root`` (or only unpacks it, if it is already there). The uint8 levels k are kept in ``images``
    [N, 3, 32, 32] and scaled k ↦ k/127.5 − 1 per item. Training images are flipped left-right with
    probability 1/2, as Ho et al. (2020) trained (``flip`` defaults to split == "train"). ``labels`` holds
    the classes 0..9; ``with_labels=True`` yields (image, label) pairs.
    """

    def __init__(self, root, split: str = "train", flip: bool | None = None, with_labels: bool = False):
        if split not in CIFAR10_SPLITS:
            raise ValueError(f"CIFAR-10 split must be one of {CIFAR10_SPLITS}, got {split!r}")
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10  # only when asked: a slow import

        root = Path(root).expanduser().absolute()
        try:
            data = TorchvisionCIFAR10(root, train=split == "train", download=True)
        except (OSError, RuntimeError) as e:  # no network (URLError is an OSError), or a bad download
            batches = root / "cifar-10-batches-py"
            state = (f"{batches} fails torchvision's MD5 check (incomplete or altered)" if batches.exists()
                     else f"CIFAR-10 is not in {root}")
            raise FileNotFoundError(
                f"{state} and could not be downloaded ({' '.join(str(e).split())}). On a machine with "
                f"network, download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and put "
                f"it in {root}, or unpack it there so that {batches}/ holds data_batch_1 ... data_batch_5, "
                f"test_batch and batches.meta; then pass that folder as data_dir (--data-dir)") from e
        self.images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, 32, 32]
        self.labels = torch.tensor(data.targets)
        self.split, self.flip = split, split == "train" if flip is None else flip
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, Tensor]:
        x = self.images[i]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (to_model_range(x), self.labels[i]) if self.with_labels else to_model_range(x)
