# brainprop: do backpropagated gradients of vision models map onto the brain's hierarchy?
# Stages in pipeline order; each rule file holds one stage. See README.md and docs/.
from snakemake.utils import min_version

min_version("9.0")


# The demo config unless one is given with --configfile (Snakemake would merge the two).
if not config:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prefetch.smk"
include: "workflow/rules/stimuli.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/brain.smk"
include: "workflow/rules/encoding.smk"
include: "workflow/rules/joint.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/hierarchy.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# Planning speed at scale (README, "Scale"): Snakemake calls these functions once per job.
precompute_signatures(workflow.rules)
tune_gc()
