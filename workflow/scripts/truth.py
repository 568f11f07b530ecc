from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.brain.rules import simulated_truth
    from brainprop.io import write_table

    p = snakemake.params
    truth = simulated_truth(snakemake.input.layers, p.simulation, p.subjects, p.seed, snakemake.wildcards.dataset)
    write_table(snakemake.output.truth, truth)
