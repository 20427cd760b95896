"""Tests of ddpm/levels.py, data.py, celeba.py and cifar10.py: the 256-level grid, digits, the 2-D toy sets,
CelebA in both layouts, its crops and unreadable images, the .npy cache, CIFAR-10 on a local stand-in."""

import hashlib
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ddpm
from ddpm.celeba import CELEBA_CROP, CELEBA_CROPS, CELEBA_SIZE, CelebA, ImageArray, fake_celeba, preprocess_celeba
from ddpm.cifar10 import CIFAR10
from ddpm.data import TOY_2D, _curve_moments, _moons, _swissroll, digits, get_dataset, toy_2d
from ddpm.levels import to_model_range, to_uint8
from ddpm.likelihood import check_on_grid

SEED = ddpm.book.seed()
N_FAKE = 30  # fake_celeba's split: 24 train, 3 valid, 3 test


# ----------------------------------------------------------------------------------------- the grid

def test_levels_round_trip_and_spacing():
    k = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(k)
    assert x.dtype == torch.float32 and x[0] == -1 and x[-1] == 1
    assert (x.diff() - 2 / 255).abs().max() < 1e-6
    assert torch.equal(to_uint8(x), k)
    assert torch.equal(to_uint8(x + 0.4 * 2 / 255), k)  # rounds to the nearest level
    assert to_uint8(torch.tensor([-3.0, 5.0])).tolist() == [0, 255]  # clamps
    with pytest.raises(ValueError, match="integer levels"):
        to_model_range(x)


# ----------------------------------------------------------------------------------------- digits

def _sklearn_levels():
    from sklearn.datasets import load_digits
    d = load_digits()
    return np.rint(d.images * 255 / 16).astype(np.uint8), d.target


def test_digits_split_is_a_deterministic_partition_with_labels():
    train, y_train = digits("train", return_labels=True)
    test, y_test = digits("test", return_labels=True)
    assert train.shape == (1438, 1, 8, 8) and test.shape == (359, 1, 8, 8)
    assert y_train.shape == (1438,) and y_test.dtype == torch.long
    check_on_grid(train), check_on_grid(test)
    assert train.min() == -1 and train.max() == 1
    # train + test is exactly scikit-learn's 1,797 images with their labels, each once
    levels, labels = _sklearn_levels()
    ours = Counter((to_uint8(x).numpy().tobytes(), int(y)) for x, y in zip(torch.cat([train, test]),
                                                                        torch.cat([y_train, y_test])))
    theirs = Counter((x[None].tobytes(), int(y)) for x, y in zip(levels, labels))
    assert ours == theirs
    assert torch.equal(digits("test"), test)
    assert not torch.equal(digits("test", seed=1), test)
    assert digits("test", test_fraction=0.5).shape[0] == 898


def test_digits_upscaled_stay_on_grid_and_keep_the_image():
    small, big = digits("test"), digits("test", image_size=16)
    assert big.shape == (359, 1, 16, 16)
    check_on_grid(big)
    pooled = torch.nn.functional.avg_pool2d(big, 2).flatten(1)
    corr = lambda a, b: torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr(pooled, small.flatten(1)) > 0.95
    assert corr(pooled, small.transpose(-1, -2).flatten(1)) < 0.9  # not transposed


@pytest.mark.parametrize("kwargs, match", [({"split": "valid"}, "split"), ({"image_size": 4}, "image_size"),
                                           ({"test_fraction": 1.0}, "test_fraction")])
def test_digits_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        digits(**kwargs)


# ----------------------------------------------------------------------------------------- 2-D toy sets

@pytest.mark.parametrize("name", TOY_2D)
def test_toy_2d_moments(name):
    """Mean 0 per coordinate and E|x|²/2 = 1, each within 5 standard errors."""
    n = 20_000
    x = toy_2d(name, n, torch.Generator().manual_seed(SEED)).double()
    assert x.shape == (n, 2) and toy_2d(name, 5).dtype == torch.float32
    se = x.std(0) / n**0.5
    assert ((x.mean(0)).abs() < 5 * se).all(), (SEED, x.mean(0), se)
    half_sq = (x ** 2).sum(1) / 2
    assert abs(half_sq.mean() - 1) < 5 * half_sq.std() / n**0.5, (SEED, half_sq.mean())
    if name in ("gaussians8", "checkerboard"):  # isotropic: unit variance in each coordinate
        sq = x ** 2
        assert ((sq.mean(0) - 1).abs() < 5 * sq.std(0) / n**0.5).all(), (SEED, sq.mean(0))


def test_curve_moments_match_closed_forms():
    """Moons: mean (1/2, 1/4), spread 3/4 + 9/16 − 1/π. Swiss roll, t ~ U(1.5π, 4.5π): E[t cos t] = 2,
    E[t sin t] = 2/(3π), E[t²] = 9.75π², so the spread is 9.75π² − 4 − 4/(9π²)."""
    mean, spread = _curve_moments(_moons)
    assert torch.allclose(mean, torch.tensor([0.5, 0.25], dtype=torch.float64), atol=1e-6)
    assert abs(spread - (3 / 4 + 9 / 16 - 1 / np.pi)) < 1e-6
    mean, spread = _curve_moments(_swissroll)
    assert torch.allclose(mean, torch.tensor([2, 2 / (3 * np.pi)], dtype=torch.float64), atol=1e-5)
    assert abs(spread - (9.75 * np.pi**2 - 4 - 4 / (9 * np.pi**2))) < 1e-3


def test_toy_2d_shapes_and_determinism():
    g = lambda: torch.Generator().manual_seed(SEED)
    x = toy_2d("checkerboard", 5000, g())
    cell = torch.floor(x * 2 / 3**0.5 + 2)  # the board's squares, 0..3 in each coordinate
    assert ((cell >= 0) & (cell <= 3)).all() and ((cell.sum(1) % 2) == 0).all()
    x = toy_2d("gaussians8", 5000, g())
    angles = 2 * np.pi / 8 * torch.arange(8)
    centres = 1.98**0.5 * torch.stack([angles.cos(), angles.sin()], 1)
    nearest = torch.cdist(x, centres.float()).min(1).values
    assert nearest.max() < 0.1 * 6  # a Gaussian of std 0.1 in 2-D beyond 6σ: probability e^-18 per point
    assert torch.equal(toy_2d("moons", 100, g()), toy_2d("moons", 100, g()))
    with pytest.raises(ValueError, match="moons"):
        toy_2d("spiral", 10)


# ----------------------------------------------------------------------------------------- CelebA

def test_crop_boxes_are_ddims_and_ncsnv2s():
    """DDIM: rows cy ± 64 and columns cx ± 64 around (cx, cy) = (89, 121), the default. NCSNv2: torchvision's
    CenterCrop(140) on 178x218 images, offsets round((size − 140)/2)."""
    cx, cy = 89, 121
    assert CELEBA_CROPS["ddim"] == (cx - 64, cy - 64, cx + 64, cy + 64) == CELEBA_CROP
    top, left = round((218 - 140) / 2), round((178 - 140) / 2)
    assert CELEBA_SIZE == (178, 218) and CELEBA_CROPS["ncsnv2"] == (left, top, left + 140, top + 140)


@pytest.mark.parametrize("crop", ["ddim", "ncsnv2"])
def test_celeba_equals_the_original_pipelines(celeba_roots, crop):
    """The same pixels as DDIM's transforms (F.crop at top cy − 64, left cx − 64, 128x128, then Resize(64))
    and NCSNv2's (CenterCrop(140), Resize(64)), both built here from torchvision."""
    from torchvision import transforms
    from torchvision.transforms import functional as F
    cx, cy = 89, 121
    first = transforms.Lambda(lambda img: F.crop(img, cy - 64, cx - 64, 128, 128)) if crop == "ddim" else \
        transforms.CenterCrop(140)
    original = transforms.Compose([first, transforms.Resize(64), transforms.PILToTensor()])
    data = CelebA(celeba_roots["torchvision"], "train", crop=crop)
    for i in range(5):
        with Image.open(data.files[i]) as img:
            assert torch.equal(data.levels(i), original(img.convert("RGB")))


def _pattern(box, shift: int = 0) -> np.ndarray:
    """A 178x218 image: red outside the crop box; inside, green top-left, blue top-right, white bottom half.

    ``shift`` > 0 moves the red border that many pixels into the box, to show the check can fail.
    """
    left, top, right, bottom = box
    img = np.zeros((CELEBA_SIZE[1], CELEBA_SIZE[0], 3), np.uint8)
    img[...] = (255, 0, 0)
    mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
    img[top:mid_y, left:mid_x] = (0, 255, 0)
    img[top:mid_y, mid_x:right] = (0, 0, 255)
    img[mid_y:bottom, left:right] = (255, 255, 255)
    img[:, :left + shift] = img[:top + shift] = (255, 0, 0)
    return img


def _save_pattern(path, box=CELEBA_CROP, shift=0):
    Image.fromarray(_pattern(box, shift)).save(path, quality=100, subsampling=0)


def _red_leak(levels: torch.Tensor) -> torch.Tensor:
    """R − min(G, B) per pixel: 0 for green, blue and white, 255 for the red border."""
    r, g, b = levels.int()
    return r - torch.minimum(g, b)


@pytest.fixture(scope="module")
def celeba_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("celeba")
    return {layout: fake_celeba(base / layout, n=N_FAKE, layout=layout, seed=SEED)
            for layout in ("torchvision", "kaggle")}


@pytest.mark.parametrize("layout", ["torchvision", "kaggle"])
def test_celeba_layouts_splits_shapes_grid(celeba_roots, layout):
    root = celeba_roots[layout]
    for split, count in [("train", 24), ("valid", 3), ("test", 3)]:
        data = CelebA(root, split)
        assert len(data) == count
        x = torch.stack([data[i] for i in range(len(data))])
        assert x.shape == (count, 3, 64, 64) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
        check_on_grid(x)
    assert CelebA(root, "test", image_size=32)[0].shape == (3, 32, 32)
    assert torch.equal(CelebA(root, "valid")[1], get_dataset("celeba", "valid", data_dir=root)[1])


def test_celeba_other_roots(celeba_roots, tmp_path):
    """root may be celeba/ itself; Kaggle's images may sit one level deep instead of two."""
    reference = CelebA(celeba_roots["torchvision"], "valid")[0]
    assert torch.equal(CelebA(celeba_roots["torchvision"] / "celeba", "valid")[0], reference)
    kaggle = tmp_path / "kaggle"
    shutil.copytree(celeba_roots["kaggle"], kaggle)
    nested = kaggle / "img_align_celeba"
    (nested / "img_align_celeba").rename(tmp_path / "flat")
    nested.rmdir()
    (tmp_path / "flat").rename(nested)
    single = CelebA(kaggle, "test")
    assert single.image_dir == nested and len(single) == 3
    assert torch.equal(single[2], CelebA(celeba_roots["kaggle"], "test")[2])


@pytest.mark.parametrize("crop", [None, "ncsnv2"])  # None: the default, DDIM's
def test_celeba_crop_box_and_orientation(tmp_path, crop):
    root = fake_celeba(tmp_path, n=N_FAKE)
    data = CelebA(root, "valid") if crop is None else CelebA(root, "valid", crop=crop)
    box = CELEBA_CROPS[crop or "ddim"]
    _save_pattern(data.files[0], box)
    x = data.levels(0)
    leak = _red_leak(x)
    assert leak.max() <= 12, leak.max()  # no red from outside the box, on any edge (JPEG ringing is smaller)
    for (row, col), colour in [((16, 16), (0, 255, 0)), ((16, 48), (0, 0, 255)), ((48, 32), (255, 255, 255))]:
        assert (x[:, row, col].int() - torch.tensor(colour)).abs().max() <= 12, (row, col, x[:, row, col])
    _save_pattern(data.files[1], box, shift=1)  # a crop one pixel off would show the border
    shifted = _red_leak(data.levels(1))
    assert shifted[0].min() > 40 and shifted[:, 0].min() > 40 and shifted[-1, 1:].max() <= 12


def test_celeba_flips_only_when_training(tmp_path):
    root = fake_celeba(tmp_path, n=N_FAKE)
    train, valid = CelebA(root, "train"), CelebA(root, "valid")
    _save_pattern(train.files[3]), _save_pattern(valid.files[0])
    plain = to_model_range(train.levels(3))
    torch.manual_seed(SEED)
    draws = [train[3] for _ in range(40)]  # all alike with probability 2^-39
    assert all(torch.equal(d, plain) or torch.equal(d, plain.flip(-1)) for d in draws)
    assert any(torch.equal(d, plain) for d in draws) and any(torch.equal(d, plain.flip(-1)) for d in draws)
    assert all(torch.equal(valid[0], plain) for _ in range(40))
    assert not CelebA(root, "train", flip=False).flip and CelebA(root, "test", flip=True).flip


def test_celeba_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        CelebA(tmp_path)
    message = str(e.value)
    for expected in [str(tmp_path), "celeba/img_align_celeba", "list_eval_partition.txt",
                     "img_align_celeba/img_align_celeba", "list_eval_partition.csv", "download=True",
                     "jessicali9530/celeba-dataset"]:
        assert expected in message, expected
    root = fake_celeba(tmp_path / "fake", n=N_FAKE)
    data = CelebA(root, "test")
    data.files[1].unlink()
    with pytest.raises(ValueError, match=f"{data.files[1]} \\(missing\\)"):
        data[1]
    with pytest.raises(ValueError, match=f"1 of 3 CelebA test images cannot be read: {data.files[1]} \\(missing\\)"):
        CelebA(root, "test")
    data.files[0].unlink()
    with pytest.raises(FileNotFoundError, match=data.files[0].name):
        CelebA(root, "test")


def test_celeba_corrupt_or_wrong_images_name_the_path(tmp_path):
    root = fake_celeba(tmp_path, n=N_FAKE, layout="kaggle")
    data = CelebA(root, "train")
    data.files[2].write_bytes(b"not a jpeg at all")
    good = data.files[5].read_bytes()
    data.files[5].write_bytes(good[: len(good) // 2])  # truncated
    Image.new("RGB", (250, 250)).save(data.files[7])  # an in-the-wild image, not an aligned one
    for i, why in [(2, "not an image"), (5, "truncated or corrupt: image file is truncated"),
                   (7, "250x250, not 178x218")]:
        with pytest.raises(ValueError, match=f"{data.files[i]} \\({why}") as e:
            data[i]
        assert "\n" not in str(e.value) and "re-download img_align_celeba" in str(e.value)
        assert f"its line in {data.partition_file}" in str(e.value)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, [2]), num_workers=1)
    with pytest.raises(ValueError, match=str(data.files[2])):  # the path survives a worker process
        next(iter(loader))


def _damage(files) -> list:
    """Five unreadable images among the given files: two text files named .jpg, two JPEGs cut short, and a
    JPEG whose headers are zeroed but whose start and end markers are intact (only decoding finds it)."""
    good = files[0].read_bytes()
    files[2].write_text("not a jpeg at all")
    files[5].write_bytes(good[: len(good) // 2])
    files[9].write_bytes(good[:2] + bytes(len(good) - 4) + good[-2:])
    files[11].write_bytes(good[:-1])
    files[13].write_text("")
    return [files[i] for i in (2, 5, 9, 11, 13)]


@pytest.mark.parametrize("layout", ["torchvision", "kaggle"])
def test_unreadable_images_are_found_before_training(tmp_path, layout):
    """The cheap check when CelebA is built: all missing, empty, non-JPEG or truncated files of the split."""
    root = fake_celeba(tmp_path, n=N_FAKE, layout=layout, seed=SEED)
    text, half, zeroed, short, empty = _damage(CelebA(root, "train").files)
    with pytest.raises(ValueError) as e:
        CelebA(root, "train")
    message = str(e.value)
    assert "\n" not in message and message.startswith("4 of 24 CelebA train images cannot be read: ")
    assert (f"{text} (not a JPEG), {half} (truncated: no JPEG end marker), {short} (truncated: no JPEG end "
            f"marker) and 1 more. Replace them with good copies (re-download img_align_celeba), or delete "
            f"them and their lines in ") in message
    assert str(zeroed) not in message and str(empty) not in message  # the fourth problem is the empty file
    assert len(CelebA(root, "valid")) == 3  # the other splits are untouched
    data = CelebA(root, "train", verify=False)  # at the latest, the image itself is a one-line error
    for path in (text, half, zeroed, short, empty):
        with pytest.raises(ValueError, match=f"cannot use CelebA image {path} ") as e:
            data[data.files.index(path)]
        assert "\n" not in str(e.value)


def test_a_jpeg_one_byte_short_is_refused_even_where_pil_decodes_it(tmp_path):
    """Seed 23's stand-in JPEG still decodes without its last byte (about 1 seed in 30 does): the loader must
    agree with the check at build time and refuse it, or a seed-dependent image slips through."""
    root = fake_celeba(tmp_path, n=N_FAKE, seed=23)
    files = CelebA(root, "train").files
    files[3].write_bytes(files[0].read_bytes()[:-1])
    with Image.open(files[3]) as img:
        img.convert("RGB")  # PIL alone accepts it
    data = CelebA(root, "train", verify=False)
    with pytest.raises(ValueError, match=r"\(truncated: no JPEG end marker\)"):
        data[3]


@pytest.mark.parametrize("layout, workers", [("torchvision", 0), ("kaggle", 2)])
def test_cache_build_reports_every_unreadable_image_at_once(tmp_path, layout, workers):
    """Building the uint8 cache decodes every image once: it lists them all, then writes nothing."""
    root = fake_celeba(tmp_path / "data", n=N_FAKE, layout=layout, seed=SEED)
    text, half, zeroed, short, empty = _damage(CelebA(root, "train").files)
    out = tmp_path / "cache"
    with pytest.raises(ValueError) as e:
        preprocess_celeba(root, out, "train", workers=workers)
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        f"5 of 24 CelebA train images cannot be read: {text} (not an image), {half} (truncated or corrupt: "
        f"image file is truncated")
    assert f"{zeroed} (not an image) and 2 more. Replace them with good copies (re-download " in message
    assert message.endswith(f"; then run preprocess_celeba again (nothing was written to "
                            f"{out / 'celeba64_ddim_train.npy'})")
    assert list(out.iterdir()) == []


def test_celeba_bad_arguments(celeba_roots, tmp_path):
    with pytest.raises(ValueError, match="split"):
        CelebA(celeba_roots["torchvision"], "validation")
    with pytest.raises(ValueError, match="image_size must be an integer in 1..128 \\(crop 'ddim' is 128x128\\)"):
        CelebA(celeba_roots["torchvision"], image_size=129)
    assert CelebA(celeba_roots["torchvision"], "test", 140, crop="ncsnv2")[0].shape == (3, 140, 140)
    with pytest.raises(ValueError, match="1..140"):
        CelebA(celeba_roots["torchvision"], image_size=141, crop="ncsnv2")
    with pytest.raises(ValueError, match="crop must be 'ddim' .* or 'ncsnv2' .*, got 'centre'"):
        CelebA(celeba_roots["torchvision"], crop="centre")
    root = fake_celeba(tmp_path, n=N_FAKE)
    (root / "celeba" / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(ValueError, match="line 1"):
        CelebA(root)


# ----------------------------------------------------------------------------------------- the .npy cache

@pytest.mark.parametrize("workers", [0, 2])
def test_preprocess_round_trip_equals_on_the_fly(celeba_roots, tmp_path, workers):
    out = preprocess_celeba(celeba_roots["kaggle"], tmp_path / "sub", "train", workers=workers)
    assert out == tmp_path / "sub" / "celeba64_ddim_train.npy"
    array = np.load(out, mmap_mode="r")
    assert array.shape == (24, 3, 64, 64) and array.dtype == np.uint8
    cached, direct = ImageArray(out), CelebA(celeba_roots["kaggle"], "train", flip=False)
    assert len(cached) == len(direct) == 24
    assert all(torch.equal(cached[i], direct[i]) for i in range(24))
    assert list(tmp_path.glob("sub/*")) == [out]


def test_image_array_flips_and_get_dataset(celeba_roots, tmp_path):
    out = preprocess_celeba(celeba_roots["torchvision"], tmp_path / "valid_ddim.npy", "valid", workers=0)
    plain = ImageArray(out)[1]
    torch.manual_seed(SEED)
    flipping = get_dataset(str(out), "train")
    draws = [flipping[1] for _ in range(40)]
    assert any(torch.equal(d, plain) for d in draws) and any(torch.equal(d, plain.flip(-1)) for d in draws)
    assert all(torch.equal(get_dataset(str(out), "valid", image_size=64)[1], plain) for _ in range(10))
    with pytest.raises(ValueError, match="32x32"):
        get_dataset(str(out), image_size=32)
    np.save(tmp_path / "floats.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ImageArray(tmp_path / "floats.npy")
    with pytest.raises(FileNotFoundError, match="preprocess_celeba"):
        ImageArray(tmp_path / "absent.npy")


def test_cache_name_carries_the_crop(celeba_roots, tmp_path):
    """A folder gets celeba{S}_{crop}_{split}.npy; a file name must name its crop; arrays of two crops differ,
    and each equals its crop read on the fly."""
    root = celeba_roots["torchvision"]
    ddim = preprocess_celeba(root, tmp_path, "valid", workers=0)
    ncsn = preprocess_celeba(root, tmp_path, "valid", 32, crop="ncsnv2", workers=0)
    assert (ddim.name, ncsn.name) == ("celeba64_ddim_valid.npy", "celeba32_ncsnv2_valid.npy")
    for path, crop, size in [(ddim, "ddim", 64), (ncsn, "ncsnv2", 32)]:
        direct = CelebA(root, "valid", size, crop=crop)
        assert all(torch.equal(ImageArray(path)[i], direct[i]) for i in range(3))
    other = CelebA(root, "valid", 64, crop="ncsnv2")
    assert not any(torch.equal(ImageArray(ddim)[i], other[i]) for i in range(3))
    with pytest.raises(ValueError, match=f"e.g. {tmp_path / 'celeba64_ddim_valid.npy'} \\(or pass a folder\\)"):
        preprocess_celeba(root, tmp_path / "valid.npy", "valid", workers=0)
    with pytest.raises(ValueError, match="named after crop 'ncsnv2', but crop='ddim' was asked: pass crop='ncsnv2'"):
        get_dataset(str(ncsn), "valid", crop="ddim")
    assert len(get_dataset(str(ncsn), "valid", crop="ncsnv2")) == len(get_dataset(str(ncsn), "valid")) == 3


def test_preprocess_failure_leaves_no_partial_file(celeba_roots, tmp_path, monkeypatch):
    out = tmp_path / "train_ddim.npy"
    out.write_bytes(b"an older, complete file")
    original = CelebA._load

    def failing(self, i):
        if i == 17:
            assert len(list(tmp_path.glob("train_ddim.npy.*.partial"))) == 1  # the array is being written beside
            raise RuntimeError("disk on fire")
        return original(self, i)

    monkeypatch.setattr(CelebA, "_load", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        preprocess_celeba(celeba_roots["torchvision"], out, workers=0)
    assert out.read_bytes() == b"an older, complete file"
    assert list(tmp_path.iterdir()) == [out]
    out.unlink()
    with pytest.raises(RuntimeError, match="disk on fire"):
        preprocess_celeba(celeba_roots["torchvision"], out, workers=0)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- get_dataset

def test_get_dataset_digits_yields_tensors():
    data = get_dataset("digits")
    assert len(data) == 1438 and isinstance(data[0], torch.Tensor) and data[0].shape == (1, 8, 8)
    assert len(get_dataset("digits", "test")) == 359
    assert get_dataset("digits", image_size=16)[0].shape == (1, 16, 16)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=7)))
    assert batch.shape == (7, 1, 8, 8)


def test_get_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'cifar100'.*digits.*celeba.*cifar10"):
        get_dataset("cifar100")
    for name in ("celeba", "cifar10"):
        with pytest.raises(ValueError, match=f"get_dataset\\('{name}'\\) needs data_dir"):
            get_dataset(name)
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        get_dataset("celeba", data_dir=tmp_path)
    with pytest.raises(ValueError, match="split"):
        get_dataset("digits", "valid")
    with pytest.raises(ValueError, match="CIFAR-10 split must be one of \\('train', 'test'\\), got 'valid'"):
        get_dataset("cifar10", "valid", tmp_path)
    with pytest.raises(ValueError, match="32x32, not 64x64"):
        get_dataset("cifar10", "test", tmp_path, image_size=64)
    with pytest.raises(ValueError, match="crop must be one of \\('ddim', 'ncsnv2'\\), got 'center'"):
        get_dataset(str(tmp_path / "celeba64_ddim_train.npy"), crop="center")


# ----------------------------------------------------------------------------------------- CIFAR-10

def _cifar10_stand_in(root, rng) -> dict:
    """torchvision's CIFAR-10 layout with generated content: root/cifar-10-batches-py/ holds data_batch_1..5
    (4 images each) and test_batch (3), pickled dicts whose "data" is uint8 [N, 3072] (the red, green, then
    blue 32x32 planes, rows top to bottom) with "labels", and batches.meta with "label_names"."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name, n in [(f"data_batch_{k}", 4) for k in range(1, 6)] + [("test_batch", 3)]:
        batches[name] = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class {i}" for i in range(10)],
                                                        "num_cases_per_batch": 4, "num_vis": 3072}, protocol=2))
    return batches


@pytest.fixture
def offline(monkeypatch):
    """No network, as on this machine: every URL fails to resolve, so nothing can download in a test."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def stand_in_md5s(monkeypatch):
    """Point torchvision's table of CIFAR-10 MD5 sums (class attributes) at the stand-in's files, for this test
    only: the real sums cannot match generated files, and the check itself stays on."""
    tv = torchvision.datasets.CIFAR10

    def patch(folder):
        md5 = lambda path: hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setattr(tv, "train_list", [[name, md5(folder / name)] for name, _ in tv.train_list])
        monkeypatch.setattr(tv, "test_list", [[name, md5(folder / name)] for name, _ in tv.test_list])
        monkeypatch.setattr(tv, "meta", {**tv.meta, "md5": md5(folder / tv.meta["filename"])})
    return patch


def test_cifar10_reads_torchvisions_layout(tmp_path, gen, offline, stand_in_md5s):
    batches = _cifar10_stand_in(tmp_path, np.random.default_rng(torch.randint(2**31, (), generator=gen).item()))
    stand_in_md5s(tmp_path / "cifar-10-batches-py")
    for split, names in [("train", [f"data_batch_{k}" for k in range(1, 6)]), ("test", ["test_batch"])]:
        levels = torch.from_numpy(np.concatenate([batches[n]["data"] for n in names])).view(-1, 3, 32, 32)
        data = get_dataset("cifar10", split, tmp_path)
        assert isinstance(data, CIFAR10) and len(data) == len(levels) and data.flip == (split == "train")
        assert data.labels.tolist() == sum((batches[n]["labels"] for n in names), [])
        plain = CIFAR10(tmp_path, split, flip=False)
        x = torch.stack([plain[i] for i in range(len(plain))])
        assert x.dtype == torch.float32 and torch.equal(x, to_model_range(levels))
        check_on_grid(x)
    train = get_dataset("cifar10", "train", tmp_path, image_size=32)
    torch.manual_seed(SEED)
    draws = [train[3] for _ in range(40)]  # all alike with probability 2^-39
    plain = CIFAR10(tmp_path, "train", flip=False)[3]
    assert any(torch.equal(d, plain) for d in draws) and any(torch.equal(d, plain.flip(-1)) for d in draws)


def test_cifar10_offline_says_what_to_do(tmp_path, gen, offline, stand_in_md5s, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("cifar10", "test", tmp_path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"CIFAR-10 is not in {tmp_path} and could not be "
                                                      "downloaded (<urlopen error [Errno -2] Name or service")
    for expected in ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", f"put it in {tmp_path}",
                     f"{tmp_path / 'cifar-10-batches-py'}/ holds data_batch_1 ... data_batch_5, test_batch and "
                     "batches.meta", "--data-dir"]:
        assert expected in message, expected
    # as the message says, the archive put in data_dir is unpacked and read without network
    staging = tmp_path / "elsewhere"
    _cifar10_stand_in(staging, np.random.default_rng(torch.randint(2**31, (), generator=gen).item()))
    stand_in_md5s(staging / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    shutil.rmtree(staging)
    with monkeypatch.context() as m:
        m.setattr(torchvision.datasets.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
        assert len(get_dataset("cifar10", "test", tmp_path)) == 3
    # an altered file fails torchvision's MD5 check, and the message says so
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"altered")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'cifar-10-batches-py'} fails torchvision's MD5 "
                                                "check \\(incomplete or altered\\) and could not be downloaded"):
        get_dataset("cifar10", "train", tmp_path)


def test_labelled_data_sets_yield_image_label_pairs_and_the_others_refuse(tmp_path, gen, offline, stand_in_md5s):
    """labels=True (class-conditional training): digits and CIFAR-10 give (image, class) pairs, the images those
    of labels=False and the classes the data's own; CelebA and a .npy array have none, a one-line error."""
    images, labels = ddpm.digits(return_labels=True)
    data = get_dataset("digits", labels=True)
    x, y = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))
    assert torch.equal(x, images) and torch.equal(y, labels) and y.dtype == torch.long
    batches = _cifar10_stand_in(tmp_path, np.random.default_rng(torch.randint(2**31, (), generator=gen).item()))
    stand_in_md5s(tmp_path / "cifar-10-batches-py")
    cifar = get_dataset("cifar10", "test", tmp_path, labels=True)
    cifar.flip = False
    x, y = next(iter(torch.utils.data.DataLoader(cifar, batch_size=3)))
    assert torch.equal(x, torch.stack([CIFAR10(tmp_path, "test", flip=False)[i] for i in range(3)]))
    assert y.tolist() == batches["test_batch"]["labels"]
    for name in ("celeba", str(tmp_path / "faces.npy")):
        with pytest.raises(ValueError, match=r"^class-conditional training needs labelled data \(digits or "
                                             r"cifar10\); '.*' has no labels$"):
            get_dataset(name, data_dir=tmp_path, labels=True)
