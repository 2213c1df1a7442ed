"""The one conversion of a generation's training set into the trainer's dataset rows (``training.trainer_rows``),
and the one place ``training.max_length`` is applied: over-long rows are left out there, counted in
``train_stats.json``'s ``overlong_skipped``, and the trainer neither filters nor truncates again."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_config
from datasets import Dataset

from iterdeploy_trl import training
from iterdeploy_trl.config import config_from_dict
from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.models import build_tokenizer, make_small_model
from iterdeploy_trl.prompts import build_prompt
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.training import trainer_rows

torch.set_num_threads(1)
TOK = build_tokenizer("blocksworld")
DOMAIN = domain_pddl("blocksworld")
TASKS = generate_tasks("blocksworld", 8, 0, size=(2, 3))


def _rows(with_ids: bool = True) -> list[dict]:
    """Curated rows as ``curate.training_rows`` makes them (the sampled ids: the plan's tokens and EOS)."""
    rows = []
    for t in TASKS:
        prompt, completion = build_prompt(DOMAIN, t.problem), "".join(a + "\n" for a in t.reference_plan)
        row = {"prompt": prompt, "completion": completion, "behaviour_logprob": -5.0, "task_id": t.id}
        if with_ids:
            row.update(prompt_ids=TOK(prompt)["input_ids"],
                       completion_ids=TOK(completion, add_special_tokens=False)["input_ids"] + [TOK.eos_token_id])
        rows.append(row)
    return rows


def test_rows_with_ids_become_the_trainers_input_ids_once():
    rows = _rows()
    lengths = [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the rows fit
    kept, skipped = trainer_rows(rows, TOK, limit)
    fits = [r for r, n in zip(rows, lengths, strict=True) if n <= limit]
    assert skipped == len(rows) - len(fits) > 0 and len(kept) == len(fits)
    for row, src in zip(kept, fits, strict=True):
        assert set(row) == {"input_ids", "completion_mask", "task_id", "behaviour_logprob"}  # one name for the ids
        assert row["input_ids"] == src["prompt_ids"] + src["completion_ids"]  # as sampled, no EOS added
        assert row["completion_mask"] == [0] * len(src["prompt_ids"]) + [1] * len(src["completion_ids"])
        assert (row["task_id"], row["behaviour_logprob"]) == (src["task_id"], src["behaviour_logprob"])


def test_text_rows_are_counted_as_the_trainer_tokenises_them(tmp_path):
    """Rows of trace files from before the ids keep their text; their length is TRL's (prompt + completion +
    EOS): the trainer, given the same max_length, would leave out exactly the same rows."""
    from iterdeploy_trl.trainers import ValidTraceSFTConfig, ValidTraceSFTTrainer

    rows = _rows(with_ids=False)
    lengths = [len(TOK(r["prompt"] + r["completion"] + TOK.eos_token)["input_ids"]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2] - 1  # a row of limit + 1 tokens (its EOS the one too many) is out
    kept, skipped = trainer_rows(rows, TOK, limit)
    assert skipped == sum(n > limit for n in lengths) > 0 and all(set(r) == {"prompt", "completion", "task_id", "behaviour_logprob"} for r in kept)
    args = ValidTraceSFTConfig(tmp_path, max_length=limit, report_to=[], use_cpu=True, bf16=False)
    trainer = ValidTraceSFTTrainer(make_small_model(TOK, "tiny", seed=0), args=args, processing_class=TOK,
                                   train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "completion")}
                                                                    for r in rows]))
    assert trainer.num_overlong_skipped == {"train": skipped}
    assert len(trainer.train_dataset) == len(kept)


def test_train_generation_filters_once_and_counts_it(tmp_path, monkeypatch):
    """The over-long rows are counted in train_stats.json; the trainer gets the rest in its pre-tokenised form
    and runs no filter of its own (its count stays empty)."""
    base = tmp_path / "base"
    make_small_model(TOK, "tiny", seed=0).save_pretrained(base)
    TOK.save_pretrained(base)
    rows = _rows()
    lengths = sorted(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)
    limit = lengths[-3]  # the two longest rows (or more, with ties) do not fit
    too_long = sum(n > limit for n in lengths)
    trainers = []
    monkeypatch.setattr(training, "quiet_trainer", lambda trainer, out: trainers.append(trainer))
    cfg = config_from_dict(tiny_run_config(base, training={"epochs": 1, "batch_size": 4, "max_length": limit}))
    stats = training.train_generation(cfg, base, rows, tmp_path / "model", seed=0)
    assert (stats["overlong_skipped"], stats["train_traces"]) == (too_long, len(rows) - too_long)
    (trainer,) = trainers
    assert trainer.num_overlong_skipped == {}  # the trainer's own filter never ran
    assert len(trainer.train_dataset) == len(rows) - too_long
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= limit


def test_every_row_too_long_is_one_clear_error(tmp_path):
    base = tmp_path / "base"
    make_small_model(TOK, "tiny", seed=0).save_pretrained(base)
    TOK.save_pretrained(base)
    cfg = config_from_dict(tiny_run_config(base, training={"max_length": 8}))
    with pytest.raises(training.RunError, match=r"every one of the 8 training traces is longer than "
                                                r"training\.max_length=8 tokens"):
        training.train_generation(cfg, base, _rows(), tmp_path / "model", seed=0)
