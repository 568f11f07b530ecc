"""The encoding stage: cross-validated ridge from one layer's features to one subject's targets.

Solvers (`_ridge`, `_banded`, on the array backends of `_backends`) are pure functions on
arrays; `encode` and `joint` turn them into per-target scores and summaries; `folds` holds the
dataset's outer folds; `files` the stage's file formats; `rules` its rule entry points.
"""
