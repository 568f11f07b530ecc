from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.encoding.encode import folds_table
    from brainprop.io import read_table, write_table

    p = snakemake.params
    folds = folds_table(read_table(snakemake.input.manifest), p.folds, p.seed, p.group_folds)
    log.info("images per fold: %s", folds["fold"].value_counts().sort_index().to_dict())
    write_table(snakemake.output.folds, folds)
