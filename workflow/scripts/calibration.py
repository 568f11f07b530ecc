from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stats.calibration import run_calibration

    run_calibration(snakemake.input, snakemake.output, snakemake.wildcards.dataset, dict(snakemake.params))
