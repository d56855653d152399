"""EnginePool on the real vLLM CPU engine (one two-engine pool for the whole session)."""

from __future__ import annotations

import pytest

from promptsearch.pipelines.engine.sampling import Sampling
from tests.conftest import engine_core_pids

PROMPTS = [
    "日本の首都は",
    "富士山の高さは",
    "今日はとても良い天気なので、",
    "猫と犬の違いについて説明します。まず、",
    "大阪の名物といえば",
    "昔々、ある村に",
    "東京タワーは",
    "明日の予定は、",
]


@pytest.mark.engine
def test_outputs_in_input_order_with_per_request_sampling(pool) -> None:
    samplings = [Sampling(max_tokens=1 + i % 4) for i in range(len(PROMPTS))]
    gens = pool.generate(PROMPTS, samplings)
    tok = pool.tokenizer
    assert len(gens) == len(PROMPTS)
    for prompt, sampling, gen in zip(PROMPTS, samplings, gens, strict=True):
        assert gen.ok, gen.error
        assert gen.prompt_tokens == len(tok(prompt).input_ids)
        assert gen.output_tokens <= sampling.max_tokens
        if gen.finish_reason == "length":
            assert gen.output_tokens == sampling.max_tokens
        assert gen.seconds > 0


@pytest.mark.engine
def test_greedy_is_identical_across_runs_and_token_counts_match(pool) -> None:
    first = pool.generate(PROMPTS, Sampling(max_tokens=24))
    second = pool.generate(PROMPTS, Sampling(max_tokens=24))
    assert [g.text for g in first] == [g.text for g in second]
    assert all(g.text for g in first)
    tok = pool.tokenizer
    for g in first:
        retokenized = len(tok(g.text, add_special_tokens=False).input_ids)
        assert abs(retokenized - g.output_tokens) <= 2  # detokenise/retokenise may merge
        if g.finish_reason == "length":
            assert g.output_tokens == 24


@pytest.mark.engine
def test_seeded_sampling_is_reproducible(pool) -> None:
    sampled = Sampling(temperature=1.0, top_p=0.95, max_tokens=24, seed=1234)
    a = pool.generate(PROMPTS, sampled)
    b = pool.generate(PROMPTS, sampled)
    assert [g.text for g in a] == [g.text for g in b]
    other = pool.generate(PROMPTS, Sampling(temperature=1.0, top_p=0.95, max_tokens=24, seed=99))
    assert [g.text for g in a] != [g.text for g in other]


@pytest.mark.engine
def test_stop_sequence_is_honoured(pool) -> None:
    gens = pool.generate(PROMPTS, Sampling(max_tokens=64, stop=("。", "、")))
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert stopped, [g.text for g in gens]
    for g in gens:
        assert "。" not in g.text and "、" not in g.text


@pytest.mark.engine
def test_each_row_honours_its_own_stop_and_max_tokens(pool) -> None:
    free = pool.generate(PROMPTS, Sampling(max_tokens=24))
    # Row i stops at a character of its own free output (a different one per row), or at
    # max_tokens = 3 + i where its output has no usable character.
    samplings, expected = [], []
    for i, g in enumerate(free):
        stop = g.text[2 + i % 3] if len(g.text) > 2 + i % 3 and g.text[2 + i % 3].strip() else None
        if stop is not None:
            samplings.append(Sampling(max_tokens=24, stop=(stop,)))
            expected.append(("stop", g.text[:g.text.index(stop)]))
        else:
            samplings.append(Sampling(max_tokens=3 + i))
            expected.append(("length", None))
    assert sum(kind == "stop" for kind, _ in expected) >= 4, [g.text for g in free]
    gens = pool.generate(PROMPTS, samplings)
    for i, (gen, (kind, text), sampling) in enumerate(zip(gens, expected, samplings,
                                                         strict=True)):
        if kind == "stop":
            assert gen.finish_reason == "stop" and gen.text == text, (i, gen, sampling)
        else:
            assert gen.output_tokens == sampling.max_tokens, (i, gen)


@pytest.mark.engine
def test_two_engines_give_the_same_greedy_outputs_as_one(pool) -> None:
    import ray

    assert pool.engines == 2
    assert len(engine_core_pids()) >= 2
    prompts = [f"{i}. {p}" for i in range(3) for p in PROMPTS]  # distinct: none is deduplicated
    sampling = Sampling(max_tokens=20)
    before = [info["requests"] for info in pool.engine_info()]
    spread = pool.generate(prompts, sampling)
    served = [b - a for a, b in zip(before, [i["requests"] for i in pool.engine_info()],
                                     strict=True)]
    assert min(served) > 0 and sum(served) == len(prompts), served  # both engines worked
    batch = [(pool.tokenize(p), sampling) for p in prompts]
    for actor in pool._actors:  # each engine alone, on every prompt
        alone = ray.get(actor.generate.remote(batch))
        assert_same_greedy([g.text for g in spread], [g.text for g in alone])


def assert_same_greedy(ours: list[str], theirs: list[str]) -> None:
    """Greedy outputs of one prompt set under two batch layouts. vLLM's CPU kernels are not
    batch-invariant (it has no CPU batch-invariant mode), so a row batched with other rows can
    change a token, and greedy decoding goes its own way from there (seen: 3 rows of 8 with 16
    tokens). So: at least half the rows identical, and every row closest to its own
    counterpart (the longest common prefix), which rows mixed up or generated from the wrong
    prompt would not be."""
    assert len(ours) == len(theirs)
    pairs = list(zip(ours, theirs, strict=True))
    assert sum(a == b for a, b in pairs) >= 0.5 * len(ours), pairs
    for i, mine in enumerate(ours):
        shared = [_shared_prefix(mine, other) for other in theirs]
        assert shared[i] == max(shared), (i, pairs[i], shared)


def _shared_prefix(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False))
                 if x != y), min(len(a), len(b)))


@pytest.mark.engine
def test_work_is_spread_over_both_engines(pool) -> None:
    pool_small_chunks = pool.chunk_tokens
    pool.chunk_tokens = 64  # many chunks, so both engines must pull work
    try:
        before = [info["requests"] for info in pool.engine_info()]
        distinct = [f"{i}. {p}" for i in range(4) for p in PROMPTS]  # repeats are sent once
        pool.generate(distinct, Sampling(max_tokens=8))
        after = [info["requests"] for info in pool.engine_info()]
    finally:
        pool.chunk_tokens = pool_small_chunks
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == len(PROMPTS) * 4
    assert min(served) > 0, served


@pytest.mark.engine
def test_one_bad_request_fails_only_its_row(pool) -> None:
    too_long = "あ" * 10000  # 5001 tokens: beyond the 4096-token context of the session pool
    chat_on_base_model = [{"role": "user", "content": "こんにちは"}]
    gens = pool.generate([PROMPTS[0], too_long, chat_on_base_model, PROMPTS[1]],
                         Sampling(max_tokens=8))
    assert gens[0].ok and gens[3].ok
    assert not gens[1].ok and "context" in gens[1].error
    assert not gens[2].ok and "chat template" in gens[2].error


@pytest.mark.engine
def test_a_row_the_engine_rejects_fails_alone(pool) -> None:
    import ray

    good = pool.tokenize(PROMPTS[0])
    out_of_vocabulary = [*good, len(pool.tokenizer) + 1000]  # past the checks before the engine
    gens = ray.get(pool._actors[0].generate.remote(
        [(good, Sampling(max_tokens=8)), (out_of_vocabulary, Sampling(max_tokens=8)),
         (good, Sampling(max_tokens=8))]))
    assert gens[0].ok and gens[2].ok and gens[0].text == gens[2].text
    assert not gens[1].ok and gens[1].finish_reason == "error" and gens[1].error


@pytest.mark.engine
def test_each_engine_loaded_its_model_exactly_once(pool) -> None:
    pids = [info["pid"] for info in pool.engine_info()]
    before = [info["requests"] for info in pool.engine_info()]
    for i in range(30):  # each call is split so that it reaches both engines
        pool.generate([f"{i}-{j}. {p}" for j, p in enumerate(PROMPTS)], Sampling(max_tokens=4))
    after = [info["requests"] for info in pool.engine_info()]
    assert all(b - a >= 30 for a, b in zip(before, after, strict=True)), (before, after)
    assert [info["pid"] for info in pool.engine_info()] == pids
    assert pool.load_counts() == [1] * pool.engines


@pytest.mark.engine
def test_engines_are_bound_to_different_cores(pool) -> None:
    cores = [tuple(info["cores"]) for info in pool.engine_info()]
    assert len(set(cores)) == pool.engines, cores


def test_sampling_validation_names_the_field() -> None:
    from promptsearch.pipelines.errors import UserError

    with pytest.raises(UserError, match=r"top_p must be in \(0, 1\], got 1.5"):
        Sampling(top_p=1.5)
    with pytest.raises(UserError, match="unknown field 'temp'"):
        Sampling.from_dict({"temp": 0.5})


@pytest.mark.engine
def test_repeated_requests_in_one_call_are_generated_once(pool) -> None:
    before = sum(info["requests"] for info in pool.engine_info())
    gens = pool.generate([PROMPTS[0], PROMPTS[1], PROMPTS[0]], Sampling(max_tokens=8))
    after = sum(info["requests"] for info in pool.engine_info())
    assert after - before == 2
    assert gens[2].text == gens[0].text and gens[2].cached and not gens[0].cached


@pytest.mark.engine
def test_unseeded_sampled_repeats_are_each_generated(pool) -> None:
    before = sum(info["requests"] for info in pool.engine_info())
    sampled = Sampling(temperature=1.0, max_tokens=16)  # no seed: every ask is a new draw
    gens = pool.generate([PROMPTS[0]] * 4, sampled)
    assert sum(info["requests"] for info in pool.engine_info()) - before == 4
    assert not any(g.cached for g in gens)
    assert len({g.text for g in gens}) > 1, [g.text for g in gens]
