"""The figures stage: figures drawn from the run's tables, brain maps, and the report.

Light to import: `catalog` names every figure without importing matplotlib (the Snakefile
reads it at every start); the drawing modules import matplotlib themselves.
"""
