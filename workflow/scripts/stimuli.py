from pathlib import Path

from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.stimuli import build_imageset

    path = build_imageset(Path(snakemake.output.manifest).parent, snakemake.params.spec, snakemake.params.seed)
    log.info("image set written: %s", path)
