"""ONNX Runtime backends for sentence-transformers embedders: `backend: onnx | onnx-int8`.

Why our own export: sentence-transformers' `backend="onnx"` needs optimum-onnx, which pins
transformers < 4.58, while this project runs transformers 5 (vLLM and sentence-transformers 6
need it). So synth exports the model's transformer with `torch.onnx.export`, lets ONNX Runtime
fuse it (attention, layer norms, GELU) and, for `onnx-int8`, quantizes the weights dynamically
(int8, per channel). Only the transformer runs in ONNX Runtime: tokenization, pooling and
normalization stay the sentence-transformers modules, so any pooling the model ships is kept.

The export goes to synth's model cache (`$SYNTH_HOME/models/onnx/<name>-<fingerprint>/`): the
bundled model lives in read-only site-packages, and a cache keyed by the source's fingerprint is
reused across runs and redone when the weights change. Each export is checked against torch on
probe texts before it is kept; an export that disagrees is an error, never a silent slow-down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from synth.models import folder_fingerprint, synth_home

BACKENDS = ("torch", "onnx", "onnx-int8")
EXPORT_VERSION = "2"  # bump when the export recipe changes: it is part of the embedder id (cache keys)
FILES = {"onnx": "model.onnx", "onnx-int8": "model_qint8.onnx"}
MIN_COSINE = {
    "onnx": 0.9999,
    "onnx-int8": 0.9,
}  # worst probe text vs torch: catches broken exports; int8 loses ~0.05 on "ok"
PROBES = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France, on the Seine.",
    "Vitamin D deficiency is common in the elderly and is linked to bone loss and falls; "
    "supplementation trials report mixed effects on fracture risk across populations.",
    "ok",
]


class OnnxBackendError(ValueError):
    """A model the ONNX backends cannot serve; the message says why and suggests backend: torch."""


def require() -> None:
    """One clear line when the optional packages are missing (they are the `onnx` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"embedder backends onnx/onnx-int8 need onnx and onnxruntime ({e.name} missing): pip install 'synth[onnx]'"
        ) from None


def source_key(model: str, local: Path) -> str:
    """Folder name of a model's exports: readable name + source fingerprint + export version."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-60:] or "model"
    fp = folder_fingerprint(local) if local.is_dir() else hashlib.sha256(model.encode()).hexdigest()[:12]
    return f"{name}-{fp}-v{EXPORT_VERSION}"


def export_folder(model: str, local: Path) -> Path:
    return synth_home() / "models" / "onnx" / source_key(model, local)


def _text_output(st: Any) -> Any:
    """The model's transformer module, if it is an encoder whose text output is last_hidden_state."""
    first = st[0] if len(st) else None
    config = getattr(first, "modality_config", {}).get("text") if first is not None else None
    if config != {"method": "forward", "method_output_name": "last_hidden_state"} or not hasattr(first, "model"):
        raise OnnxBackendError(
            "the onnx backends serve encoder models whose first module is a Transformer giving "
            "last_hidden_state; use backend: torch for this model"
        )
    return first


def _input_names(st: Any) -> list[str]:
    enc = st.tokenizer(PROBES[:2], padding=True, return_tensors="pt")
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]


def _export_fp32(st: Any, target: Path) -> None:
    """torch.onnx.export of the transformer (dynamic batch and length), then ORT's fusions for BERT-likes."""
    import torch

    module = _text_output(st).model
    names = _input_names(st)
    enc = st.tokenizer(PROBES[:2], padding=True, return_tensors="pt")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *inputs: Any) -> Any:
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    raw = target.with_name("raw.onnx")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    # The tracer's warnings (shape checks it records as constants, the exporter's own deprecation)
    # say nothing a user can act on: the probe check below is what tells whether the graph is right.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapped().eval(),
            tuple(enc[n] for n in names),
            str(raw),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles BERT-likes well
        )
    config = module.config
    heads, hidden = getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0)
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(str(target))
        raw.unlink()
    except Exception:  # an architecture the offline fuser does not know: the plain graph still runs
        raw.rename(target)


def _quantize(fp32: Path, target: Path) -> None:
    """Dynamic int8 quantization of the matmul weights (the fused attention's included), per channel.

    The word-embedding table stays float32: quantizing it too (ONNX Runtime's default, and
    sentence-transformers' avx512_vnni config) cost MiniLM 0.0031 nDCG@10 on NFCorpus and buys no
    speed (it is a lookup); without it int8 scores within 0.0001 of torch at the same 2.2x
    (benchmarks/README.md, embed_backends.py).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(target),
        op_types_to_quantize=["MatMul", "Attention"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops have no inferred type
    )


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def attach(st: Any, sess: Any) -> None:
    """Route the transformer's forward through the ONNX Runtime session; the rest of `st` is unchanged."""
    import torch

    names = [i.name for i in sess.get_inputs()]
    transformer = _text_output(st)

    def forward(*_: Any, **features: Any) -> dict[str, Any]:
        feeds = {n: features[n].cpu().numpy() for n in names}
        return {"last_hidden_state": torch.from_numpy(sess.run(None, feeds)[0])}

    transformer.model.forward = forward
    with torch.no_grad():  # the torch weights are never read again: free them (config and device stay)
        for param in transformer.model.parameters():
            param.data = torch.empty(0, dtype=param.dtype)


def _agreement(st_torch: Any, st_onnx: Any) -> float:
    """Worst cosine between torch and ONNX vectors of the probe texts."""
    import numpy as np

    a = st_torch.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    b = st_onnx.encode(PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return float(np.min(np.sum(a * b, axis=1)))


def _checked(st: Any, load: Any, path: Path, backend: str) -> dict[str, Any]:
    """Serve `path` in a fresh copy of the model and compare with torch; the export's metadata."""
    import onnxruntime
    import torch

    served = load()
    attach(served, session(path))
    cosine = _agreement(st, served)
    if cosine < MIN_COSINE[backend]:
        raise OnnxBackendError(
            f"the {backend} export disagrees with torch (worst probe cosine {cosine:.4f} < "
            f"{MIN_COSINE[backend]}); use backend: torch"
        )
    return {
        "backend": backend,
        "probe_min_cosine": round(cosine, 6),
        "version": EXPORT_VERSION,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def ensure_export(model: str, local: Path, backend: str, load: Any) -> tuple[Path, bool]:
    """The ONNX file for (`model`, `backend`), exported and checked once; (path, exported_now).

    `load(**model_kwargs)` builds the torch SentenceTransformer (called only when exporting).
    Files are written in a temp folder and moved into place, each model file before its `.json`
    marker: a crash or a racing process never leaves a half-written export that a later run trusts.
    """
    require()
    folder = export_folder(model, local)
    path = folder / FILES[backend]
    if (folder / f"{FILES[backend]}.json").is_file() and path.is_file():
        return path, False
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        started = time.perf_counter()
        st = load(model_kwargs={"attn_implementation": "eager"})  # the attention pattern ORT fuses
        fp32, done = folder / FILES["onnx"], []
        if not (fp32.is_file() and (folder / f"{FILES['onnx']}.json").is_file()):
            _export_fp32(st, tmp / FILES["onnx"])
            done.append(("onnx", tmp / FILES["onnx"]))
        else:
            shutil.copy2(fp32, tmp / FILES["onnx"])
        if backend == "onnx-int8":
            _quantize(tmp / FILES["onnx"], tmp / FILES[backend])
            done.append((backend, tmp / FILES[backend]))
        for name, file in done:
            meta = {"source": model, **_checked(st, load, file, name)}
            meta["export_seconds"] = round(time.perf_counter() - started, 1)
            file.with_name(f"{file.name}.json").write_text(json.dumps(meta, indent=1))
        for _, file in done:
            os.replace(file, folder / file.name)
            os.replace(file.with_name(f"{file.name}.json"), folder / f"{file.name}.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path, True
