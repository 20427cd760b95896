"""A small CNN classifier of scikit-learn's digits, trained in seconds on a CPU, whose features score samples.

Its penultimate layer plays, for 8x8 digits, the part the Inception network plays in FID
(Heusel et al. 2017): :func:`digits_frechet_distance` compares the Gaussians fitted
to these features for generated and for real digits. Nothing is downloaded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import digits
from .levels import to_model_range, to_uint8
from .evaluate import Estimate, batches, frechet_distance, inference, kid

NUM_CLASSES = 10


class DigitsClassifier(nn.Module):
    """Two 3x3 convolution blocks, a ``feature_dim``-unit ReLU layer (the features) and 10 logits.

    Inputs are digit images [B, 1, S, S] in [-1, 1] with S = ``image_size`` (8 for the raw data).
    ``test_accuracy`` holds the held-out accuracy measured by :func:`train_digits_classifier`.
    """

    def __init__(self, image_size: int = 8, width: int = 32, feature_dim: int = 64):
        super().__init__()
        if not (isinstance(image_size, int) and image_size >= 8):
            raise ValueError(f"image_size must be an integer >= 8 (the digits are 8x8), got {image_size!r}")
        self.image_size, self.feature_dim = image_size, feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * 16, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_CLASSES)
        self.test_accuracy = float("nan")

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer, [B, feature_dim]: what the Fréchet distance compares."""
        expected = (1, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"the classifier takes digit images of shape [B, {', '.join(map(str, expected))}], "
                             f"got {tuple(x.shape)}; train one with train_digits_classifier(image_size=...) "
                             "for another size")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Each image translated by up to one pixel in each direction, background (−1) filling the gap."""
    size = x.shape[-1]
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=generator)
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None].expand(-1, 1, -1, size + 2)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :].expand(-1, 1, size, -1)
    return out.gather(3, cols)


def accuracy(classifier: DigitsClassifier, images: Tensor, labels: Tensor) -> float:
    """The fraction of ``images`` whose most likely class is their label."""
    with inference(classifier):
        return (classifier(images).argmax(1) == labels).double().mean().item()


def train_digits_classifier(image_size: int = 8, seed: int = 0, steps: int = 500, batch_size: int = 128,
                            lr: float = 2e-3, progress: bool = False) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` on the train split of :func:`ddpm.digits` with Adam.

    Images are shifted by up to one pixel at random (augmentation). Training runs on one CPU thread
    (the network is too small to gain from more, and a fixed thread count fixes the order of float
    sums), so it is deterministic given ``seed`` on a given machine; it draws from its own generators
    and leaves the global RNG as it was. The accuracy on the held-out test split is measured and
    stored in ``.test_accuracy``. The classifier is returned in eval mode.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x, y = digits("train", image_size, return_labels=True)
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(image_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in tqdm(range(steps), desc="classifier", disable=not progress, leave=False):
            idx = torch.randint(0, len(x), (batch_size,), generator=g)
            loss = nn.functional.cross_entropy(model(_shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.test_accuracy = accuracy(model, *digits("test", image_size, return_labels=True))
    return model


# ----------------------------------------------------------------------------------------- Fréchet distances

def digit_features(classifier, images, batch_size: int = 1024) -> Tensor:
    """The classifier's penultimate features of digit images in [-1, 1], first rounded to the 256 levels
    (as a saved 8-bit image would be): [N, feature_dim], float64."""
    device = next(classifier.parameters()).device
    with inference(classifier):
        out = [classifier.features(to_model_range(to_uint8(x)).to(device)).double().cpu()
               for x in batches(images, batch_size)]
    return torch.cat(out)


def confidence_and_classes(classifier, images, batch_size: int = 1024) -> tuple[float, float]:
    """Two plain readings of digit samples: the classifier's mean confidence (the mean of its largest class
    probability) and the effective number of classes among its guesses, exp(entropy of their histogram),
    which is 10 when every digit is guessed equally often. Images are rounded to 256 levels first."""
    device = next(classifier.parameters()).device
    with inference(classifier):
        p = torch.cat([torch.softmax(classifier(to_model_range(to_uint8(x)).to(device)).double(), 1).cpu()
                       for x in batches(images, batch_size)])
    share = torch.bincount(p.argmax(1), minlength=NUM_CLASSES).double() / len(p)
    share = share[share > 0]
    return p.max(1).values.mean().item(), (-(share * share.log()).sum()).exp().item()


def digits_frechet_distance(samples, reference, classifier, batch_size: int = 1024) -> float:
    """The Fréchet distance between digit samples and real digits in the features of a
    :class:`ddpm.classifier.DigitsClassifier`: FID's recipe with a small network that sees 8x8 digits.
    Compare sets of equal size: the estimate is biased upward, the more so the fewer the images."""
    return frechet_distance(digit_features(classifier, samples, batch_size),
                            digit_features(classifier, reference, batch_size))


def digits_kid(samples, reference, classifier, batch_size: int = 1024) -> Estimate:
    """The kernel distance (:func:`ddpm.evaluate.kid`, unbiased, with a standard error) between digit samples
    and real digits in the features of a :class:`ddpm.classifier.DigitsClassifier`."""
    return kid(digit_features(classifier, samples, batch_size), digit_features(classifier, reference, batch_size))


class FrechetScale(NamedTuple):
    real_vs_real: float            # two halves of the real test set
    real_vs_uniform_noise: float   # uniform noise on [-1, 1] against one half
    real_vs_gaussian_noise: float  # N(0, 1) noise clipped to [-1, 1] against one half
    num_images: int                # the images in each set compared


def frechet_reference_scale(classifier, seed: int = 0, reference=None) -> FrechetScale:
    """What :func:`digits_frechet_distance` reads for real data and for noise: the scale of its values.

    ``reference`` (default: the test split of :func:`ddpm.digits` at the classifier's size) is shuffled
    with ``seed`` and halved; one half is compared with the other and with as many noise images.
    """
    if reference is None:
        reference = digits("test", classifier.image_size)
    g = torch.Generator().manual_seed(seed)
    shuffled = reference[torch.randperm(len(reference), generator=g)]
    n = len(shuffled) // 2
    if n < 2:
        raise ValueError(f"reference needs at least 4 images to be halved, got {len(shuffled)}")
    half_a, half_b = shuffled[:n], shuffled[n:2 * n]
    uniform = torch.rand(half_a.shape, generator=g) * 2 - 1
    gaussian = torch.randn(half_a.shape, generator=g).clamp(-1, 1)
    feats_b = digit_features(classifier, half_b)
    return FrechetScale(*(frechet_distance(digit_features(classifier, x), feats_b)
                          for x in (half_a, uniform, gaussian)), num_images=n)
