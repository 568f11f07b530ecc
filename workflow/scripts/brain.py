from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.brain import run_simulated_subject

    run_simulated_subject(
        snakemake.input.plant, snakemake.input.layers, snakemake.output, snakemake.params.simulation,
        snakemake.params.seed, snakemake.wildcards.dataset, snakemake.wildcards.subject,
    )
