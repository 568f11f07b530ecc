from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.figures.plots import make_figures, write_tests_html

    p = snakemake.params
    paths = make_figures(p.tables_dir, p.out_dir, p.formats, roi_levels=p.roi_levels, truth=p.truth, alpha=p.alpha)
    write_tests_html(p.tables_dir, snakemake.output.tests)
    log.info("%d figure files and the tests table written", len(paths))
