from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.encoding.joint import run_joint

    w = snakemake.wildcards
    identity = {"dataset": w.dataset, "model": w.model, "subject": w.subject}
    run_joint(snakemake.input, snakemake.output, identity, int(w.layer), snakemake.params.joint)
