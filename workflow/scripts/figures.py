from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.figures import make_figures

    p = snakemake.params
    paths = make_figures(p.tables_dir, p.out_dir, p.formats, roi_levels=p.roi_levels)
    log.info("%d figure files written", len(paths))
