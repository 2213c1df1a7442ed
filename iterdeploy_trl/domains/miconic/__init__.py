"""Miconic (IPC-2023 learning track): ``domain.pddl`` and a seeded generator (``generator``)."""
