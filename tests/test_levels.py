"""The sample-grid writer: small images scaled up by nearest neighbour, uint8 levels and floats in [-1, 1] alike."""

import numpy as np
import torch
from PIL import Image

from ddpm.levels import save_grid, to_model_range


def test_a_grid_of_small_images_is_scaled_up_and_uint8_and_floats_give_the_same_png(tmp_path, gen):
    k = torch.randint(0, 256, (5, 3, 8, 8), generator=gen, dtype=torch.uint8)
    save_grid(k, tmp_path / "uint8.png")
    save_grid(to_model_range(k), tmp_path / "deep" / "float.png")  # folders are made as needed
    assert (tmp_path / "uint8.png").read_bytes() == (tmp_path / "deep" / "float.png").read_bytes()
    grid = np.asarray(Image.open(tmp_path / "uint8.png"))
    assert grid.shape == (2 + 2 * (64 + 2), 2 + 3 * (64 + 2), 3)  # ceil(sqrt(5)) = 3 a row, 8 px scaled 8 times
    second = grid[2:66, 68:132]  # the second image of the first row, behind torchvision's 2 px padding
    expected = k[1].repeat_interleave(8, -1).repeat_interleave(8, -2).permute(1, 2, 0).numpy()
    assert np.array_equal(second, expected)


def test_a_grid_of_64_pixel_images_keeps_their_size_and_a_gray_image_turns_rgb(tmp_path):
    save_grid(torch.zeros(4, 1, 64, 64) + 1.0, tmp_path / "g.png")  # 1.0 is level 255
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (2 + 2 * 66, 2 + 2 * 66, 3) and (grid[2:66, 2:66] == 255).all()
    save_grid(torch.zeros(1, 1, 48, 48, dtype=torch.uint8), tmp_path / "48.png")  # scaled 2 times, to 96
    assert Image.open(tmp_path / "48.png").size == (96, 96)  # one image: no frame
