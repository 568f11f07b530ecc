from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.encoding.encode import run_encode_shared

    w, p = snakemake.wildcards, snakemake.params
    identity = {"dataset": p.dataset, "model": w.model, "timm_name": p.timm_name, "signal": w.signal}
    run_encode_shared(snakemake.input, snakemake.output, identity, int(w.layer), p.encoding, p.subjects)
