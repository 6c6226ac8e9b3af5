"""Load an svdzoo-compressed checkpoint with plain transformers (no svdzoo needed).

svdzoo copies this file into every compressed model directory and names it in
`config.json` (`auto_map`), so

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

returns the compressed model: the base architecture from `config.json` with each
factored linear rebuilt from `manifest.json` (`modules.<name>.spec`) and filled from
`svdzoo-lowrank.safetensors`, whose sha256 the manifest records and this loader checks.
Without `trust_remote_code` transformers does not run this file, finds no weights under
its own names and raises: a compressed directory never loads as a dense model with random
weights. The factored modules compute `y = A(B(x)) + b` (low rank) and, for Duo-SVD's
column-preserving split, `A(B(x[rest])) + kept(x[kept])`; their parameter names are
svdzoo's, so the same file loads back into svdzoo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

WEIGHTS = "svdzoo-lowrank.safetensors"
MANIFEST = "manifest.json"


class LowRankLinear(nn.Module):
    def __init__(self, n: int, m: int, k: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = n, m, k
        self.B = nn.Linear(n, k, bias=False)
        self.A = nn.Linear(k, m, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(self.B(x))


class ColumnPreservingLinear(nn.Module):
    def __init__(self, n: int, m: int, k: int, c: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank, self.n_kept = n, m, k, c
        self.register_buffer("kept_idx", torch.zeros(c, dtype=torch.long))
        self.register_buffer("rest_idx", torch.zeros(n - c, dtype=torch.long))
        self.kept = nn.Linear(c, m, bias=False)
        self.B = nn.Linear(n - c, k, bias=False)
        self.A = nn.Linear(k, m, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rest = x.index_select(-1, self.rest_idx)
        return self.A(self.B(rest)) + self.kept(x.index_select(-1, self.kept_idx))


def _module(spec: dict) -> nn.Module:
    n, m, k = int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"])
    if spec["type"] == "lowrank":
        return LowRankLinear(n, m, k, bool(spec["bias"]))
    if spec["type"] == "column":
        return ColumnPreservingLinear(n, m, k, int(spec["kept_columns"]), bool(spec["bias"]))
    raise ValueError(f"unknown svdzoo module type {spec['type']!r}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def _parameters_on_meta():
    """Create parameters on the meta device (no memory, no random init) and buffers for
    real: every parameter is about to come from the weights file, while non-persistent
    buffers (rotary tables) are not in it."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _single_device(device_map):
    """The one device a `device_map` names (None: leave the model where it is).

    The whole model goes to that device; maps that split it across devices (or onto disk)
    are refused rather than ignored, which left the model on the CPU without a word."""
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = {str(d) if not isinstance(d, int) else f"cuda:{d}" for d in device_map.values()}
        if len(devices) != 1:
            raise NotImplementedError(
                f"device_map {device_map!r}: an svdzoo compressed model loads onto one device"
            )
        device_map = devices.pop()
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_map)
    if device.type in ("meta", "disk"):
        raise NotImplementedError(f"device_map {device_map!r}: not supported for svdzoo models")
    return device


def _no_save_pretrained(self, save_directory, *args, **kwargs):
    """`save_pretrained` of a model loaded from an svdzoo directory: refused, because the
    base architecture's writer would store the factors under names that reload as a dense
    model with random weights (and drop this loader)."""
    raise NotImplementedError(
        f"save_pretrained({str(save_directory)!r}): this model was loaded from an svdzoo "
        "compressed directory, and the base architecture's save_pretrained would write a "
        "checkpoint that reloads as a dense model with random weights. Copy the compressed "
        "directory instead, or save it with svdzoo (svdzoo.compression.save_compressed)"
    )


def _snapshot(repo_id: str, kwargs: dict) -> str:
    """The local copy of a Hub repository's compressed model (downloaded into the Hub cache
    unless it is there, as transformers does for its own files): the manifest, the config
    and the factors, at the revision asked for."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            repo_id,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            local_files_only=bool(kwargs.get("local_files_only", False)),
            force_download=bool(kwargs.get("force_download", False)),
            allow_patterns=[MANIFEST, WEIGHTS, "config.json", "generation_config.json"],
        )
    except Exception as exc:  # an invalid id, an absent repository, offline and not cached
        raise OSError(
            f"{repo_id}: not a local directory, and its svdzoo compressed model could not "
            f"be fetched from the Hub ({type(exc).__name__}: {exc})"
        ) from exc


# `from_pretrained` options that would change what is loaded, which this loader does not do
UNSUPPORTED = (
    "quantization_config",
    "load_in_4bit",
    "load_in_8bit",
    "subfolder",
    "output_loading_info",
    "gguf_file",
)


class SvdzooForCausalLM(PreTrainedModel):
    """Entry point for `auto_map`: `from_pretrained` returns the base architecture's model
    class (e.g. `LlamaForCausalLM`) with the factored linears in place."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        path = str(pretrained_model_name_or_path)
        asked = [k for k in UNSUPPORTED if kwargs.get(k) not in (None, False, "")]
        if asked:  # silently ignored, they would give another model than the one asked for
            raise ValueError(
                f"{path}: an svdzoo compressed model does not load with {', '.join(asked)} "
                "(its factors are stored as they are; quantize or load them with svdzoo)"
            )
        if not os.path.isdir(path):
            path = _snapshot(path, kwargs)
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
        weights = os.path.join(path, WEIGHTS)
        if _sha256(weights) != manifest.get("weights_sha256"):
            raise OSError(
                f"{weights} is not the file {MANIFEST} was written with (replaced or "
                "corrupted): compress the model again"
            )
        want = manifest.get("config_sha256")  # absent in directories of older svdzoo
        config_file = os.path.join(path, "config.json")
        if want is not None and (not os.path.isfile(config_file) or _sha256(config_file) != want):
            raise OSError(
                f"{config_file} is not the config {MANIFEST} was written with (edited or "
                "replaced): compress the model again"
            )
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
        base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        with _parameters_on_meta():
            model = base(config)
            # the factored modules too: built outside, every factor was allocated in
            # float32 and randomly initialised, then replaced by the file's
            for name, rec in manifest["modules"].items():
                if rec.get("dense"):
                    continue
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, _module(rec["spec"]))
        state = load_file(weights)
        result = model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
        tied = out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight
        missing = [k for k in result.missing_keys if not (tied and k.startswith("lm_head."))]
        if missing or result.unexpected_keys:
            raise OSError(
                f"{path}: the weights do not fit the manifest (missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]})"
            )
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise OSError(f"{path}: {left[:5]} were not in the weights file")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if dtype is not None and dtype != "auto":
            dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            # parameters only: `to(dtype)` would also round the rotary frequencies, which
            # the dense model keeps in float32
            for param in model.parameters():
                param.data = param.data.to(dtype)
        if os.path.isfile(os.path.join(path, "generation_config.json")):
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(path)
        device = _single_device(kwargs.get("device_map"))
        if device is not None:
            model.to(device)
        model.save_pretrained = _no_save_pretrained.__get__(model)  # see there
        return model.eval()
