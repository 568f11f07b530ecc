from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stats.sensitivity import run_sensitivity

    run_sensitivity(snakemake.input, snakemake.output.sensitivity, snakemake.params.sensitivity)
