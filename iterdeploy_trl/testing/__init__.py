"""Test support that production code must not depend on for results: fault injection hooks
(:mod:`iterdeploy_trl.testing.faults`) and the kill-anywhere harness (:mod:`iterdeploy_trl.testing.killrun`)."""
