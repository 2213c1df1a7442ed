"""A quiet console: one progress bar per stage and one summary line per generation.

By default (``quiet_session``) the libraries' own output goes to ``RUNDIR/run.log`` instead of the
console: transformers', TRL's, datasets', accelerate's and peft's log records and Python warnings, and their
progress bars ("Loading weights", "Writing model shards", "Tokenizing train dataset", "Building labels")
are switched off. A trainer shows one bar (``seed s gen g: train``, steps with rate and ETA) and sends its
log dicts to the log (and to the trackers of ``report_to``) instead of printing them (:func:`quiet_trainer`).
``--verbose`` leaves all of it as the libraries make it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_NAME = "run.log"
LIBRARIES = ("transformers", "trl", "datasets", "accelerate", "peft", "huggingface_hub", "torch",
             "iterdeploy_trl", "py.warnings")

_quiet = False
_progress = True
_verbose = False


def is_verbose() -> bool:
    """Inside ``quiet_session(verbose=True)``: the libraries' output is shown as they make it."""
    return _verbose


def is_quiet() -> bool:
    return _quiet


class _RunLogHandler(logging.FileHandler):
    """A file handler that opens its file at the first record (the run directory may not exist before).
    When the file cannot be written (a full disk), it says so in one line and drops the records after it,
    instead of logging's ``--- Logging error ---`` and a traceback for every record; the error that
    stops the run (if any) is the run's to report."""

    failed: bool = False

    def _open(self):  # type: ignore[no-untyped-def]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._give_up(exc)

    def close(self) -> None:
        try:  # closing flushes: on a full disk that fails too, and must not hide the run's own error
            super().close()
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        if not self.failed:
            print(f"[iterdeploy] cannot write the log {self.baseFilename} ({exc.strerror or exc}); the "
                  "libraries' log records are dropped from here on", file=sys.stderr, flush=True)
        self.failed = True


@contextlib.contextmanager
def quiet_session(run_dir: Path | None, *, verbose: bool = False, progress: bool = True,
                  rank: int = 0) -> Iterator[Path | None]:
    """While it lasts, library logs and warnings go to ``run_dir/run.log`` (another process of a launch:
    ``run.rank<r>.log``), library progress bars are off, and trainers show one bar (none if not
    ``progress``). ``verbose``: change nothing."""
    global _quiet, _progress
    global _verbose
    if verbose:
        was, _verbose = _verbose, True  # the libraries' output as they make it, "Loading weights" included
        try:
            yield None
        finally:
            _verbose = was
        return
    if run_dir is None:
        yield None
        return
    import datasets
    import transformers

    path = Path(run_dir) / (LOG_NAME if rank == 0 else f"run.rank{rank}.log")
    handler = _RunLogHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
    for name in LIBRARIES:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
        if logger.level in (logging.NOTSET,) or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    bars = (transformers.utils.logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled())
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.captureWarnings(True)
    _quiet, was_progress = True, _progress
    _progress = progress
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield path
    finally:
        _quiet, _progress = False, was_progress
        logging.captureWarnings(False)
        for logger, handlers, propagate, level in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()
        if bars[0]:
            transformers.utils.logging.enable_progress_bar()
        if bars[1]:
            datasets.enable_progress_bars()


def quiet_trainer(trainer: Any, model_dir: Path) -> Any:
    """In a quiet session, replace ``trainer``'s printing callbacks with one progress bar, ``seed <s> gen
    <g>: train`` for the model going to ``RUNDIR/seed_<s>/gen_<g>/model``, whose log dicts go to the run log.
    Outside one, leave the trainer as it is. Returns the trainer."""
    if not _quiet:
        return trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from iterdeploy_trl.rundir import model_location

    _, seed, gen = model_location(model_dir)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    label = "train" if seed is None else f"seed {seed} gen {gen}: train"
    trainer.add_callback(StageBar(label, progress=_progress))
    train = trainer.train

    def train_to_log(*args: Any, **kwargs: Any) -> Any:
        # what a tracker's callback prints (trackio announces its project and runs) goes to the log
        with contextlib.redirect_stdout(_LogWriter(logging.getLogger("iterdeploy_trl.train"))):
            return train(*args, **kwargs)

    trainer.train = train_to_log
    return trainer


class _LogWriter(io.TextIOBase):
    """A text stream whose lines become log records."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.buffer_ = logger, ""

    def write(self, text: str) -> int:
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)


def _stage_bar_class() -> type:
    from transformers.trainer_callback import TrainerCallback

    class _StageBar(TrainerCallback):
        """One tqdm bar over a trainer's optimizer steps; its log dicts go to the ``iterdeploy_trl`` log."""

        def __init__(self, desc: str, progress: bool = True) -> None:
            self.desc, self.progress, self.bar = desc, progress, None
            self.log = logging.getLogger("iterdeploy_trl.train")

        def on_train_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero and self.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", leave=False, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if state.is_world_process_zero and logs:
                self.log.info("%s step %d: %s", self.desc, state.global_step, logs)
                if self.bar is not None and "loss" in logs:
                    self.bar.set_postfix(loss=f"{float(logs['loss']):.3g}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _StageBar


def StageBar(desc: str, progress: bool = True) -> Any:  # noqa: N802 - built lazily: transformers is heavy
    """A trainer callback showing one progress bar (see :func:`quiet_trainer`)."""
    return _stage_bar_class()(desc, progress)


def step_reporter(desc: str, total: int, *, enabled: bool = True) -> Any:
    """``report(step, line, **postfix)`` for a long loop of steps: in a quiet session one progress bar (the
    lines go to the run log), else the lines printed as they come. ``report(None, "")`` closes it."""
    if not (enabled and _quiet and _progress):
        def plain(step: int | None, line: str, **postfix: float) -> None:
            if step is not None and enabled:
                print(line, flush=True)

        return plain
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    log = logging.getLogger("iterdeploy_trl.progress")

    def quiet(step: int | None, line: str, **postfix: float) -> None:
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        log.info(line)

    return quiet
