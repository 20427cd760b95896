"""The noise-prediction network ε_θ(x_t, t) of Ho et al. 2020 (Appendix B): a PixelCNN++-style U-Net.

Read top to bottom: the sinusoidal timestep embedding, a residual block that adds the embedding,
single-head self-attention, the two resampling layers, and the U-Net that stacks them. The design
follows the original TensorFlow model (hojonathanho/diffusion): GroupNorm (32 groups), swish,
convolutional resampling, ``num_res_blocks`` blocks per level on the way down and one more on the way
up (each eating one skip connection), and zero-initialised last layers so that every residual branch,
and the whole network, starts at zero. Beyond the paper, ``num_classes`` adds a class label's vector to the
time embedding, for classifier-free guidance (:mod:`ddpm.guidance`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def frequencies(half: int, device=None) -> Tensor:
    """The embedding's angular frequencies ω_i = 10000^(-i/(half-1)), i = 0, …, half − 1, in float32."""
    return torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, device=device, dtype=torch.float32))


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """The Transformer's sinusoidal position embedding (Vaswani et al. 2017, §3.5) of the timesteps t.

    Row b is [sin(t_b ω_0), …, sin(t_b ω_(d/2-1)), cos(t_b ω_0), …] with ω_i = 10000^(-i/(d/2-1)), as in
    the original DDPM code. t is embedded as given (the paper's t ∈ {1, …, T}), in float32.
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"the timestep embedding dimension must be even and at least 4, got {dim}")
    angles = t.to(torch.float32)[:, None] * frequencies(dim // 2, t.device)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def group_norm(groups: int, channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018), the original's normalisation everywhere, there with 32 groups."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions, added back residually (starts as the identity)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm = group_norm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)  # q, k and v as one 1x1 convolution (same parameters)
        self.proj = nn.Conv2d(channels, channels, 1)     # zero-initialised by UNet

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        # [B, HW, 3C]: free under channels_last; otherwise a copy, which lets SDPA use its fused kernels
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
        q, k, v = qkv.reshape(B, 1, H * W, 3, C).unbind(3)                  # each [B, 1 head, HW, C]
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # the CPU's fused bf16 kernel is slow on short sequences: the tiny U-Net's bf16 training step is
            # 1.15x faster with attention in float32 (benchmarks/RESULTS.md)
            with torch.autocast("cpu", enabled=False):
                h = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            h = F.scaled_dot_product_attention(q, k, v)                     # softmax(q kᵀ / √C) v
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class ResBlock(nn.Module):
    """GroupNorm → swish → conv3x3 → + dense(emb) → GroupNorm → swish → dropout → conv3x3, plus a
    shortcut; followed by attention where ``attn`` (the resolutions in ``attn_resolutions``)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, attn: bool = False,
                 conv_shortcut: bool = False, groups: int = 32):
        super().__init__()
        self.norm1, self.conv1 = group_norm(groups, in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_ch, out_ch)  # the time enters as a per-channel shift, before norm2
        self.norm2, self.dropout = group_norm(groups, out_ch), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)  # zero-initialised by UNet
        if in_ch == out_ch:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 3 if conv_shortcut else 1, padding=1 if conv_shortcut else 0)
        self.attn = Attention(out_ch, groups) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attn(self.shortcut(x) + h)


PADDINGS = ("symmetric", "tf_same")


class Downsample(nn.Module):
    """Halve the resolution with a 3x3 convolution of stride 2. ``padding="symmetric"`` pads one pixel on every
    side; ``"tf_same"`` pads only the bottom and right, as TensorFlow's 'SAME' does for even sizes and so the
    original network (and its released weights): the same parameters on a grid one input pixel apart."""

    def __init__(self, channels: int, padding: str = "symmetric"):
        super().__init__()
        self.pad = (0, 1, 0, 1) if padding == "tf_same" else None
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.pad else 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad) if self.pad else x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour ×2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε_θ(x_t, t): images [B, C, S, S] and timesteps t ∈ {1, …, T} of shape [B] to noise [B, C, S, S]; built with
    ``num_classes=K``, ε_θ(x_t, t, y) with class labels y, for classifier-free guidance (see :meth:`forward`).

    ``UNet.from_pretrained(name_or_path)`` loads the paper's released weights, and ``model.save_pretrained(folder)``
    writes a network, released or trained here, in the same layout (see :mod:`ddpm.pretrained`).
    """

    # Every preset is the original's exact network: stride-2 convolutions padded as TensorFlow's 'SAME'
    # ("tf_same") and fed t - 1 (t_offset=1), as the released checkpoints were, so that a network trained
    # here computes what diffusers computes from the same weights (ddpm.pretrained). Checkpoints written
    # before 2026-12-04 hold symmetric, t_offset=0 networks; ddpm.checkpoint rebuilds them as they were.
    ORIGINAL = dict(downsample_padding="tf_same", t_offset=1)
    PRESETS = {
        # Ho et al. 2020, CIFAR-10: 35.7M parameters.
        "cifar10": dict(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                        attn_resolutions=(16,), dropout=0.1),
        # Song et al. 2021 (DDIM), CelebA 64x64.
        "celeba64": dict(in_channels=3, image_size=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2,
                         attn_resolutions=(16,), dropout=0.1),
        # Ho et al. 2020, CelebA-HQ / LSUN 256x256: 114M parameters.
        "celebahq256": dict(in_channels=3, image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                            attn_resolutions=(16,), dropout=0.0),
        # A CPU-sized model for 8x8 to 32x32 grey images (scikit-learn digits); attention sits at the lowest
        # resolution, image_size // 2, wherever image_size is set. 8 groups keep the paper's 4 channels per group:
        # with one channel per group, GroupNorm would erase the time shift (a per-channel constant).
        "tiny": dict(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                     attn_resolutions=(4,), dropout=0.1, num_groups=8),
    }

    @classmethod
    def preset(cls, name: str, **overrides) -> "UNet":
        """A named configuration from ``UNet.PRESETS``, with any constructor argument overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        config = {**cls.ORIGINAL, **cls.PRESETS[name], **overrides}
        if name == "tiny" and "attn_resolutions" not in overrides:
            config["attn_resolutions"] = (config["image_size"] // 2 ** (len(config["ch_mult"]) - 1),)
        return cls(**config)

    @classmethod
    def from_pretrained(cls, name_or_path, device="cpu") -> "UNet":
        """A released checkpoint in diffusers' layout (a Hub name such as ``google/ddpm-cifar10-32``, which
        needs the ``hub`` extra, or a local folder), in eval mode on ``device``, called with the paper's
        t ∈ {1, …, T}. Its noise schedule (on ``device``), variance ("fixedlarge" or "fixedsmall") and what it
        outputs ("eps", "x0" or "v", the scheduler's prediction_type) are ``.schedule``, ``.variance`` and
        ``.parameterization``; ``ddpm.load`` gives its ε-model whatever it outputs."""
        from .pretrained import from_diffusers, locate, read

        checkpoint = read(locate(name_or_path))
        model = cls(**checkpoint.config)
        model.load_state_dict(from_diffusers(model, checkpoint.weights), strict=True)
        model.schedule, model.variance = checkpoint.schedule.to(device), checkpoint.variance
        model.parameterization = checkpoint.parameterization
        return model.to(device).eval()

    def save_pretrained(self, folder, schedule=None, variance: str | None = None,
                        safe_serialization: bool = True, *, parameterization: str | None = None):
        """Write this network as a diffusers pipeline folder that ``UNet.from_pretrained`` and diffusers'
        ``DDPMPipeline`` read (see :func:`ddpm.pretrained.save_pretrained`), with ``schedule``, ``variance``
        ("fixedlarge" or "fixedsmall") and ``parameterization`` (what it outputs: "eps", "x0" or "v"); by default
        the ones ``from_pretrained`` set ("eps" where none was set). Returns the folder."""
        from .pretrained import save_pretrained

        schedule = self.schedule if schedule is None else schedule
        variance = self.variance if variance is None else variance
        if schedule is None or variance is None:
            raise ValueError("this UNet has no .schedule and .variance of its own (UNet.from_pretrained sets them): "
                             "pass schedule= (a NoiseSchedule) and variance= ('fixedlarge' or 'fixedsmall')")
        return save_pretrained(self, folder, schedule, variance, safe_serialization,
                               parameterization=parameterization or self.parameterization or "eps")

    def __init__(self, in_channels: int = 3, ch: int = 128, ch_mult=(1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions=(16,), dropout: float = 0.1, image_size: int = 32, out_channels: int | None = None,
                 conv_shortcut: bool = False, num_groups: int = 32, downsample_padding: str = "symmetric",
                 t_offset: int = 0, num_classes: int | None = None):
        """``downsample_padding``: see :class:`Downsample`. ``t_offset``: the network embeds t − t_offset; 1 for
        the presets and the released checkpoints, trained on t ∈ {0, …, T−1}, 0 for networks trained here
        before 2026-12-04 (callers pass the paper's t ∈ {1, …, T} either way). ``num_classes``: K makes the
        network class-conditional (Ho & Salimans 2022): labels 0, …, K − 1, and K for the null class, "no label"."""
        super().__init__()
        levels = len(ch_mult)
        resolutions = [image_size // 2**i for i in range(levels)]
        if ch % num_groups:
            raise ValueError(f"ch={ch} must be a multiple of num_groups={num_groups} for GroupNorm; "
                             f"use ch={num_groups * max(1, round(ch / num_groups))} or fewer groups")
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size={image_size} cannot be halved {levels - 1} times (ch_mult has {levels} "
                             f"levels); use an image_size divisible by {2 ** (levels - 1)} or fewer levels")
        if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer (or None, no classes), got {num_classes!r}")
        if downsample_padding not in PADDINGS:
            raise ValueError(f"downsample_padding must be one of {PADDINGS}, got {downsample_padding!r}")
        if not set(attn_resolutions) <= set(resolutions):
            raise ValueError(f"attn_resolutions={tuple(attn_resolutions)} must be among the resolutions this "
                             f"network visits, {resolutions}")
        # UNet(**self.config) rebuilds this architecture (for checkpoints).
        self.config = dict(in_channels=in_channels, ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                           attn_resolutions=tuple(attn_resolutions), dropout=dropout, image_size=image_size,
                           out_channels=out_channels, conv_shortcut=conv_shortcut, num_groups=num_groups,
                           downsample_padding=downsample_padding, t_offset=t_offset, num_classes=num_classes)
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.image_size, self.ch, self.ch_mult = image_size, ch, tuple(ch_mult)
        self.num_res_blocks, self.attn_resolutions = num_res_blocks, tuple(attn_resolutions)
        self.num_groups, self.t_offset, self.num_classes = num_groups, t_offset, num_classes
        # the NoiseSchedule, variance and parameterization trained with, where known (UNet.from_pretrained)
        self.schedule, self.variance, self.parameterization = None, None, None

        # t ↦ sinusoid(t) ∈ R^ch → dense 4ch → swish → dense 4ch → swish; each ResBlock projects it.
        self.emb = nn.Sequential(nn.Linear(ch, 4 * ch), nn.SiLU(), nn.Linear(4 * ch, 4 * ch), nn.SiLU())
        # The label's vector (row K: the null class) is added before the last swish, where diffusers'
        # UNet2DModel(num_class_embeds=K + 1) adds its class_embedding, so exported weights compute the same.
        self.label_emb = None if num_classes is None else nn.Embedding(num_classes + 1, 4 * ch)

        def block(c_in, c_out, attn):
            return ResBlock(c_in, c_out, 4 * ch, dropout, attn, conv_shortcut, num_groups)

        # Down: num_res_blocks blocks per level, then halve; every output is kept as a skip connection.
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [ch], ch
        for level, res in enumerate(resolutions):
            for _ in range(num_res_blocks):
                self.down.append(block(c, ch * ch_mult[level], res in self.attn_resolutions))
                c = ch * ch_mult[level]
                skips.append(c)
            if level < levels - 1:
                self.down.append(Downsample(c, downsample_padding))
                skips.append(c)

        # Middle: ResBlock, attention, ResBlock at the lowest resolution.
        self.mid = nn.ModuleList([block(c, c, False), Attention(c, num_groups), block(c, c, False)])

        # Up: num_res_blocks + 1 blocks per level, each concatenating one skip connection, then double.
        self.up = nn.ModuleList()
        for level, res in reversed(list(enumerate(resolutions))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(c + skips.pop(), ch * ch_mult[level], res in self.attn_resolutions))
                c = ch * ch_mult[level]
            if level > 0:
                self.up.append(Upsample(c))

        self.norm_out, self.conv_out = group_norm(num_groups, c), nn.Conv2d(c, self.out_channels, 3, padding=1)
        self._initialise()

    def _initialise(self):
        """The original's initialisation: Xavier-uniform weights, zero biases, and zero for each residual
        branch's last layer and the output convolution, so that a fresh network returns exactly 0. The fused
        q, k, v convolution is initialised a third at a time, as the original's three C x C layers were
        (Xavier on the whole 3C x C weight would give them 0.707x that std). The class embedding, which the
        original lacks, keeps nn.Embedding's N(0, 1), as diffusers' UNet2DModel initialises its class_embedding."""
        fused = {id(m.qkv) for m in self.modules() if isinstance(m, Attention)}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                for w in m.weight.detach().chunk(3 if id(m) in fused else 1):
                    nn.init.xavier_uniform_(w)
                nn.init.zeros_(m.bias)
        zero = [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
        zero += [m.proj for m in self.modules() if isinstance(m, Attention)] + [self.conv_out]
        for m in zero:
            nn.init.zeros_(m.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_input(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> None:
        """Raise a ValueError that says what was expected when x, t or y do not fit this network."""
        want = f"{self.in_channels}x{self.image_size}x{self.image_size}"
        if x.dim() != 4:
            raise ValueError(f"UNet expects images of shape [B, {want.replace('x', ', ')}], got shape {tuple(x.shape)}")
        got = "x".join(str(n) for n in x.shape[1:])
        if got != want:
            raise ValueError(f"UNet built for {want} images got {got}; build it with in_channels={x.shape[1]}, "
                             f"image_size={x.shape[-1]} (e.g. UNet.preset(name, image_size={x.shape[-1]})) or resize")
        if not isinstance(t, Tensor) or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"UNet expects timesteps t as a tensor of shape [{x.shape[0]}] (one per image), "
                             f"got {shape}; use torch.full(({x.shape[0]},), t) for a single timestep")
        if y is not None:
            self.check_labels(y, x.shape[0])

    def check_labels(self, y: Tensor, batch: int) -> None:
        """Raise a ValueError unless y is [batch] integer labels in {0, …, K}. The range check reads y on the host
        (a sync on a GPU), and is left out while torch.compile traces (torch >= 2.3 says when it does)."""
        K = self.num_classes
        if K is None:
            raise ValueError("this UNet has no classes (num_classes=None); call model(x, t) or build it with "
                             "num_classes=K")
        if not isinstance(y, Tensor) or y.shape != (batch,):
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"UNet expects labels y as a tensor of shape [{batch}] (one per image), got {shape}; "
                             f"use torch.full(({batch},), label) for one class")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"labels y must be integers, got {y.dtype}; pass a long tensor (y.long())")
        if not getattr(torch.compiler, "is_compiling", lambda: False)() and bool(((y < 0) | (y > K)).any()):
            bad = y[(y < 0) | (y > K)].unique().tolist()
            raise ValueError(f"labels y must lie in 0..{K - 1}, or {K} for the null class (no label); got {bad[:5]}")

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """ε̂ = ε_θ(x_t, t), or ε_θ(x_t, t, y) for a class-conditional network, of x's shape (or out_channels
        channels). ``y``: None is the null class for every image; else a long tensor [B] of labels in
        {0, …, K − 1}, where K, the null class, marks an image as unconditional, so that one batch mixes both
        (as label dropout in training and classifier-free guidance do).

        The output layer runs in the weights' precision (float32) even under autocast: a posterior mean μ̃ or
        an x_0 output carries its signal in digits that bf16's 8 bits would round away (μ̃'s x_0 part, c₁ x_0,
        falls below bf16's resolution of |μ̃| ≈ 1 from t ≈ 436 on).
        """
        self.check_input(x, t, y)
        sinusoid = timestep_embedding(t - self.t_offset, self.ch).to(self.emb[0].weight.dtype)
        if self.label_emb is None:
            emb = self.emb(sinusoid)   # one call of the module, which forward hooks see (chapter 6's diagram)
        else:
            y = torch.full((len(x),), self.num_classes, device=x.device) if y is None else y.long()
            emb = self.emb[3](self.emb[:3](sinusoid) + self.label_emb(y))
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for layer in self.up:
            h = layer(h, emb) if isinstance(layer, Upsample) else layer(torch.cat([h, hs.pop()], dim=1), emb)
        if not torch.amp.is_autocast_available(x.device.type):   # the meta device of a FLOP count
            return self.conv_out(F.silu(self.norm_out(h)))
        with torch.autocast(x.device.type, enabled=False):
            h = h.to(self.conv_out.weight.dtype)
            return self.conv_out(F.silu(self.norm_out(h)))
