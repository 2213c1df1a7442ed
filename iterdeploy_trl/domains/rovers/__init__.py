"""Rovers: ``domain.pddl``, its seeded generator (``generator``) and its compact-prompt extras (``prompt``)."""
