from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    spec = snakemake.params.spec
    if "entry" in spec:
        from brainprop.brain.datasets import run_subject

        run_subject(spec["entry"], snakemake.wildcards.subject, snakemake.input.manifest, snakemake.output)
    else:
        from brainprop.brain.rules import run_simulated_subject

        run_simulated_subject(
            snakemake.input.plant,
            snakemake.input.layers,
            snakemake.output,
            spec["simulation"],
            snakemake.params.seed,
            snakemake.wildcards.dataset,
            snakemake.wildcards.subject,
        )
