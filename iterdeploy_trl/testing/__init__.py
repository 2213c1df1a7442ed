"""Test support that production code must not import: the kill-anywhere and full-disk harness
(:mod:`iterdeploy_trl.testing.killrun`, which drives the inert hooks of :mod:`iterdeploy_trl.faults`) and the
tiny chat model the tests load (:mod:`iterdeploy_trl.testing.chat_model`)."""
