from pathlib import Path

from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    spec = snakemake.params.spec
    if spec["kind"] == "dataset":
        from brainprop.brain.datasets import write_dataset_imageset

        path = write_dataset_imageset(Path(snakemake.output.manifest).parent, spec["entry"], spec["dataset"])
    else:
        from brainprop.stimuli.rules import build_imageset

        path = build_imageset(Path(snakemake.output.manifest).parent, spec, snakemake.params.seed)
    log.info("image set written: %s", path)
