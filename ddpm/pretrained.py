"""The paper's released checkpoints in diffusers' ``UNet2DModel`` layout: read them into ``ddpm.UNet``, write it.

The authors' TensorFlow weights (Ho et al. 2020) were converted to PyTorch by diffusers and published on the
Hugging Face Hub: ``google/ddpm-cifar10-32``, ``google/ddpm-celebahq-256`` and the LSUN church, bedroom and cat
models ``google/ddpm-{church,bedroom,cat}-256``, each 256x256 one with an ``-ema-`` twin
(``google/ddpm-ema-celebahq-256``). Each is a pipeline folder::

    model_index.json
    unet/config.json, unet/diffusion_pytorch_model.safetensors (or .bin)
    scheduler/scheduler_config.json

The same network is ``ddpm.UNet`` with two settings kept in its config: the original's stride-2 convolutions
pad only the bottom and right (``downsample_padding="tf_same"``), and the original was fed t − 1
(``t_offset=1``), so that callers keep the paper's t ∈ {1, …, T}. ``UNet.from_pretrained`` is the entry point;
this module holds the file layout, the Hub download, the two config translations and the key map both ways.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .schedule import NoiseSchedule

UNET_CONFIG, SCHEDULER_CONFIG = "config.json", "scheduler_config.json"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# What UNet2DModel assumes for a key its config.json lacks (diffusers' defaults), and the values that describe
# the original network. A config that differs from these is another architecture and is refused.
DIFFUSERS_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    freq_shift=0, flip_sin_to_cos=True, block_out_channels=(224, 448, 672, 896), layers_per_block=2,
    mid_block_scale_factor=1, downsample_padding=1, downsample_type="conv", upsample_type="conv", dropout=0.0,
    act_fn="silu", attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5,
    resnet_time_scale_shift="default", add_attention=True, class_embed_type=None, num_class_embeds=None,
    num_train_timesteps=None)
ORIGINAL = dict(center_input_sample=False, time_embedding_type="positional", freq_shift=1, flip_sin_to_cos=False,
                mid_block_scale_factor=1, downsample_type="conv", upsample_type="conv", act_fn="silu",
                attention_head_dim=None, attn_norm_num_groups=None, norm_eps=1e-6, resnet_time_scale_shift="default",
                add_attention=True, class_embed_type=None, num_class_embeds=None, num_train_timesteps=None)
SCHEDULER_DEFAULTS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                          trained_betas=None, variance_type="fixed_small", prediction_type="epsilon")
VARIANCES = {"fixed_large": "fixedlarge", "fixed_large_log": "fixedlarge", "fixed_small": "fixedsmall",
             "fixed_small_log": "fixedsmall"}

HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")
OLD_ATTENTION = re.compile(r"(attentions\.\d+)\.(query|key|value|proj_attn)\.")
NEW_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


@dataclass
class Checkpoint:
    """What a folder holds: ``UNet(**config)``'s arguments, the weights under diffusers' names, and the noise
    schedule and variance ("fixedlarge": σ² = β, "fixedsmall": σ² = β̃) its scheduler config names."""
    config: dict
    weights: dict
    schedule: NoiseSchedule
    variance: str


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
    patterns = ["model_index.json", f"*{UNET_CONFIG}", f"*{SCHEDULER_CONFIG}"]
    try:
        for weights in WEIGHTS:  # the .bin only where a repository has no .safetensors
            folder = Path(snapshot_download(name, allow_patterns=patterns + [f"*{weights}"],
                                            local_files_only=offline))
            if any(folder.rglob(weights)):
                return folder
    except LocalEntryNotFoundError:
        raise ConnectionError(
            f"cannot download {name}: no network{' (HF_HUB_OFFLINE is set)' if offline else ''} and no copy in "
            f"the Hugging Face cache; on a machine with network run `huggingface-cli download {name} "
            f"--local-dir DIR`, copy DIR here and pass its path instead of the name") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no Hub repository {name}; released DDPM models are e.g. google/ddpm-cifar10-32 "
                                "and google/ddpm-ema-celebahq-256") from None
    raise FileNotFoundError(f"the Hub repository {name} has no diffusion_pytorch_model weights")


# -- reading ---------------------------------------------------------------------------------------------------

def read(folder) -> Checkpoint:
    """A pipeline folder (``unet/`` and ``scheduler/``) or a bare ``unet/`` folder. Without a scheduler config,
    the schedule is diffusers' DDPMScheduler default: the paper's linear β from 1e-4 to 0.02 over T = 1000."""
    folder = Path(folder)
    unet = folder / "unet" if (folder / "unet" / UNET_CONFIG).is_file() else folder
    if not (unet / UNET_CONFIG).is_file():
        raise FileNotFoundError(f"{folder} holds no unet/{UNET_CONFIG} or {UNET_CONFIG}: pass a diffusers "
                                "pipeline folder (model_index.json, unet/, scheduler/) or its unet/ folder")
    scheduler = [p for p in (folder / "scheduler", unet.parent / "scheduler") if (p / SCHEDULER_CONFIG).is_file()]
    scheduler_config = _read_json(scheduler[0] / SCHEDULER_CONFIG) if scheduler else {}
    return Checkpoint(unet_config(_read_json(unet / UNET_CONFIG)), read_weights(unet),
                      *noise_schedule(scheduler_config))


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
    c = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in diffusers_config.items() if not k.startswith("_")}}
    c["block_out_channels"] = tuple(c["block_out_channels"])
    other = {k: c[k] for k, v in ORIGINAL.items() if c[k] != v}
    if other:
        raise ValueError(f"this UNet2DModel differs from the DDPM network in {other} (DDPM's values: "
                         f"{ {k: ORIGINAL[k] for k in other} }); ddpm.UNet cannot load it")
    down, up = c["down_block_types"], c["up_block_types"]
    attn = [kind == "AttnDownBlock2D" for kind in down]
    if (set(down) - {"DownBlock2D", "AttnDownBlock2D"} or len(up) != len(down)
            or list(up) != ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]):
        raise ValueError(f"block types {down} / {up}: ddpm.UNet has (Attn)DownBlock2D levels mirrored by "
                         "(Attn)UpBlock2D levels")
    ch, size = c["block_out_channels"][0], c["sample_size"]
    size = size[0] if isinstance(size, (list, tuple)) else size
    if any(width % ch for width in c["block_out_channels"]) or not isinstance(size, int):
        raise ValueError(f"block_out_channels={c['block_out_channels']} must be multiples of the first, and "
                         f"sample_size={c['sample_size']} a square side")
    return dict(in_channels=c["in_channels"], ch=ch, ch_mult=tuple(w // ch for w in c["block_out_channels"]),
                num_res_blocks=c["layers_per_block"],
                attn_resolutions=tuple(size // 2**i for i, a in enumerate(attn) if a), dropout=c["dropout"],
                image_size=size, out_channels=c["out_channels"], conv_shortcut=False,
                num_groups=c["norm_num_groups"],
                downsample_padding="tf_same" if c["downsample_padding"] == 0 else "symmetric", t_offset=1)


def noise_schedule(scheduler_config: dict) -> tuple[NoiseSchedule, str]:
    """(NoiseSchedule, variance name) from a DDPMScheduler config (its defaults for absent keys)."""
    c = {**SCHEDULER_DEFAULTS, **scheduler_config}
    T, kind = c["num_train_timesteps"], c["beta_schedule"]
    if c["variance_type"] not in VARIANCES or c["prediction_type"] != "epsilon":
        raise ValueError(f"variance_type={c['variance_type']!r}, prediction_type={c['prediction_type']!r}: "
                         f"ddpm samples ε-prediction models with {sorted(VARIANCES)}")
    if c["trained_betas"] is not None:
        schedule = NoiseSchedule(c["trained_betas"])
    elif kind == "linear":
        schedule = NoiseSchedule.linear(T, c["beta_start"], c["beta_end"])
    elif kind == "squaredcos_cap_v2":
        schedule = NoiseSchedule.cosine(T)
    else:
        raise ValueError(f"beta_schedule={kind!r}: ddpm reads 'linear', 'squaredcos_cap_v2' or trained_betas")
    return schedule, VARIANCES[c["variance_type"]]


# -- the key map ---------------------------------------------------------------------------------------------

RESBLOCK = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
            "shortcut": "conv_shortcut"}


def module_names(model) -> dict[str, str]:
    """Each ddpm.UNet module's name → its UNet2DModel name (an attention's fused ``qkv`` → the prefix of
    ``to_q``, ``to_k`` and ``to_v``)."""
    names = {"conv_in": "conv_in", "emb.0": "time_embedding.linear_1", "emb.2": "time_embedding.linear_2",
             "norm_out": "conv_norm_out", "conv_out": "conv_out"}

    def block(ours: str, theirs: str, attention: str):
        names.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in RESBLOCK.items()})
        attend(f"{ours}.attn", attention)

    def attend(ours: str, theirs: str):
        names.update({f"{ours}.norm": f"{theirs}.group_norm", f"{ours}.qkv": theirs, f"{ours}.proj": f"{theirs}.to_out.0"})

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
        state[key] = torch.cat([weights[k] for k in theirs]).reshape(like.shape)
        used.update(theirs)
    if set(weights) - used:
        raise ValueError(f"the checkpoint has weights ddpm.UNet does not: {sorted(set(weights) - used)[:5]}")
    return state


def to_diffusers(model) -> dict:
    """``model``'s weights under UNet2DModel's names (its q, k, v and output 1x1 convolutions as Linears)."""
    names, weights = module_names(model), {}
    for key, value in model.state_dict().items():
        module, leaf = key.rsplit(".", 1)
        linear = module.endswith((".qkv", ".proj")) and leaf == "weight"
        parts = zip(("to_q", "to_k", "to_v"), value.chunk(3)) if module.endswith(".qkv") else [("", value)]
        for part, v in parts:
            name = ".".join(filter(None, (names[module], part, leaf)))
            weights[name] = (v.flatten(1) if linear else v).detach().cpu().contiguous().clone()
    return weights


# -- writing ---------------------------------------------------------------------------------------------------

def diffusers_config(model) -> dict:
    """The UNet2DModel config.json of a ddpm.UNet; only ``t_offset=1`` networks fit that layout (diffusers
    feeds t − 1), and only the 1x1 shortcut exists there."""
    c = model.config
    if c["t_offset"] != 1 or c["conv_shortcut"]:
        raise ValueError("diffusers' layout holds networks fed t - 1 with 1x1 shortcuts; build the UNet with "
                         "t_offset=1 and conv_shortcut=False to write it")
    sizes = [c["image_size"] // 2**i for i in range(len(c["ch_mult"]))]
    attn = [size in c["attn_resolutions"] for size in sizes]
    return {**ORIGINAL, "_class_name": "UNet2DModel", "sample_size": c["image_size"], "in_channels": c["in_channels"],
            "out_channels": model.out_channels, "block_out_channels": [c["ch"] * m for m in c["ch_mult"]],
            "layers_per_block": c["num_res_blocks"], "norm_num_groups": c["num_groups"], "dropout": c["dropout"],
            "downsample_padding": 0 if c["downsample_padding"] == "tf_same" else 1,
            "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
            "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]}


def scheduler_config(s: NoiseSchedule, variance: str) -> dict:
    """A DDPMScheduler config for schedule ``s`` (linear β as its two ends, any other as the list of β)."""
    names = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}
    if variance not in names:
        raise ValueError(f"variance must be one of {sorted(names)}, got {variance!r}")
    betas = s.betas[1:]
    linear = torch.allclose(betas, NoiseSchedule.linear(s.T, betas[0].item(), betas[-1].item()).betas[1:],
                            rtol=0, atol=1e-15)
    schedule = (dict(beta_schedule="linear", beta_start=betas[0].item(), beta_end=betas[-1].item()) if linear
                else dict(trained_betas=betas.tolist()))
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": s.T, **schedule, "variance_type": names[variance],
            "clip_sample": True, "prediction_type": "epsilon"}


def save_pretrained(model, folder, schedule: NoiseSchedule, variance: str, safe_serialization: bool = True) -> Path:
    """Write ``model`` as a diffusers pipeline folder that ``UNet.from_pretrained`` and diffusers both read:
    model_index.json, unet/ (config and weights: .safetensors, or .bin when ``safe_serialization=False``)
    and scheduler/ (``schedule`` and ``variance``)."""
    folder = Path(folder)
    config, scheduler = diffusers_config(model), scheduler_config(schedule, variance)
    for sub in ("unet", "scheduler"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
             "unet": ["diffusers", "UNet2DModel"]}
    for path, content in ((folder / "model_index.json", index), (folder / "unet" / UNET_CONFIG, config),
                          (folder / "scheduler" / SCHEDULER_CONFIG, scheduler)):
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    weights = to_diffusers(model)
    if safe_serialization:
        from safetensors.torch import save_file
        save_file(weights, folder / "unet" / WEIGHTS[0])
    else:
        torch.save(weights, folder / "unet" / WEIGHTS[1])
    return folder
