"""Denial of service from input and small hardening (issue 12 §5, §7): YAML aliases, regular
expressions from data, --stop decoding, non-finite sampling values, the per-user core-lock
directory. No engine: the generate command runs in-process on a fake pool."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from promptsearch.pipelines.data.readers import read_yaml
from promptsearch.pipelines.engine.actor import Generation, _claim_cores
from promptsearch.pipelines.engine.sampling import Sampling
from promptsearch.pipelines.errors import UserError
from promptsearch.pipelines.ifeval import content
from promptsearch.pipelines.ifeval import format as fmt
from promptsearch.search import cli, runtime

# -- YAML aliases ---------------------------------------------------------------------------

LAUGHS = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.timeout(30)
def test_yaml_billion_laughs_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS) < 1000
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"^{re.escape(str(path))}: YAML aliases expand to "
                                        r"more than 100,000 values; write the values out"):
        read_yaml(path)
    assert time.monotonic() - start < 5


def test_a_yaml_alias_inside_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(UserError, match=r"space\.yaml line 1: a YAML alias refers to a node "
                                        r"containing itself"):
        read_yaml(path)


def test_ordinary_yaml_and_modest_aliases_still_load(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("base: &base {temperature: 0.0, max_tokens: 32}\n"
                    "sampling:\n  - *base\n  - {<<: *base, temperature: 0.7}\n")
    assert read_yaml(path) == {"base": {"temperature": 0.0, "max_tokens": 32},
                               "sampling": [{"temperature": 0.0, "max_tokens": 32},
                                            {"temperature": 0.7, "max_tokens": 32}]}
    big = tmp_path / "big.yaml"  # many values written out: no alias, no limit
    big.write_text("xs: [" + ", ".join(str(i) for i in range(150_000)) + "]\n")
    assert len(read_yaml(big)["xs"]) == 150_000
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: qa\ntemplate: [plain\n")
    with pytest.raises(UserError, match=r"bad\.yaml line 3 column 1: invalid YAML"):
        read_yaml(bad)


def test_deeply_nested_yaml_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(UserError, match=r"deep\.yaml"):
        read_yaml(path)


# -- regular expressions from data ----------------------------------------------------------

@pytest.mark.timeout(30)
def test_a_regex_section_spliter_is_matched_literally_and_does_not_hang() -> None:
    start = time.monotonic()
    value = "第1" + "a" * 40 + "c"
    assert fmt.multiple_sections(value, section_spliter="(a+)+b", num_sections=1) is False
    assert fmt.multiple_sections("第1(a+)+b 本文 第2(a+)+b 本文", section_spliter="(a+)+b",
                                 num_sections=2)
    assert fmt.multiple_sections("第1.x 第2.x", section_spliter=".", num_sections=2)
    assert not fmt.multiple_sections("第1ax 第2bx", section_spliter=".", num_sections=1)
    assert time.monotonic() - start < 5


def test_section_spliters_of_the_data_behave_as_in_the_reference() -> None:
    """The reference puts the spliter into the regex unescaped: same verdicts for 章, 節."""
    texts = ["第1章 はじめに\n第2章 本論\n第３章 結論", "第1節 a 第2節 b", "第一章 漢数字", "",
             "第1章第2章", " 第12章 \n第13章"]
    for spliter in ("章", "節"):
        for text in texts:
            reference = len(re.split(r"\s?第[\d\uFF10-\uFF19]+" + spliter + r"\s?", text)) - 1
            for n in range(4):
                assert fmt.multiple_sections(text, section_spliter=spliter,
                                             num_sections=n) == (reference >= n)


def _reference_postscript(value: str, marker: str) -> bool:
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return bool(re.findall(pattern, value, flags=re.IGNORECASE | re.MULTILINE))


def test_postscript_keeps_the_reference_verdicts() -> None:
    texts = ["本文\nP.S. 追伸", "本文\np. s. x", "P.P.S 追", "p.p. s", "P.P.S. x", "追伸: よろしく",
             "本文", "", "\n\n  P.S.", "PS. x", "a P.S.", "P.\nS.", "pp.s", "ｐ.ｓ."]
    for marker in ("P.S.", "P.P.S", "P.P.S.", "追伸", "", "p.s"):
        for text in texts:
            assert content.postscript(text, postscript_marker=marker) == \
                _reference_postscript(text, marker), (marker, text)


@pytest.mark.timeout(30)
def test_postscript_is_not_quadratic_on_whitespace() -> None:
    start = time.monotonic()
    assert not content.postscript(" " * 200_000 + "x", postscript_marker="P.S.")
    assert not content.postscript("\n" * 200_000, postscript_marker="追伸")
    assert time.monotonic() - start < 2


# -- --stop on the generate command ---------------------------------------------------------

def _generate_with_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        *stops: str) -> tuple[Any, list[Sampling]]:
    seen: list[Sampling] = []

    class FakePool:
        def generate(self, requests: list[Any], sampling: Sampling, **_: Any) -> list[Generation]:
            seen.append(sampling)
            return [Generation(text="答え", prompt_tokens=1, output_tokens=1,
                               finish_reason="stop", seconds=0.0) for _ in requests]

    @contextlib.contextmanager
    def fake_engine_pool(**_: Any) -> Any:
        yield FakePool()

    monkeypatch.setattr(runtime, "engine_pool", fake_engine_pool)
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "こんにちは"}) + "\n")
    args = ["generate", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]
    for stop in stops:
        args += ["--stop", stop]
    result = CliRunner().invoke(cli.main, args)
    return result, seen


@pytest.mark.parametrize(("typed", "decoded"), [
    ("。", "。"), ("終わり", "終わり"), ("\\", "\\"), ("\\n", "\n"), ("\\t", "\t"),
    ("\\\\", "\\"), ("\\\\n", "\\n"), ("a\\x41", "a\\x41"), ("回答\\n", "回答\n"), ("é", "é"),
])
def test_stop_strings_decode_only_newline_tab_and_backslash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, typed: str, decoded: str) -> None:
    result, seen = _generate_with_stop(tmp_path, monkeypatch, typed)
    assert result.exit_code == 0, result.output
    assert seen[0].stop == (decoded,)


def test_stop_help_says_which_escapes_are_decoded() -> None:
    result = CliRunner().invoke(cli.main, ["generate", "--help"])
    assert "\\n (newline), \\t (tab) and \\\\ (backslash) are decoded" in \
        " ".join(result.output.split())


# -- non-finite sampling values -------------------------------------------------------------

@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_sampling_values_are_refused_naming_the_field(field: str,
                                                                 value: float) -> None:
    with pytest.raises(UserError, match=rf"^{field} must be a finite number, got -?(nan|inf)$"):
        Sampling(**{field: value})
    with pytest.raises(UserError, match=rf"^best\.yaml: sampling: {field} must be a finite"):
        Sampling.from_dict({field: value}, where="best.yaml: sampling")


def test_nan_from_json_and_a_string_are_refused() -> None:
    data = json.loads('{"temperature": NaN}')  # Python's json accepts NaN and Infinity
    with pytest.raises(UserError, match="temperature must be a finite number, got nan"):
        Sampling.from_dict(data)
    with pytest.raises(UserError, match=r"top_p must be a finite number, got '0\.5'"):
        Sampling.from_dict({"top_p": "0.5"})
    assert Sampling(temperature=0.7, top_p=0.9, repetition_penalty=1).temperature == 0.7


def test_cli_refuses_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "engine_pool",
                        lambda **_: pytest.fail("no engine for bad input"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    result = CliRunner().invoke(cli.main, ["generate", str(tmp_path / "in.jsonl"),
                                           "--temperature", "nan"])
    assert result.exit_code == 2
    assert "error: temperature must be a finite number, got nan" in result.output


# -- the core-lock directory ----------------------------------------------------------------

def test_core_locks_live_in_a_private_per_user_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cores, handle = _claim_cores(1)
    assert handle is not None
    try:
        lockdir = tmp_path / f"promptsearch-cores-{os.getuid()}"
        assert lockdir.is_dir() and (lockdir.stat().st_mode & 0o777) == 0o700
        assert [p.name for p in lockdir.iterdir()] == [f"cores-{cores[0]}-{cores[0]}.lock"]
        if len(os.sched_getaffinity(0)) > 1:
            other, second = _claim_cores(1)
            assert other != cores and second is not None
            second.close()
    finally:
        handle.close()


def test_a_loose_own_lock_directory_is_tightened(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    lockdir = tmp_path / f"promptsearch-cores-{os.getuid()}"
    lockdir.mkdir(mode=0o777)
    lockdir.chmod(0o777)
    _, handle = _claim_cores(1)
    assert handle is not None
    handle.close()
    assert (lockdir.stat().st_mode & 0o777) == 0o700


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / f"promptsearch-cores-{os.getuid()}").symlink_to(target)
    caplog.set_level(logging.WARNING)
    cores, handle = _claim_cores(1)
    assert handle is None and len(cores) == 1
    assert list(target.iterdir()) == []
    assert any("is a symlink; not using it" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_lock_directory_owned_by_someone_else_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    lockdir = tmp_path / f"promptsearch-cores-{os.getuid()}"
    lockdir.mkdir(mode=0o700)
    os.chown(lockdir, 12345, 12345)
    caplog.set_level(logging.WARNING)
    _, handle = _claim_cores(1)
    assert handle is None and list(lockdir.iterdir()) == []
    assert any("owned by uid 12345" in r.getMessage() for r in caplog.records)
