"""Loading causal LMs and describing their compressible structure.

A family adapter answers three questions for any supported architecture: where the
decoder layers are, which linears in a layer are compression targets, and which of
them read the same input (so they share one Gram matrix).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from svdzoo.errors import ConfigError, ModelError
from svdzoo.lazy import nn, torch

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16", "float64")  # torch's names, resolved on use


@dataclass(frozen=True)
class FamilyAdapter:
    """Where a family keeps its decoder layers and which linears share an input.

    `groups` maps an input-group name to the linears (dotted paths inside a decoder
    layer) that read that input; the first group member's input is the one captured.
    """

    name: str
    model_types: tuple[str, ...]
    layers_path: str
    groups: dict[str, tuple[str, ...]]
    layer_in_norm: str | None = None
    # config attribute listing each layer's kind when layers of different kinds get
    # different call arguments (Gemma 3: sliding vs full attention, each with its own mask
    # and rotary table); None when every layer is called alike
    layer_kinds_attr: str | None = None

    def layer_kinds(self, model: nn.Module) -> list[str] | None:
        """Each decoder layer's kind, or None when all layers take the same call arguments."""
        if self.layer_kinds_attr is None:
            return None
        kinds = getattr(text_config(model), self.layer_kinds_attr, None)
        n = len(self.layers(model))
        if not kinds or len(set(kinds)) < 2:
            return None
        if len(kinds) < n:
            raise ModelError(
                f"{self.name}: config.{self.layer_kinds_attr} has {len(kinds)} entries for {n} layers"
            )
        return [str(k) for k in kinds[:n]]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for members in self.groups.values() for t in members)

    def group_of(self, target: str) -> str:
        for g, members in self.groups.items():
            if target in members:
                return g
        raise KeyError(target)

    def matrix_type(self, target: str) -> str:
        """`self_attn.q_proj -> 'q_proj'`: the type used for per-type allocation."""
        return target.rsplit(".", 1)[-1]

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers_path)

    def target_modules(self, layer: nn.Module) -> dict[str, nn.Linear]:
        out = {}
        for t in self.targets:
            mod = _get(layer, t)
            if not isinstance(mod, nn.Linear):
                if type(mod).__name__ in ("LowRankLinear", "ColumnPreservingLinear"):
                    # compressing the same in-memory model twice
                    raise ModelError(
                        f"{self.name}: this model is already compressed ({type(mod).__name__}"
                        f" at {t}); load the dense model again to compress it anew"
                    )
                raise ModelError(
                    f"{self.name}: expected nn.Linear at {t}, found {type(mod).__name__}"
                )
            out[t] = mod
        return out

    def iter_targets(self, model: nn.Module) -> Iterator[tuple[str, int, str, nn.Linear]]:
        """Yield `(full_name, layer_index, target, linear)` for every target in the model."""
        for i, layer in enumerate(self.layers(model)):
            for t, mod in self.target_modules(layer).items():
                yield f"{self.layers_path}.{i}.{t}", i, t, mod


_LLAMA_LIKE = dict(
    layers_path="model.layers",
    groups={
        "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        "attn_out": ("self_attn.o_proj",),
        "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
        "mlp_out": ("mlp.down_proj",),
    },
)

FAMILIES: dict[str, FamilyAdapter] = {
    "llama": FamilyAdapter(name="llama", model_types=("llama",), **_LLAMA_LIKE),
    "mistral": FamilyAdapter(name="mistral", model_types=("mistral",), **_LLAMA_LIKE),
    # Qwen2 with `use_sliding_window`: its first `max_window_layers` layers full attention,
    # the rest sliding, each kind with its own mask (`config.layer_types`)
    "qwen2": FamilyAdapter(
        name="qwen2", model_types=("qwen2",), layer_kinds_attr="layer_types", **_LLAMA_LIKE
    ),
    # Gemma 3 text models: LLaMA-style linears (q/k norms and the extra layer norms are not
    # compressed); sliding-window and full-attention layers take different masks and rotary
    # tables, so calibration captures the call arguments of each kind
    "gemma3": FamilyAdapter(
        name="gemma3",
        model_types=("gemma3_text",),
        layer_kinds_attr="layer_types",
        **_LLAMA_LIKE,
    ),
    # multimodal Gemma 3 checkpoints (model_type "gemma3", 4B and up):
    # Gemma3ForConditionalGeneration keeps the text decoder under model.language_model and
    # its settings (layer_types, max_position_embeddings) in config.text_config; the vision
    # tower is not compressed
    "gemma3_vlm": FamilyAdapter(
        name="gemma3_vlm",
        model_types=("gemma3",),
        layer_kinds_attr="layer_types",
        **{**_LLAMA_LIKE, "layers_path": "model.language_model.layers"},
    ),
    "opt": FamilyAdapter(
        name="opt",
        model_types=("opt",),
        layers_path="model.decoder.layers",
        groups={
            "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "attn_out": ("self_attn.out_proj",),
            "mlp_in": ("fc1",),
            "mlp_out": ("fc2",),
        },
    ),
    "gpt_neox": FamilyAdapter(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers_path="gpt_neox.layers",
        groups={
            "attn_in": ("attention.query_key_value",),
            "attn_out": ("attention.dense",),
            "mlp_in": ("mlp.dense_h_to_4h",),
            "mlp_out": ("mlp.dense_4h_to_h",),
        },
    ),
}


def text_config(model_or_config: nn.Module | object) -> object:
    """The config that describes the text decoder: `config.text_config` for a multimodal
    wrapper (Gemma 3 4B and up), the config itself otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def adapter_for(model_or_config: nn.Module | object) -> FamilyAdapter:
    """The adapter for a model (or its config); a clear error for anything unsupported."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    supported = ", ".join(sorted(t for f in FAMILIES.values() for t in f.model_types))
    raise ModelError(
        f"unsupported model family {model_type!r}: svdzoo knows {supported}. "
        "Add a FamilyAdapter in svdzoo.models.FAMILIES to support it."
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in evaluation mode (no dropout) for the block, the caller's mode restored
    after: a measurement or a compression must not depend on whether it was training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def dtype_name(model: nn.Module) -> str:
    """The name of the dtype a model's weights are in ('float32'), as manifests record it."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return getattr(torch, dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N (or another torch device)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelError(
                f"device {device!r} requested but there are {torch.cuda.device_count()} CUDA "
                f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        return dev
    if dev.type == "cpu":
        return dev
    # mps, xpu, ...: the backend must be there (`torch.backends.mps`, `torch.xpu`, as each
    # torch version exposes it); `meta` holds no data to compute with
    checks = [
        getattr(getattr(owner, dev.type, None), "is_available", None)
        for owner in (torch.backends, torch)
    ]
    available = any(callable(c) and c() for c in checks)
    if dev.type == "meta" or not available:
        raise ModelError(f"device {device!r} is not available here; use auto, cpu, cuda or cuda:N")
    return dev


def _hub_hint(model_id: str, exc: BaseException | None = None) -> str:
    """What to do about a model that is no local directory and did not load from the hub;
    transformers' own first line comes first (a gated repository, a mistyped id and an
    offline machine each need something else)."""
    said = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return (
        (f"{said} " if said else "")
        + f"(model {model_id!r} is neither a local directory nor loadable from the Hugging "
        "Face cache or hub.) Check the id; for a gated model accept its licence and run `hf "
        "auth login`; offline (HF_HUB_OFFLINE=1), download it on a connected machine with "
        f"`hf download {model_id}` and copy ~/.cache/huggingface, or pass a local path to "
        "a saved model."
    )


def load_tokenizer(model_id: str | os.PathLike[str]):
    from transformers import AutoTokenizer

    check_model_dir(model_id)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_id))
    except (OSError, ValueError) as exc:
        if not Path(model_id).is_dir():
            raise ModelError(_hub_hint(str(model_id), exc)) from exc
        # a saved model without tokenizer files: transformers raises a multi-line ValueError
        raise ModelError(
            f"model directory {str(model_id)!r} has no usable tokenizer "
            f"({type(exc).__name__}); save one next to the weights "
            "(tokenizer.save_pretrained(DIR))"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    check_tokenizer_fits(tok, model_id)
    return tok


def check_tokenizer_fits(tokenizer, model_id: str | os.PathLike[str]) -> None:
    """Refuse a tokenizer whose vocabulary the model's embedding cannot index (another
    model's tokenizer files beside the weights), before the weights load: the forward pass
    would stop with an `IndexError` from the embedding, after minutes of loading. Its base
    vocabulary is compared, not added special tokens: some releases list tokens past the
    embedding that text never encodes to."""
    try:
        config = load_config(model_id)
    except ModelError:  # reported, with its reason, where the model loads
        return
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:  # a multimodal config keeps it with its text decoder's
        vocab = getattr(getattr(config, "text_config", None), "vocab_size", None)
    base = getattr(tokenizer, "vocab_size", None)
    if isinstance(vocab, int) and isinstance(base, int) and base > vocab:
        raise ModelError(
            f"{model_id}: its tokenizer has {base} tokens but the model's embedding only "
            f"{vocab} (config.json vocab_size): the tokenizer files are another model's; "
            "save the model's own tokenizer next to its weights"
        )


def is_compressed_dir(path: Path) -> bool:
    """A directory written by `svdzoo compress` (its manifest names the method)."""
    from svdzoo.paths import MANIFEST, WEIGHTS

    manifest = path / MANIFEST
    if not (path.is_dir() and manifest.exists()):
        return False
    if (path / WEIGHTS).exists():  # a damaged manifest is still one
        return True
    from svdzoo.io import read_json_object

    raw = manifest.read_bytes()  # an unreadable manifest is an error, not "no"
    try:  # the shared reader: an editor's byte-order mark is read past
        return "method" in read_json_object(manifest, ValueError, raw=raw)
    except ValueError:
        return False


def check_not_compressed(model: str | os.PathLike[str], doing: str) -> None:
    """Refuse an svdzoo-compressed directory where a dense model is needed, naming its base
    model: no method compresses factored linears again, so neither compressing one (the
    error came after loading, from the first target) nor its statistics (computed and
    written, then of no use) can serve."""
    from svdzoo.io import read_json_object
    from svdzoo.paths import MANIFEST

    path = Path(model)
    if not is_compressed_dir(path):
        return
    try:
        base = read_json_object(path / MANIFEST, ModelError).get("base_model")
    except ModelError:
        base = None
    named = f" ({base})" if isinstance(base, str) and base else ""
    raise ConfigError(
        f"model {str(model)!r} is an svdzoo-compressed directory; {doing} its base "
        f"model{named} instead (no method compresses a compressed model again)"
    )


def _could_be_hub_id(name: str) -> bool:
    """Whether a name that is no local directory could still be a hub repository; a path
    such as '/data/m' or './m' cannot, and the hub's download advice would mislead."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_model_dir(path: str | os.PathLike[str]) -> None:
    """A local directory given as a model must hold a readable `config.json` (cheap, no torch)."""
    name, path = os.fspath(path), Path(path)
    if path.is_file():
        raise ModelError(f"model {str(path)!r} is a file; give a saved model directory or hub id")
    if not path.is_dir():
        if not _could_be_hub_id(name):
            raise ModelError(
                f"model {name!r}: no such directory ({path.absolute()}), and "
                "not a Hugging Face id either (those are 'name' or 'namespace/name'); give "
                "the directory of a saved model, or a hub id"
            )
        return  # a hub id: resolved (or refused) by transformers
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(
            f"model directory {str(path)!r} has no config.json, so it is not a saved model "
            "(save one with save_pretrained, or give a hub id)"
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config}: not a readable JSON config ({exc})") from exc


def load_config(model_id: str | os.PathLike[str]):
    """A model's transformers config, without its weights (a compressed directory's is its
    base architecture's): what is checked before anything loads."""
    from transformers import AutoConfig

    path = Path(model_id)
    if not is_compressed_dir(path):
        check_model_dir(model_id)  # as given: Path('./m') is 'm', which could be a hub id
    try:
        return AutoConfig.from_pretrained(str(model_id))
    except OSError as exc:
        raise ModelError(_hub_hint(str(model_id), exc)) from exc
    except ValueError as exc:  # a config.json without a model type transformers knows
        raise ModelError(f"{model_id}: {str(exc).splitlines()[0]}") from exc


def load_model(
    model_id: str | os.PathLike[str],
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "cpu",
) -> nn.Module:
    """Load a causal LM by hub id or local path; compressed svdzoo models load too."""
    from transformers import AutoModelForCausalLM

    path = Path(model_id)
    if is_compressed_dir(path):
        from svdzoo.compression import load_compressed  # lazy: avoids a cycle

        return load_compressed(path, dtype=dtype, device=device)
    # an unknown dtype or device, an unsupported family: refused before the weights load
    target, dev = resolve_dtype(dtype), resolve_device(device)
    adapter_for(load_config(model_id))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_id), dtype=target, low_cpu_mem_usage=True
        )
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # a truncated or missing weights file, weights unlike config.json
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"{model_id}: its weights could not be loaded ({type(exc).__name__}: {reason}); "
            "the checkpoint is incomplete, corrupt or does not match its config.json: "
            "re-create it (svdzoo prepare-model) or download it again"
        ) from exc
    model.to(dev)
    model.eval()
    check_finite_weights(model, str(model_id))
    return model


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Refuse a model with a NaN or infinite weight before any compute uses it.

    One bad weight makes every later product non-finite (statistics, factors, metrics), and
    those failures surface minutes later without naming the cause."""
    from svdzoo.linalg import all_finite

    bad = []
    for name, p in model.named_parameters():
        if not all_finite(p):
            finite = torch.isfinite(p.detach())
            nan = int(torch.isnan(p.detach()).sum())
            bad.append(f"{name} ({nan} NaN, {int((~finite).sum()) - nan} inf)")
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelError(
            f"{what} has non-finite weights: {', '.join(bad[:3])}{more}; the checkpoint is "
            "corrupt or diverged, re-create it (svdzoo prepare-model / compress)"
        )


def check_seqlen(
    model: nn.Module | object, seqlen: int, what: str = "--seqlen", prefix: int = 0
) -> None:
    """Refuse windows longer than the model's position range, for every family (`model`
    or its config, `load_config`: the commands check before the weights load); `prefix`
    positions (a window's BOS, `check_window_seqlen`) come before the `seqlen` tokens.

    Past `max_position_embeddings` OPT's learned positions raise an IndexError and rotary
    models run silently out of distribution."""
    limit = getattr(text_config(model), "max_position_embeddings", None)
    if limit is not None and seqlen + prefix > int(limit):
        bos = " plus the BOS token every window of this model starts with" if prefix else ""
        raise ConfigError(
            f"{what} {seqlen}{bos} exceeds the model's max_position_embeddings ({limit}); "
            f"use at most {int(limit) - prefix}"
        )


def check_window_seqlen(config: object, seqlen: int) -> None:
    """`check_seqlen` for calibration and evaluation windows, which begin with the model's
    `data.window_prefix` (Gemma's BOS) before their `seqlen` tokens."""
    from svdzoo.data import window_prefix

    check_seqlen(config, seqlen, prefix=len(window_prefix(config)))


# models whose fingerprint a caller has taken and vouches for (`fingerprint_known`)
_KNOWN: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def fingerprint_known(model: nn.Module, fp: str | None = None) -> Iterator[str]:
    """Hash `model` once and answer `fingerprint(model)` from that inside the block (from
    `fp` without hashing, where the caller has it: an exact copy's, `copy.deepcopy`).

    Calibration, the sensitivity tables and compression each fingerprint the model for
    their manifests. A pass reads about 1.2 GB/s per core (0.47 s for SmolLM2-135M in
    float32 on one thread, some 11 s at 7B in float16), so a caller that runs them in turn
    hashes once. The caller vouches that the weights inside the block are the ones hashed:
    what changes them there (compression) must be the block's last step, and what probes
    them (the tables) must restore them (tests/test_sensitivity.py checks that they do)."""
    outer = model in _KNOWN  # a nested block keeps the outer block's value
    fp = _KNOWN[model] = _KNOWN[model] if outer else fp or fingerprint(model)
    try:
        yield fp
    finally:
        if not outer:
            _KNOWN.pop(model, None)


def fingerprint(model: nn.Module) -> str:
    """A stable identity for cache manifests: the config plus a hash of every weight."""
    return _KNOWN[model] if model in _KNOWN else _hash_model(model)


def _hash_model(model: nn.Module) -> str:
    """sha256 over the config and each tensor's own sha256 (name, dtype, digest in name
    order). The tensors are hashed on `torch.get_num_threads()` threads (hashlib releases
    the GIL), each storage once (tied embeddings are one tensor)."""
    from concurrent.futures import ThreadPoolExecutor

    h = hashlib.sha256()
    cfg = model.config.to_dict()
    for k in (
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_attn_implementation_autoset",
    ):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    items = sorted(model.state_dict().items())
    distinct = {_storage_key(t): t for _, t in items}
    workers = torch.get_num_threads()
    if any(t.device.type != "cpu" for t in distinct.values()):
        workers = min(workers, 8)  # each worker holds a host copy of its device tensor
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(_tensor_digest, distinct.values()))
    else:  # a worker thread costs about 5 % on one core
        found = [_tensor_digest(t) for t in distinct.values()]
    digests = dict(zip(distinct, found, strict=True))
    for name, tensor in items:
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(digests[_storage_key(tensor)])
    return h.hexdigest()[:16]


def _storage_key(t: torch.Tensor) -> tuple:
    return (str(t.device), t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() and t.stride(0) != 1:  # a one-element slice keeps its stride
        t = torch.empty(t.numel(), dtype=t.dtype).copy_(t)
    # the array's buffer itself, not a bytes copy of it: half the time at 7B (13 GB)
    return hashlib.sha256(t.view(torch.uint8).numpy() if t.numel() else b"").digest()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _get(root: nn.Module, dotted: str) -> nn.Module:
    try:
        return root.get_submodule(dotted)
    except AttributeError as exc:
        raise ModelError(f"{type(root).__name__} has no submodule {dotted!r}") from exc


def replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    """Swap the submodule at `dotted` (e.g. 'model.layers.3.mlp.up_proj') for `new`."""
    parent_name, _, child = dotted.rpartition(".")
    parent = _get(root, parent_name) if parent_name else root
    setattr(parent, child, new)
