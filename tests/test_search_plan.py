"""The pure logic of the batched search: bracket gating, halving shapes, the space's size."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from promptsearch.search.halving import bracket_size, milestones, planned_chunk_runs
from promptsearch.search.plan import BracketPlan


def _fill(plan: BracketPlan, prefix: str) -> list[str]:
    bracket = plan.open()
    ids = [f"{prefix}{i}" for i in range(plan.sizes[bracket])]
    for trial_id in ids:
        plan.add(trial_id, bracket)
    return ids


def test_next_bracket_waits_for_the_first_rung_and_the_bracket_before_last() -> None:
    plan = BracketPlan([3, 3, 3])
    assert plan.may_open() and plan.told_at_open() == []
    a = _fill(plan, "a")
    assert not plan.may_open()  # bracket a's first rung is not decided
    plan.first_rung_decided(0, {"a1"})
    assert not plan.may_open()  # its losers have not finished yet
    plan.finish("a0")
    plan.finish("a2")
    assert plan.may_open()
    assert plan.told_at_open() == ["a0", "a2"]  # not a1, still running: timing-free
    b = _fill(plan, "b")
    plan.first_rung_decided(1, {"b0"})
    plan.finish("b1")
    plan.finish("b2")
    assert not plan.may_open()  # bracket a (a1) is not finished: c must not see it or not
    plan.finish("a1")
    assert plan.may_open()
    assert plan.told_at_open() == [*a, "b1", "b2"]
    _fill(plan, "c")
    assert not plan.may_open()  # no bracket left
    assert b[0] not in plan.finished


def test_without_overlap_a_bracket_waits_for_the_previous_to_finish() -> None:
    plan = BracketPlan([1, 1], overlap=False)
    _fill(plan, "a")
    assert not plan.may_open()
    plan.finish("a0")
    assert plan.may_open() and plan.told_at_open() == ["a0"]


def test_brackets_inside_tpe_startup_start_together() -> None:
    plan = BracketPlan([9, 9, 9], startup=10)
    a = _fill(plan, "a")
    assert plan.may_open() and plan.told_at_open() == []  # 9 trials before it: TPE is random
    _fill(plan, "b")
    assert not plan.may_open()  # 18 trials before c: it waits for the normal rule
    plan.first_rung_decided(1, {"b0"})
    for t in [*a, "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]:
        plan.finish(t)
    assert plan.may_open()
    assert plan.told_at_open() == [*a, *[f"b{i}" for i in range(1, 9)]]


def test_tpe_suggests_the_same_whatever_it_is_told_below_startup() -> None:
    """What the start-up rule rests on: below ``n_startup_trials`` finished trials TPE's
    suggestions do not depend on the outcomes it was told."""
    import optuna

    def suggestions(values: list[float]) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=3, constant_liar=True, n_startup_trials=10))
        first = [study.ask() for _ in range(9)]
        for trial in first:
            trial.suggest_categorical("t", ["a", "b", "c"])
            trial.suggest_int("k", 0, 4)
        for trial, value in zip(first, values, strict=False):  # the rest stay running
            study.tell(trial, value)
        later = [study.ask() for _ in range(7)]
        return [{"t": t.suggest_categorical("t", ["a", "b", "c"]),
                 "k": t.suggest_int("k", 0, 4)} for t in later]

    assert suggestions([float(i) for i in range(6)]) == suggestions([0.0] * 9)


def test_shrink_ends_the_plan_at_the_current_bracket() -> None:
    plan = BracketPlan([9, 7])
    plan.open()
    plan.shrink(0, 4)
    assert plan.sizes == [4]


@pytest.mark.parametrize(("max_t", "eta", "expected"), [
    (4, 3, [1, 3, 4]), (2, 3, [1, 2]), (1, 3, [1]), (8, 3, [1, 3, 8]), (9, 3, [1, 3, 9])])
def test_milestones(max_t: int, eta: int, expected: list[int]) -> None:
    assert milestones(max_t, eta) == expected


def test_planned_chunk_runs_matches_the_bracket_shape() -> None:
    # 16 trials, 4 chunks, eta 3: brackets of 9 and 7; 9*1 + 3*2 + 1*1 and 7*1 + 3*2 + 1*1
    assert bracket_size(4, 3) == 9
    assert planned_chunk_runs(16, 4, 3) == 16 + 14


def test_space_size_counts_what_suggest_can_give(tmp_path: Path) -> None:
    import optuna

    from promptsearch.pipelines.tasks import load_task
    from promptsearch.search.searcher import config_identity
    from promptsearch.search.space import SearchSpace

    task = load_task("qa")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "templates": ["jglue-extract", "plain"],
        "fewshot": {"k": [0, 1], "selector": ["first", "random"], "seed": [0, 1],
                    "order": ["as_selected", "reversed"]},
        "sampling": {"temperature": [0.0, 0.7], "top_p": [0.9, 1.0], "max_tokens": [8]},
    }))
    space = SearchSpace.load(task, path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in itertools.repeat(None, 3000):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
        seen.add(config_identity(space.to_config(task, trial.params).to_dict()))
    # templates 2 x shots (1 + first 2 orders + random 2 orders x 2 seeds = 7) x decoding 3
    assert space.size() == len(seen) == 2 * 7 * 3


class _Controller:
    """Records what the scheduler asks Tune to do with trials it held."""

    def __init__(self) -> None:
        self.continued: list[str] = []
        self.stopped: list[str] = []

    def _schedule_trial_train(self, trial: _Trial) -> None:
        self.continued.append(trial.trial_id)

    def stop_trial(self, trial: _Trial) -> None:
        self.stopped.append(trial.trial_id)


class _Trial:
    def __init__(self, trial_id: str, recover: bool = False) -> None:
        self.trial_id = trial_id
        self.recover = recover

    def should_recover(self) -> bool:
        return self.recover


def _one_bracket(n: int) -> tuple[BracketPlan, list[_Trial], object]:
    """A bracket of ``n`` trials, all suggested, under halving over 4 chunks with eta 3."""
    from promptsearch.search.halving import SyncHalvingScheduler

    plan = BracketPlan([n])
    trials = [_Trial(f"t{i}") for i in range(n)]
    _fill(plan, "t")
    return plan, trials, SyncHalvingScheduler(plan=plan, max_t=4, reduction_factor=3)


def test_halving_holds_a_rung_until_complete_then_keeps_the_best_third() -> None:
    from ray.tune.schedulers import TrialScheduler as TS

    plan, trials, scheduler = _one_bracket(6)
    tc = _Controller()
    scores = [5.0, 9.0, 1.0, 9.0, 3.0, 7.0]
    decisions = [scheduler.on_trial_result(tc, t, {"chunk": 1, "score": s})
                 for t, s in zip(trials[:-1], scores, strict=False)]
    assert decisions == [TS.NOOP] * 5  # held: t5 has not reached the rung
    last = scheduler.on_trial_result(tc, trials[5], {"chunk": 1, "score": scores[5]})
    # keep ceil(6/3) = 2: the two 9.0s (t1 before t3 on ties, both kept); t5's 7.0 is out
    assert last == TS.STOP
    assert tc.continued == ["t1", "t3"]
    assert tc.stopped == ["t0", "t2", "t4"]
    assert plan.promoted[0] == {"t1", "t3"}
    # chunk 2 is not a rung; chunk 3 is: t3 waits for t1, and a retried t1 that reports
    # chunk 1 again is told what was decided
    assert scheduler.on_trial_result(tc, trials[1], {"chunk": 2, "score": 8.0}) == TS.CONTINUE
    assert scheduler.on_trial_result(tc, trials[1], {"chunk": 1, "score": 9.0}) == TS.CONTINUE
    assert scheduler.on_trial_result(tc, trials[3], {"chunk": 3, "score": 6.0}) == TS.NOOP
    assert scheduler.on_trial_result(tc, trials[1], {"chunk": 3, "score": 6.5}) == TS.CONTINUE
    assert tc.stopped[-1] == "t3"


def test_halving_decides_without_a_trial_that_failed_for_good() -> None:
    from ray.tune.schedulers import TrialScheduler as TS

    _, trials, scheduler = _one_bracket(3)
    tc = _Controller()
    assert scheduler.on_trial_result(tc, trials[0], {"chunk": 1, "score": 1.0}) == TS.NOOP
    assert scheduler.on_trial_result(tc, trials[1], {"chunk": 1, "score": 2.0}) == TS.NOOP
    scheduler.on_trial_error(tc, _Trial("t2", recover=True))  # retried: still awaited
    assert tc.continued == []
    scheduler.on_trial_error(tc, trials[2])  # failed for good
    assert tc.continued == ["t1"] and tc.stopped == ["t0"]
