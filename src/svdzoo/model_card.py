"""The README.md model card of a compressed model directory: what the Hugging Face Hub shows
when the directory is uploaded, and what a person opening it reads first. It says how to
load the model (plain transformers needs `trust_remote_code=True`, and without it says only
that no weights were found), what made it, and where the full record is (`manifest.json`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD = "README.md"


def _hub_id(base: Any) -> str | None:
    """`base_model` as the Hub's metadata takes it: a valid hub id that is no local path."""
    from svdzoo.models import _could_be_hub_id

    if not isinstance(base, str) or not base or Path(base).expanduser().exists():
        return None
    return base if _could_be_hub_id(base) else None


def card_text(manifest: Mapping[str, Any]) -> str:
    from huggingface_hub import ModelCardData

    from svdzoo import __version__
    from svdzoo.methods import REGISTRY

    method, base = manifest["method"], manifest.get("base_model")
    registered = REGISTRY.get(method)
    paper = f"; {registered.paper}" if registered and registered.paper else ""
    what = f" ({registered.description}{paper})" if registered else ""
    title = Path(str(base)).resolve().name if base else ""
    data = ModelCardData(
        library_name="transformers",
        base_model=_hub_id(base),
        tags=["svdzoo", "low-rank", "svd-compression", method],
    )
    dense, kept = manifest.get("model_params_dense"), manifest.get("model_params_compressed")
    size = f" The model has {kept:,} of its {dense:,} parameters." if dense and kept else ""
    achieved = manifest.get("achieved_ratio", manifest["ratio"])
    return f"""---
{data.to_yaml()}
---

# {title or "A model"}, compressed with `{method}`

The targeted linear layers were replaced by low-rank factors with svdzoo {__version__},
method `{method}`{what}, removing {float(achieved):.1%} of their parameters (target
{100 * float(manifest["ratio"]):g} %).{size} Base model: `{base or "not recorded"}`.

## Load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")
```

`trust_remote_code=True` runs `modeling_svdzoo.py` from this directory, the loader that
builds the factored layers from `svdzoo-lowrank.safetensors`. Without it transformers finds
no weights it knows ("no file named model.safetensors") rather than building a dense model
with random weights. With svdzoo installed, `svdzoo.load_compressed("PATH")` loads it too,
checking the weights against the manifest.

## Record

`manifest.json` holds everything about its making: the method's options, the calibration
statistics it used, the rank and kept columns of every matrix, the library versions and
the thread count. This card is generated from it and written anew with the model (a rerun
replaces an edited card: edit a copy for an upload); the manifest is the record.
"""


def write_model_card(out_dir: Path, manifest: Mapping[str, Any]) -> None:
    (Path(out_dir) / CARD).write_text(card_text(manifest), encoding="utf-8")
