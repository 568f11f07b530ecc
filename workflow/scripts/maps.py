from pathlib import Path

from brainprop.workflow import rule_log

with rule_log(snakemake.log[0]) as log:
    from brainprop.figures.maps import make_brain_map, make_glass_brain, make_meg_topomaps

    w, p, i = snakemake.wildcards, snakemake.params, snakemake.input
    subject_dirs = {Path(t).parent.name: Path(t).parent for t in i.targets}
    common = (i.scores, subject_dirs, i.encoding, p.out_dir, w.dataset, w.model, p.formats)
    if snakemake.rule == "brain_map":
        paths = make_brain_map(*common, fdr=p.fdr, radius_mm=p.radius_mm)
        paths += make_glass_brain(*common, best_layers=i.best_layers)
    else:
        paths = make_meg_topomaps(*common, tmax=i.tmax)
    log.info("%s written", [str(x) for x in paths])
