from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.encoding.encode import run_encode

    w, p = snakemake.wildcards, snakemake.params
    identity = {
        "dataset": w.dataset,
        "model": w.model,
        "timm_name": p.timm_name,
        "signal": w.signal,
        "subject": w.subject,
    }
    run_encode(snakemake.input, snakemake.output, identity, int(w.layer), p.encoding)
