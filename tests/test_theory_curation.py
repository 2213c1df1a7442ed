"""The ``curation`` theory check (``iterdeploy_trl/theory/curation.py``): c(J) by hand, the attenuation-free
cosine of expectations on synthetic vectors, and on the tiny pretrained model: the reference draws are
independent of the curated one, c(Ĵ)-re-weighted REINFORCE is Σ_x c(Ĵ_x) × the task's REINFORCE (= plain
REINFORCE when every Ĵ = 1), the curated vector is the SUM of the curated traces' scores, and the check runs
end to end through the driver."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from iterdeploy_trl import theory as th

cu = importlib.import_module("iterdeploy_trl.theory.curation")  # the module (``theory.curation`` is the check)

torch.set_num_threads(1)


def test_c_weight_by_hand() -> None:
    # 0.98^8 = 0.8507630225817856 (0.98² = 0.9604, 0.9604² = 0.92236816, 0.92236816² = 0.85076302...)
    assert cu.c_weight(0.02, 8) == pytest.approx((1 - 0.8507630225817856) / 0.02, rel=1e-12)
    assert cu.c_weight(0.02, 8) == pytest.approx(7.4618, abs=1e-4)  # the "7.5 at J = 0.02"
    assert cu.c_weight(0.9, 8) == pytest.approx((1 - 1e-8) / 0.9, rel=1e-12)  # 0.1^8 = 1e-8: "1.1 at J = 0.9"
    assert cu.c_weight(0.5, 2) == pytest.approx(1.5, rel=1e-15)  # (1 − 0.25) / 0.5
    assert cu.c_weight(1.0, 8) == 1.0
    assert cu.c_weight(0.0, 8) == 8.0  # the limit: K
    assert cu.c_weight(1e-9, 8) == pytest.approx(8.0, rel=1e-6)  # continuous at 0
    assert all(cu.c_weight(j, 1) == pytest.approx(1.0, rel=1e-12) for j in (0.0, 0.1, 0.7, 1.0))  # K = 1: REINFORCE
    for j, k in ((1.5, 8), (-0.1, 8), (0.5, 0)):
        with pytest.raises(th.TheoryError, match="c\\(J\\) needs"):
            cu.c_weight(j, k)


def test_expected_cosine_is_the_cosine_of_the_expectations() -> None:
    gen = torch.Generator().manual_seed(0)
    dim = 2000
    mx = torch.randn(dim, generator=gen, dtype=torch.float64)
    other = torch.randn(dim, generator=gen, dtype=torch.float64)
    other -= (other @ mx) / (mx @ mx) * mx
    my = 0.6 * mx / mx.norm() + 0.8 * other / other.norm()  # cos(mx, my) = 0.6 exactly
    my = my * mx.norm()
    truth = float(mx @ my / (mx.norm() * my.norm()))
    assert truth == pytest.approx(0.6, abs=1e-12)
    # without noise it is the plain cosine
    assert cu.expected_cosine([(mx, mx)], [(my, my)]) == pytest.approx(truth, abs=1e-12)

    def noisy(mean: torch.Tensor, scale: float) -> torch.Tensor:
        return mean + scale * torch.randn(dim, generator=gen, dtype=torch.float64)

    # x and y of one draw share its noise (as a curated set and REINFORCE of the same samples do); the noise is
    # larger than the signal, so a single cross-draw cosine is pulled far below 0.6 and a same-draw one above
    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        shared = 1.5 * torch.randn(dim, generator=gen, dtype=torch.float64)
        return mx + shared, noisy(my, 0.1) + shared

    draws = [(draw(), draw()) for _ in range(200)]
    xs = [(a[0], b[0]) for a, b in draws]
    ys = [(a[1], b[1]) for a, b in draws]
    raw = sum(th.cosine(x1, y2) for (x1, _), (_, y2) in zip(xs, ys, strict=True)) / len(xs)
    same = sum(th.cosine(x1, y1) for (x1, _), (y1, _) in zip(xs, ys, strict=True)) / len(xs)
    assert raw < truth - 0.2 and same > truth + 0.2  # noise pulls one down, overlap pushes the other up
    assert cu.expected_cosine(xs, ys) == pytest.approx(truth, abs=0.05)
    iv = cu.expected_cosine_interval(xs[:20], ys[:20])
    assert iv["lo"] < iv["mean"] < iv["hi"] and iv["lo"] < truth < iv["hi"]


def test_random_direction_bound_is_the_quantile_of_random_cosines() -> None:
    gen = torch.Generator().manual_seed(0)
    for size in (3, 100, 1000):
        u = torch.randn(10000, size, generator=gen, dtype=torch.float64)
        v = torch.randn(size, generator=gen, dtype=torch.float64)
        cos = ((u @ v) / (u.norm(dim=1) * v.norm())).abs()
        simulated = float(torch.quantile(cos, 0.95))
        assert cu.random_direction_bound(size) == pytest.approx(simulated, rel=0.03), size
    assert cu.random_direction_bound(3) == pytest.approx(0.95, rel=1e-9)  # on S², |cos| is uniform on [0, 1]


@pytest.fixture(scope="module")
def setting(tiny_base_model, tmp_path_factory):
    """The tiny base model with the check's LoRA adapter, 3 tasks, and two independent draws of K = 4."""
    from iterdeploy_trl.deploy import TransformersBackend

    config = cu.CurationConfig(model_path=str(tiny_base_model), tasks=3, samples_per_task=4, max_new_tokens=40)
    model, tok, dom, tasks, prompts, params, prompt_ids = cu.sampling_setup(config, "curation")
    backend = TransformersBackend(model, tok)
    draws = [
        cu.sample_records(backend, dom, tasks, prompts, prompt_ids, config, cu.draw_seed(0, 0, d), f"d{d}")
        for d in range(2)
    ]
    return config, model, tok, params, draws, str(tmp_path_factory.mktemp("curation"))


def test_reference_draws_are_independent_of_the_curated_set(setting) -> None:
    config, _, _, _, (first, second), _ = setting
    seeds = {cu.draw_seed(0, r, d) for r in range(5) for d in range(cu.DRAWS_PER_REPEAT)}
    assert len(seeds) == 5 * cu.DRAWS_PER_REPEAT  # a fresh sampling seed for every draw
    assert len(first) == len(second) == config.tasks * config.samples_per_task
    assert {r.seed for r in first}.isdisjoint({r.seed for r in second})
    # fresh samples: the second draw is not the first one again
    assert [r.completion_ids for r in first] != [r.completion_ids for r in second]
    valid_first = [dataclasses.replace(r, valid=True, plan_length=len(r.completion_ids)) for r in first]
    chosen = cu.curate_draw(valid_first, seed=1)
    for rule in ("shortest", "random_valid"):
        assert len(chosen[rule]) == config.tasks  # one trace per (solved) task
        assert all(r.run == "d0" for r in chosen[rule])  # from its own draw, none from the reference draw
    assert [r.plan_length for r in chosen["shortest"]] == [
        min(r.plan_length for r in valid_first if r.task_id == t.task_id) for t in chosen["shortest"]
    ]


def _with_validity(records, pattern):
    return [dataclasses.replace(r, valid=v) for r, v in zip(records, pattern, strict=True)]


def test_cj_reinforce_is_the_task_reweighted_reinforce(setting) -> None:
    config, model, tok, params, (records, _), out = setting
    k = config.samples_per_task
    # every task at Ĵ = 1: c = 1, (d) is (c) exactly
    all_valid = _with_validity(records, [True] * len(records))
    rewards = cu.reward_vectors(all_valid, k, shuffle_seed=0)
    assert torch.equal(rewards["reinforce_cj"], rewards["reinforce"])
    vec = cu.reinforce_gradients(model, tok, all_valid, rewards, params, config, out)
    assert torch.equal(vec["reinforce_cj"], vec["reinforce"]) and vec["reinforce"].norm() > 0
    # Ĵ = 1/4, 1, 2/4 on the three tasks: (d) = (1/n) Σ_x c(Ĵ_x) × (task x's own REINFORCE, (1/K) Σ r g)
    pattern = [True, False, False, False] + [True] * 4 + [False, True, True, False]
    mixed = _with_validity(records, pattern)
    assert cu.solve_rates(mixed, k) == {records[0].task_id: 0.25, records[4].task_id: 1.0, records[8].task_id: 0.5}
    rewards = cu.reward_vectors(mixed, k, shuffle_seed=0)
    assert rewards["shuffled"].sum() == sum(pattern)
    full = cu.reinforce_gradients(model, tok, mixed, rewards, params, config, out)["reinforce_cj"]
    by_hand = torch.zeros_like(full)
    n_tasks = 3
    for x in range(n_tasks):
        part = mixed[x * k : (x + 1) * k]
        j = sum(pattern[x * k : (x + 1) * k]) / k
        own = cu.reinforce_gradients(model, tok, part, cu.reward_vectors(part, k, 0), params, config, out)
        by_hand += cu.c_weight(j, k) * own["reinforce"] / n_tasks
    assert float((full - by_hand).norm() / by_hand.norm()) < 1e-5
    plain = cu.reinforce_gradients(model, tok, mixed, rewards, params, config, out)["reinforce"]
    assert th.cosine(full, plain) < 1 - 1e-4  # the re-weighting turns the direction (c = 2.73, 1, 1.88)


def test_curated_vector_is_the_sum_of_the_curated_scores(setting) -> None:
    config, model, tok, params, (records, _), out = setting
    k = config.samples_per_task
    mixed = _with_validity(records, [True, True, False, False] + [False] * 4 + [False, True, True, True])
    chosen = cu.curate_draw(mixed, seed=0)["random_valid"]
    assert len(chosen) == 2
    summed = cu.curated_gradient(model, tok, chosen, params, config, out)
    # Σ_chosen ∇log π = N × REINFORCE with reward 1 on the chosen samples only (N = all samples)
    picked = {(r.task_id, r.sample_index) for r in chosen}
    reward = torch.tensor([float((r.task_id, r.sample_index) in picked) for r in mixed], dtype=torch.float64)
    ref = cu.reinforce_gradients(model, tok, mixed, {"sel": reward}, params, config, out)["sel"] * len(mixed)
    assert float((summed - ref).norm() / ref.norm()) < 1e-4
    assert k == 4


def test_curation_check_runs_through_the_driver_and_the_cli_refuses_without_a_model(tiny_base_model) -> None:
    from iterdeploy_trl.cli import main

    config = th.TheoryConfig(
        pipeline=th.PipelineConfig(
            model_path=str(tiny_base_model), tasks=3, samples_per_task=2, repeats=2, max_new_tokens=40
        )
    )
    report = th.run_checks(config, ["curation"])
    (result,) = report.results
    data = result.data
    assert result.name == "curation" and len(result.rows) == len(cu.PAIRS) + 1
    assert all(row.kind == th.EMPIRICAL for row in result.rows)
    assert len(data["draws"]) == 2 * cu.DRAWS_PER_REPEAT
    assert len({d["seed"] for d in data["draws"]}) == 2 * cu.DRAWS_PER_REPEAT
    assert all(d["samples"] == 3 * 2 for d in data["draws"])
    assert set(data["pairs"]) == {f"{x}|{y}" for x, y in cu.PAIRS}
    assert 0 < data["random_direction_bound_95"] < 0.2
    assert main(["theory", "--check", "curation"]) == 2
