"""The paper's released checkpoints in diffusers' ``UNet2DModel`` layout: read them into ``ddpm.UNet``, and write a
``ddpm.UNet`` that diffusers reads.

The authors' TensorFlow weights (Ho et al. 2020) were converted to PyTorch by diffusers and published on the
Hugging Face Hub: ``google/ddpm-cifar10-32``, ``google/ddpm-celebahq-256`` and the LSUN church, bedroom and cat
models ``google/ddpm-{church,bedroom,cat}-256``, each 256x256 one with an ``-ema-`` twin
(``google/ddpm-ema-celebahq-256``). A checkpoint is a folder in one of the two layouts diffusers reads::

    pipeline:  model_index.json, unet/config.json, unet/diffusion_pytorch_model.safetensors (or .bin),
               scheduler/scheduler_config.json
    flat:      config.json, diffusion_pytorch_model.safetensors (or .bin) and scheduler_config.json side by side
               (google/ddpm-cat-256 today; what UNet2DModel's and DDPMScheduler's save_pretrained write to one folder)

A bare ``unet/`` folder takes its sibling ``scheduler/``; with no scheduler config at all, the schedule is
DDPMScheduler's default, the paper's. The Hub repositories' root files from 2022 are diffusers' first format:
their ``GaussianDDPMScheduler`` config is read, their ``UNetModel`` config.json is refused. The scheduler's
``prediction_type`` says what the network outputs: "epsilon" (ε, the paper's), "sample" (x_0) or "v_prediction"
(v), ddpm's parameterizations "eps", "x0" and "v"; a network that outputs the posterior mean μ̃ ("mu") has no
counterpart there and is not written.

The same network is ``ddpm.UNet`` with two settings kept in its config: the original's stride-2 convolutions
pad only the bottom and right (``downsample_padding="tf_same"``), and the original was fed t − 1
(``t_offset=1``), so that callers keep the paper's t ∈ {1, …, T}. ``UNet.from_pretrained`` reads a folder and
``UNet.save_pretrained`` writes the pipeline layout. A class-conditional network (``UNet(num_classes=K)``) is a
UNet2DModel with ``num_class_embeds = K + 1``, label K being the null class of classifier-free guidance; diffusers
wants ``class_labels`` at every call (K for unconditional ones), which DDPMPipeline does not pass, so call its
UNet2DModel directly. A network fed t itself (``t_offset=0``) is written exactly
too: its sinusoid obeys e(t) = R e(t − 1), R a rotation by ω_i of each (sin, cos) pair, so its first time layer
W becomes W R. This module holds the file layouts, the Hub download, the config translations and the key map.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .parameterization import check_parameterization
from .schedule import VARIANCES, NoiseSchedule, check_variance
from .unet import frequencies

INDEX, UNET_CONFIG, SCHEDULER_CONFIG = "model_index.json", "config.json", "scheduler_config.json"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# UNet2DModel's arguments and defaults (diffusers 0.42, checked by the tests): what a config.json lacks is
# these. ORIGINAL holds the values that describe the DDPM network; a config that differs is refused.
DIFFUSERS_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    mid_block_type="UNetMidBlock2D", up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None)
ORIGINAL = dict(center_input_sample=False, time_embedding_type="positional", freq_shift=1, flip_sin_to_cos=False,
                mid_block_type="UNetMidBlock2D", mid_block_scale_factor=1, downsample_type="conv",
                upsample_type="conv", act_fn="silu", attention_head_dim=None, attn_norm_num_groups=None,
                norm_eps=1e-6, resnet_time_scale_shift="default", add_attention=True, class_embed_type=None)
# DDPMScheduler's arguments and defaults. PAPER holds the sampler settings of the original (x̂0 clipped to
# [-1, 1], no thresholding, the β as given); timestep_spacing and steps_offset only pick fewer steps than T.
SCHEDULER_DEFAULTS = dict(
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", trained_betas=None,
    variance_type="fixed_small", clip_sample=True, prediction_type="epsilon", thresholding=False,
    dynamic_thresholding_ratio=0.995, clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
    steps_offset=0, rescale_betas_zero_snr=False)
PAPER = dict(clip_sample=True, clip_sample_range=1.0, thresholding=False, rescale_betas_zero_snr=False)
GAUSSIAN_DDPM = {"timesteps": "num_train_timesteps", "clip_predicted_image": "clip_sample"}  # 2022 names
DIFFUSERS_VARIANCE = {v: v.replace("fixed", "fixed_") for v in VARIANCES}  # diffusers' names: fixed_large, …
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # parameterization → prediction_type

HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
OLD_ATTENTION = re.compile(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.")
NEW_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class Checkpoint:
    """What a folder holds: ``UNet(**config)``'s arguments, the weights under diffusers' names, and the noise
    schedule, variance ("fixedlarge": σ² = β, "fixedsmall": σ² = β̃) and parameterization ("eps", "x0" or "v")
    its scheduler config names."""
    config: dict
    weights: dict
    schedule: NoiseSchedule
    variance: str
    parameterization: str


# -- where the files are -------------------------------------------------------------------------------------

def locate(name_or_path) -> Path:
    """The local folder of a checkpoint: a folder as given, or a Hub name (``owner/name``) downloaded once."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not HUB_NAME.fullmatch(str(name_or_path)):
        raise FileNotFoundError(f"{name_or_path} is neither a checkpoint folder nor a Hub name like "
                                "google/ddpm-cifar10-32; pass the folder that holds unet/config.json")
    return download(str(name_or_path))


def download(name: str) -> Path:
    """Fetch the config, weights and scheduler files of Hub repository ``name`` (the ``hub`` extra)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ImportError(f"downloading {name} needs huggingface_hub and safetensors: pip install huggingface_hub "
                          "safetensors (or pass the path of a downloaded folder)") from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    patterns = [INDEX, f"*{UNET_CONFIG}", f"*{SCHEDULER_CONFIG}"]
    try:
        for weights in WEIGHTS:  # the .bin only where a repository has no .safetensors
            folder = Path(snapshot_download(name, allow_patterns=patterns + [f"*{weights}"],
                                            local_files_only=offline))
            if any(folder.rglob(weights)):
                return folder
    except LocalEntryNotFoundError:
        raise ConnectionError(
            f"cannot download {name}: no network{' (HF_HUB_OFFLINE is set)' if offline else ''} and no copy in "
            f"the Hugging Face cache; on a machine with network run `hf download {name} --local-dir DIR`, "
            "copy DIR here and pass its path instead of the name") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no Hub repository {name}; released DDPM models are e.g. google/ddpm-cifar10-32 "
                                "and google/ddpm-ema-celebahq-256") from None
    raise FileNotFoundError(f"the Hub repository {name} has no diffusion_pytorch_model weights")


# -- reading ---------------------------------------------------------------------------------------------------

def read(folder) -> Checkpoint:
    """A pipeline folder, a flat folder or a bare ``unet/`` folder (see the module's docstring)."""
    folder = Path(folder)
    unet = folder / "unet" if (folder / "unet" / UNET_CONFIG).is_file() else folder
    if not (unet / UNET_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} holds no unet/{UNET_CONFIG} or {UNET_CONFIG}: pass a diffusers "
                                "pipeline folder (model_index.json, unet/, scheduler/), its unet/ folder, or a "
                                f"folder with {UNET_CONFIG}, the weights and {SCHEDULER_CONFIG} side by side")
    scheduler = [p / SCHEDULER_CONFIG for p in (folder / "scheduler", unet, unet.parent / "scheduler")
                 if (p / SCHEDULER_CONFIG).is_file()]
    config, settings = unet_config(_read_json(unet / UNET_CONFIG)), _read_json(scheduler[0]) if scheduler else {}
    return Checkpoint(config, read_weights(unet), *noise_schedule(settings), parameterization(settings))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def read_weights(unet: Path) -> dict:
    """The state dict in ``unet/``: safetensors if present, else the .bin, read with ``weights_only=True``."""
    safe, pickled = (unet / w for w in WEIGHTS)
    if safe.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"reading {safe} needs safetensors: pip install safetensors") from None
        return load_file(safe)
    if pickled.is_file():
        return torch.load(pickled, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{unet} holds neither {WEIGHTS[0]} nor {WEIGHTS[1]}")


def unet_config(diffusers_config: dict) -> dict:
    """``UNet(**…)``'s arguments for a UNet2DModel config.json; ValueError if it is not the paper's network."""
    kind = diffusers_config.get("_class_name", "UNet2DModel")
    if kind == "UNetModel":
        raise ValueError("this config.json is diffusers' 2022 UNetModel format (the root files of the Hub's first "
                         "google/ddpm-* revisions), which ddpm does not read: pass the folder's unet/ subfolder "
                         "or a newer revision of the repository")
    if kind != "UNet2DModel":
        raise ValueError(f"this config.json describes a {kind}: ddpm.UNet reads UNet2DModel configs")
    given = {k: v for k, v in diffusers_config.items() if not k.startswith("_")}
    unknown = sorted(set(given) - set(DIFFUSERS_DEFAULTS))
    if unknown:
        raise ValueError(f"config.json has keys UNet2DModel does not take, {unknown}: ddpm.UNet cannot tell what "
                         "network they describe")
    c = {**DIFFUSERS_DEFAULTS, **given}
    c["block_out_channels"] = tuple(c["block_out_channels"])
    other = {k: c[k] for k, v in ORIGINAL.items() if c[k] != v}
    if other:
        raise ValueError(f"this UNet2DModel differs from the DDPM network in {other} (DDPM's values: "
                         f"{ {k: ORIGINAL[k] for k in other} }); ddpm.UNet cannot load it")
    classes = c["num_class_embeds"]
    if classes is not None and not (isinstance(classes, int) and classes >= 2):
        raise ValueError(f"num_class_embeds={classes!r}: ddpm.UNet reads None (no classes) or K + 1 >= 2 class "
                         "embeddings, the last one the null class")
    ch, size = c["block_out_channels"][0], c["sample_size"]
    if c["time_embedding_dim"] not in (None, 4 * ch):
        raise ValueError(f"time_embedding_dim={c['time_embedding_dim']}: the DDPM network's time embedding has "
                         f"4 x block_out_channels[0] = {4 * ch} features; ddpm.UNet cannot load it")
    down, up = c["down_block_types"], c["up_block_types"]
    attn = [block == "AttnDownBlock2D" for block in down]
    if (set(down) - {"DownBlock2D", "AttnDownBlock2D"} or len({len(up), len(down), len(c["block_out_channels"])}) > 1
            or list(up) != ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]):
        raise ValueError(f"block types {down} / {up}: ddpm.UNet has one (Attn)DownBlock2D level per "
                         "block_out_channels entry, mirrored by (Attn)UpBlock2D levels")
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if any(width % ch for width in c["block_out_channels"]) or not isinstance(size, int) \
            or c["downsample_padding"] not in (0, 1):
        raise ValueError(f"block_out_channels={c['block_out_channels']} must be multiples of the first, "
                         f"sample_size={c['sample_size']} a square side and downsample_padding="
                         f"{c['downsample_padding']} 0 or 1")
    return dict(in_channels=c["in_channels"], ch=ch, ch_mult=tuple(w // ch for w in c["block_out_channels"]),
                num_res_blocks=c["layers_per_block"],
                attn_resolutions=tuple(size // 2**i for i, a in enumerate(attn) if a), dropout=c["dropout"],
                image_size=size, out_channels=c["out_channels"], conv_shortcut=False,
                num_groups=c["norm_num_groups"],
                downsample_padding="tf_same" if c["downsample_padding"] == 0 else "symmetric", t_offset=1,
                num_classes=None if classes is None else classes - 1)  # the last class embedding: the null class


def scheduler_settings(scheduler_config: dict) -> dict:
    """A DDPMScheduler config with its defaults for absent keys (a 2022 GaussianDDPMScheduler one renamed);
    ValueError for keys DDPMScheduler does not take."""
    given = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    if scheduler_config.get("_class_name") == "GaussianDDPMScheduler":
        given = {GAUSSIAN_DDPM.get(k, k): v for k, v in given.items()}
    given.pop("tensor_format", None)  # diffusers 0.1-0.3: the array library the scheduler returned
    unknown = sorted(set(given) - set(SCHEDULER_DEFAULTS))
    if unknown:
        raise ValueError(f"scheduler_config.json has keys DDPMScheduler does not take, {unknown}: ddpm cannot tell "
                         "what schedule they describe")
    return {**SCHEDULER_DEFAULTS, **given}


def parameterization(scheduler_config: dict) -> str:
    """What the network outputs ("eps", "x0" or "v"), from a scheduler config's ``prediction_type``."""
    prediction_type = scheduler_settings(scheduler_config)["prediction_type"]
    ours = {d: p for p, d in PREDICTION_TYPES.items()}.get(prediction_type)
    if ours is None:
        raise ValueError(f"prediction_type={prediction_type!r}: ddpm reads networks that predict the noise "
                         f"('epsilon'), x_0 ('sample') or v ('v_prediction')")
    return ours


def noise_schedule(scheduler_config: dict) -> tuple[NoiseSchedule, str]:
    """(NoiseSchedule, variance name) from a DDPMScheduler config (its defaults for absent keys) or a 2022
    GaussianDDPMScheduler one; ValueError for settings that change the paper's schedule or sampler."""
    c = scheduler_settings(scheduler_config)
    T, kind = c["num_train_timesteps"], c["beta_schedule"]
    variance = {d: ours for ours, d in DIFFUSERS_VARIANCE.items()}.get(str(c["variance_type"]).removesuffix("_log"))
    if variance is None:
        raise ValueError(f"variance_type={c['variance_type']!r}: ddpm samples with a fixed variance, "
                         f"{sorted(DIFFUSERS_VARIANCE.values())}, not a learned one")
    changed = {k: c[k] for k, v in PAPER.items() if c[k] != v}
    if changed:
        raise ValueError(f"scheduler settings {changed} change the paper's schedule or sampler, which ddpm keeps "
                         f"({ {k: PAPER[k] for k in changed} }); ddpm cannot sample this model as its scheduler does")
    if c["trained_betas"] is not None:
        schedule = NoiseSchedule(c["trained_betas"])
    elif kind == "linear":
        schedule = NoiseSchedule.linear(T, c["beta_start"], c["beta_end"])
    elif kind == "squaredcos_cap_v2":
        schedule = NoiseSchedule.cosine(T)
    else:
        raise ValueError(f"beta_schedule={kind!r}: ddpm reads 'linear', 'squaredcos_cap_v2' or trained_betas")
    return schedule, variance


# -- the key map ---------------------------------------------------------------------------------------------

RESBLOCK = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
            "shortcut": "conv_shortcut"}
TIME_LAYER = "time_embedding.linear_1.weight"


def module_names(model) -> dict[str, str]:
    """Each ddpm.UNet module's name → its UNet2DModel name (an attention's fused ``qkv`` → the prefix of
    ``to_q``, ``to_k`` and ``to_v``)."""
    names = {"conv_in": "conv_in", "emb.0": "time_embedding.linear_1", "emb.2": "time_embedding.linear_2",
             "label_emb": "class_embedding", "norm_out": "conv_norm_out", "conv_out": "conv_out"}

    def block(ours: str, theirs: str, attention: str):
        names.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in RESBLOCK.items()})
        attend(f"{ours}.attn", attention)

    def attend(ours: str, theirs: str):
        names.update({f"{ours}.norm": f"{theirs}.group_norm", f"{ours}.qkv": theirs,
                      f"{ours}.proj": f"{theirs}.to_out.0"})

    levels, down, up = len(model.ch_mult), iter(range(len(model.down))), iter(range(len(model.up)))
    for level in range(levels):
        for j in range(model.num_res_blocks):
            block(f"down.{next(down)}", f"down_blocks.{level}.resnets.{j}", f"down_blocks.{level}.attentions.{j}")
        if level < levels - 1:
            names[f"down.{next(down)}.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
    block("mid.0", "mid_block.resnets.0", "")
    attend("mid.1", "mid_block.attentions.0")
    block("mid.2", "mid_block.resnets.1", "")
    for level in range(levels):
        for j in range(model.num_res_blocks + 1):
            block(f"up.{next(up)}", f"up_blocks.{level}.resnets.{j}", f"up_blocks.{level}.attentions.{j}")
        if level < levels - 1:
            names[f"up.{next(up)}.conv"] = f"up_blocks.{level}.upsamplers.0.conv"
    return names


def from_diffusers(model, weights: dict) -> dict:
    """``model``'s state dict from UNet2DModel weights, old attention names (query, key, value, proj_attn)
    or new (to_q, to_k, to_v, to_out.0); every key is used exactly once, or a ValueError lists the rest."""
    weights = {OLD_ATTENTION.sub(lambda m: f"{m[1]}.{NEW_NAMES[m[2]]}.", k): v for k, v in weights.items()}
    names, used, state = module_names(model), set(), {}
    for key, like in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        theirs = [f"{names[module]}.{part}.{leaf}" for part in ("to_q", "to_k", "to_v")] \
            if module.endswith(".qkv") else [f"{names[module]}.{leaf}"]
        missing = [k for k in theirs if k not in weights]
        if missing:
            raise ValueError(f"the checkpoint lacks {missing[0]} (for {key}): it is not the network its "
                             "config.json describes")
        need = (like.shape[0] // len(theirs), *like.shape[1:])  # diffusers' Linear q, k, v: 1x1 convolutions here
        for k in theirs:
            got = tuple(weights[k].shape)
            if got != need[:len(got)] or math.prod(got) != math.prod(need):
                raise ValueError(f"{k} has shape {got} in the weights, but config.json describes a network that "
                                 f"needs {need[:len(got)]} there: the config and the weights do not match")
        state[key] = torch.cat([weights[k] for k in theirs]).reshape(like.shape)
        used.update(theirs)
    if set(weights) - used:
        raise ValueError(f"the checkpoint has weights ddpm.UNet does not: {sorted(set(weights) - used)[:5]}")
    return state


def to_diffusers(model) -> dict:
    """The UNet2DModel weights that compute ``model`` at diffusers' timestep k = t − 1: its q, k, v and output
    1x1 convolutions as Linears, and for ``t_offset`` ≠ 1 the time shift folded into the first time layer."""
    names, weights = module_names(model), {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        linear = module.endswith((".qkv", ".proj")) and leaf == "weight"
        parts = zip(("to_q", "to_k", "to_v"), value.chunk(3)) if module.endswith(".qkv") else [("", value)]
        for part, v in parts:
            name = ".".join(filter(None, (names[module], part, leaf)))
            weights[name] = (v.flatten(1) if linear else v).detach().cpu().contiguous().clone()
    if model.t_offset != 1:
        weights[TIME_LAYER] = shift_time_embedding(weights[TIME_LAYER], 1 - model.t_offset)
    return weights


def shift_time_embedding(weight: Tensor, shift: int) -> Tensor:
    """W R for the first time layer W: with e(k) = [sin(k ω_i)…, cos(k ω_i)…] (``timestep_embedding``),
    e(k + s) = R e(k), since sin((k+s)ω) = sin(kω) cos(sω) + cos(kω) sin(sω) and cos((k+s)ω) = cos(kω) cos(sω)
    − sin(kω) sin(sω). A network that embeds k + s then computes, with W R, what it computed from k.
    In float64 with the embedding's own float32 ω, cast back to W's dtype."""
    half = weight.shape[1] // 2
    angle = shift * frequencies(half).double()
    cos, sin = angle.cos(), angle.sin()
    w_sin, w_cos = weight.double().split(half, dim=1)
    return torch.cat([w_sin * cos - w_cos * sin, w_sin * sin + w_cos * cos], dim=1).to(weight.dtype)


# -- writing ---------------------------------------------------------------------------------------------------

def diffusers_config(model) -> dict:
    """The UNet2DModel config.json of a ddpm.UNet. Any ``t_offset`` and either padding fit; the 3x3
    convolutional shortcut does not (UNet2DModel's shortcut is a 1x1 convolution). K classes are K + 1 class
    embeddings, the last for the null class."""
    c = model.config
    if c["conv_shortcut"]:
        raise ValueError("diffusers' UNet2DModel has 1x1 shortcuts only, so a UNet built with conv_shortcut=True "
                         "(3x3 shortcuts) cannot be written in its layout")
    sizes = [c["image_size"] // 2**i for i in range(len(c["ch_mult"]))]
    attn = [size in c["attn_resolutions"] for size in sizes]
    return {"_class_name": "UNet2DModel", **ORIGINAL, "sample_size": c["image_size"], "in_channels": c["in_channels"],
            "out_channels": model.out_channels, "block_out_channels": [c["ch"] * m for m in c["ch_mult"]],
            "layers_per_block": c["num_res_blocks"], "norm_num_groups": c["num_groups"], "dropout": c["dropout"],
            "downsample_padding": 0 if c["downsample_padding"] == "tf_same" else 1,
            "num_class_embeds": None if model.num_classes is None else model.num_classes + 1,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]}


def scheduler_config(s: NoiseSchedule, variance: str, parameterization: str = "eps") -> dict:
    """A DDPMScheduler config for schedule ``s`` (linear β as its two ends, any other as the list of β) and a
    network that outputs ``parameterization``'s quantity (its ``prediction_type``)."""
    if check_parameterization(parameterization) not in PREDICTION_TYPES:
        raise ValueError(f"a network that outputs the posterior mean (parameterization 'mu') has no diffusers "
                         f"counterpart: DDPMScheduler's prediction_type is {sorted(PREDICTION_TYPES.values())}; "
                         "sample it with ddpm itself (python -m ddpm sample), or train parameterization 'eps', "
                         "'x0' or 'v' to export")
    betas = s.betas[1:].cpu()
    linear = torch.allclose(betas, NoiseSchedule.linear(s.T, betas[0].item(), betas[-1].item()).betas[1:],
                            rtol=0, atol=1e-15)
    schedule = (dict(beta_schedule="linear", beta_start=betas[0].item(), beta_end=betas[-1].item()) if linear
                else dict(trained_betas=betas.tolist()))
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": s.T, **schedule,
            "variance_type": DIFFUSERS_VARIANCE[check_variance(variance)], "clip_sample": True,
            "prediction_type": PREDICTION_TYPES[parameterization]}


def save_pretrained(model, folder, schedule: NoiseSchedule, variance: str, safe_serialization: bool = True, *,
                    parameterization: str = "eps") -> Path:
    """Write ``model`` as a diffusers pipeline folder that ``UNet.from_pretrained`` and diffusers' DDPMPipeline
    read: model_index.json, unet/ (config and weights: .safetensors, or .bin when ``safe_serialization=False``)
    and scheduler/ (``schedule``, ``variance``, and the ``prediction_type`` of ``parameterization``, what the
    network outputs: "eps", "x0" or "v"; "mu" is refused before anything is written). Any ``t_offset`` is
    written exactly (:func:`to_diffusers`).
    The folder is written whole beside ``folder`` and renamed into place, replacing a pipeline folder there (so
    no other weights are left), never anything else; a failure leaves ``folder`` as it was."""
    files = {INDEX: {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                     "unet": ["diffusers", "UNet2DModel"]},
             f"unet/{UNET_CONFIG}": diffusers_config(model),
             f"scheduler/{SCHEDULER_CONFIG}": scheduler_config(schedule, variance, parameterization)}
    weights, (weights_file, write) = to_diffusers(model), weight_writer(safe_serialization)
    target = Path(folder).resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{folder} is a file: save_pretrained writes a folder")
    foreign = foreign_files(target) if target.is_dir() else []
    if foreign:
        raise ValueError(f"{folder} holds {foreign[:3]}, which a diffusers pipeline folder does not; save_pretrained "
                         "replaces the whole folder, so pass a new or empty one (or move those away)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        for sub in ("unet", "scheduler"):
            (staging / sub).mkdir(parents=True)
        for name, content in files.items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        write(weights, staging / "unet" / weights_file)
        rename_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed into place
    return Path(folder)


def weight_writer(safe_serialization: bool):
    """(file name, write function) for the weights, found before anything is written."""
    if not safe_serialization:
        return WEIGHTS[1], torch.save
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ImportError(f"writing {WEIGHTS[0]} needs safetensors: pip install safetensors, or pass "
                          "safe_serialization=False to write a pickled .bin") from None
    return WEIGHTS[0], save_file


def foreign_files(folder: Path) -> list[str]:
    """What ``folder`` holds besides the files of a pipeline or flat layout (those a new pipeline replaces)."""
    ours = {INDEX, UNET_CONFIG, SCHEDULER_CONFIG, *WEIGHTS}
    foreign = []
    for path in folder.iterdir():
        if path.name in ("unet", "scheduler") and path.is_dir():
            foreign += [f"{path.name}/{p.name}" for p in path.iterdir() if p.name not in ours]
        elif path.name not in ours:
            foreign.append(path.name)
    return sorted(foreign)


def rename_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an old ``folder`` is moved aside first, and back if that fails."""
    if not folder.exists():
        staging.rename(folder)
        return
    old = staging.with_name(f"{staging.name}.old")
    folder.rename(old)
    try:
        staging.rename(folder)
    except BaseException:
        old.rename(folder)
        raise
    shutil.rmtree(old)
