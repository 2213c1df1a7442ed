"""Blocksworld: ``domain.pddl``, its seeded generator (``generator``)."""
