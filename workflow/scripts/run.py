"""Every rule's script: its stage's entry point `run_<rule>(*, inputs, outputs, params)`, logging to the rule's log."""

from brainprop.workflow import run_rule

run_rule(snakemake)
