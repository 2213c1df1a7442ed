"""Plan extraction from model completions (no VAL needed)."""

from __future__ import annotations

import time

import pytest

from iterdeploy_trl.extract import (
    extract_plan,
    normalise_action,
    parse_action_line,
    parse_plan,
    split_reasoning,
)

PLAN = ("(unstack b2 b1)", "(stack b2 b3)", "(pick-up b1)", "(stack b1 b2)")


# --- split_reasoning -------------------------------------------------------------------------------


def test_split_with_both_tags():
    assert split_reasoning("<think>hmm</think>\nanswer") == ("hmm", "\nanswer")


def test_split_only_closing_tag_means_everything_before_is_reasoning():
    # Qwen3-Thinking templates put <think> in the prompt, so the completion starts inside it.
    assert split_reasoning("let me think (pick-up b9)</think>the answer") == (
        "let me think (pick-up b9)",
        "the answer",
    )


def test_split_open_think_never_closed_has_empty_answer():
    assert split_reasoning("<think>still thinking (unstack b1 b2)") == ("still thinking (unstack b1 b2)", "")


def test_split_without_tags_whole_text_is_answer():
    assert split_reasoning("(a b)\n(c d)") == ("", "(a b)\n(c d)")


def test_split_second_think_left_open_is_not_answer():
    reasoning, answer = split_reasoning("<think>a</think>first answer<think>more (x y)")
    assert reasoning == "a" and answer == "first answer"


# --- line parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, actions",
    [
        ("(unstack b2 b1)", ("(unstack b2 b1)",)),
        ("  ( UNSTACK  B2   b1 )  ", ("(unstack b2 b1)",)),
        ("1. (unstack b2 b1)", ("(unstack b2 b1)",)),
        ("12) (unstack b2 b1)", ("(unstack b2 b1)",)),
        ("Step 3: (unstack b2 b1)", ("(unstack b2 b1)",)),
        ("- (unstack b2 b1)", ("(unstack b2 b1)",)),
        ("0: (unstack b2 b1) [1]", ("(unstack b2 b1)",)),
        ("0.000: (unstack b2 b1)  [1.000]", ("(unstack b2 b1)",)),
        ("(unstack b2 b1) ; free b1", ("(unstack b2 b1)",)),
        ("`(unstack b2 b1)`", ("(unstack b2 b1)",)),
        ("(unstack b2 b1) (stack b2 b3)", ("(unstack b2 b1)", "(stack b2 b3)")),
        ("(unstack b2 b1), (stack b2 b3)", ("(unstack b2 b1)", "(stack b2 b3)")),
        (
            "(push-to-goal player-01 stone-01 pos-02-03 pos-03-03 pos-04-03 dir-right)",
            ("(push-to-goal player-01 stone-01 pos-02-03 pos-03-03 pos-04-03 dir-right)",),
        ),
        (
            "(take_image rover0 waypoint3 objective1 camera0 high_res)",
            ("(take_image rover0 waypoint3 objective1 camera0 high_res)",),
        ),
    ],
)
def test_action_lines_are_normalised(line, actions):
    assert parse_action_line(line) == ("actions", actions)


@pytest.mark.parametrize(
    "line, kind",
    [
        ("", "blank"),
        ("   ; a comment", "blank"),
        ("Plan:", "other"),
        ("unstack b2 b1", "other"),
        ("First (unstack b2 b1), then stack.", "other"),
        ("(Note: this plan is optimal.)", "other"),
        ("(stack b1", "malformed"),
        ("()", "malformed"),
        ("((stack b1 b2))", "malformed"),
    ],
)
def test_non_action_lines(line, kind):
    assert parse_action_line(line)[0] == kind


def test_normalise_action_accepts_bare_actions():
    assert normalise_action("Unstack B2 B1") == "(unstack b2 b1)"
    assert normalise_action("(a b) (c d)") is None
    assert normalise_action("hello, world") is None


def test_parse_plan_strict():
    assert parse_plan("1. (unstack b2 b1)\n\n; c\n2. (stack b2 b3)\n") == (PLAN[:2], None)
    actions, error = parse_plan("(unstack b2 b1)\nPlan:\n(stack b2 b3)")
    assert actions == PLAN[:1] and "line 2" in error
    assert parse_plan(["unstack b2 b1", "(STACK b2 b3)"]) == (PLAN[:2], None)
    assert parse_plan(["(unstack b2 b1", "(stack b2 b3)"])[1].startswith("action 1")


# --- extract_plan ----------------------------------------------------------------------------------


def test_plain_plan():
    extraction = extract_plan("\n".join(PLAN))
    assert extraction.actions == PLAN and extraction.reason is None and extraction.found


def test_plan_only_from_the_answer_never_from_the_reasoning():
    reasoning = "\n".join(
        [
            "Let me think. Maybe:",
            "(pick-up b2)",
            "(stack b2 b1)",
            "No, b2 is not on the table.",
            "```",
            "(unstack b1 b2)",
            "```",
            "Hmm, wait.",
        ]
        * 50
    )
    completion = f"<think>{reasoning}</think>\n\nThe final plan is:\n```pddl\n" + "\n".join(PLAN) + "\n```\n"
    extraction = extract_plan(completion)
    assert extraction.actions == PLAN
    assert extraction.reasoning_chars == len(reasoning)


def test_truncated_completion_has_no_plan():
    extraction = extract_plan("<think>I could (unstack b2 b1) then\n(stack b2 b3)\n")
    assert extraction.actions == () and extraction.truncated
    assert "truncated" in extraction.reason


def test_last_code_block_with_actions_wins():
    completion = (
        "</think>A first try:\n```\n(pick-up b1)\n```\nBetter:\n```plan\n"
        + "\n".join(PLAN)
        + "\n```\nAnd in Python:\n```python\nprint('done')\n```\n"
    )
    assert extract_plan(completion).actions == PLAN


def test_echoed_pddl_block_is_not_a_plan():
    problem = (
        "```pddl\n(define (problem p) (:domain blocksworld)\n (:init\n  (ontable b1)\n  (clear b1))\n```"
    )
    assert extract_plan("```plan\n" + "\n".join(PLAN) + "\n```\nfor the task\n" + problem).actions == PLAN


def test_fenced_block_beats_later_loose_lines():
    completion = "```\n" + "\n".join(PLAN) + "\n```\nFor example (pick-up b1) alone:\n(pick-up b1)\n"
    assert extract_plan(completion).actions == PLAN


def test_last_run_of_action_lines_without_fences():
    completion = (
        "</think>Try 1:\n(pick-up b1)\n(stack b1 b2)\n\nThat fails. Final plan:\n"
        "1. (unstack b2 b1)\n\n2. (stack b2 b3) ; on b3\n3. (pick-up b1)\n4. (stack b1 b2)\n\nDone."
    )
    assert extract_plan(completion).actions == PLAN


def test_numbered_timed_and_commented_plan():
    completion = "; plan found\n0.000: (UNSTACK B2 B1) [1.000]\n1.000: (stack b2 b3) [1.000]\n; cost = 2\n"
    assert extract_plan(completion).actions == PLAN[:2]


def test_several_actions_on_one_line():
    assert extract_plan("Plan: \n(unstack b2 b1) (stack b2 b3)\n").actions == PLAN[:2]


def test_prose_without_plan():
    extraction = extract_plan("</think>I could not find a plan; the blocks are stuck (sorry).")
    assert extraction.actions == () and extraction.reason == "no action lines in the answer"


def test_malformed_action_line_inside_the_plan_is_reported():
    extraction = extract_plan("```\n(unstack b2 b1)\n(stack b2\n```")
    assert extraction.malformed and not extraction.found and "(stack b2" in extraction.reason


def test_unclosed_fence_runs_to_the_end():
    assert extract_plan("Plan:\n```\n(unstack b2 b1)\n(stack b2 b3)").actions == PLAN[:2]


def test_bytes_that_are_not_utf8():
    data = b"<think>\xff\xfe\x80 junk (pick-up b9)</think>\n(unstack b2 b1)\n\xc3(stack b2 b3)\n"
    extraction = extract_plan(data)
    assert extraction.actions[0] == "(unstack b2 b1)"
    assert extract_plan(b"\xff" * 100).reason is not None


def test_garbage_never_raises():
    for junk in [
        "",
        "((((((",
        ")))",
        "```",
        "```\n```",
        "\x00\x01",
        "(" * 10_000,
        "</think>",
        "<think>",
        "(a (b (c",
        "1." * 5000,
        "[" * 1000 + "(a b)",
    ]:
        assert isinstance(extract_plan(junk).reason, str | None)
    assert extract_plan(12345).reason.startswith("completion is a int")  # type: ignore[arg-type]


def test_one_megabyte_completion_is_bounded():
    # Bounds that catch quadratic scans or backtracking (minutes, gigabytes), not a timing benchmark:
    # CPU time of this process (steady on a shared machine) and peak Python memory.
    import tracemalloc

    noise = "(pick-up b1) maybe ((( step 1: ```\n" * 30_000  # about 1 MB of thinking
    tracemalloc.start()
    start = time.process_time()
    extraction = extract_plan("<think>" + noise + "</think>\n" + "\n".join(PLAN))
    assert extraction.actions == PLAN
    huge_answer = extract_plan("(unstack b2 b1) " * 70_000)  # 1.1 MB answer on one line
    assert huge_answer.reason.startswith("answer too long")
    for pathological in ["1. (a" + " b" * 500_000, "(" * 1_000_000, "((a b) " * 150_000, "```\n" * 250_000]:
        assert extract_plan(pathological, max_chars=2_000_000).reason is not None
    many = extract_plan("(x y)\n" * 170_000, max_chars=2_000_000, max_actions=1_000_000)
    assert len(many.actions) == 170_000
    cpu = time.process_time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cpu < 20.0, f"{cpu:.1f} s of CPU time for ~1 MB inputs"
    assert peak < 400 * 2**20, f"peak Python memory {peak / 2**20:.0f} MiB"


def test_too_many_actions():
    extraction = extract_plan("\n".join(["(pick-up b1)"] * 20), max_actions=10)
    assert extraction.actions == () and "too many actions" in extraction.reason
