# brainprop: do backpropagated gradients of vision models map onto the brain's hierarchy?
# Stages in pipeline order; each rule file holds one stage. See README.md and docs/.
from snakemake.utils import min_version

from brainprop.workflow import speed_up_planning

min_version("9.0")


# The demo config unless one is given with --configfile (Snakemake would merge the two).
if not config:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/stimuli.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/brain.smk"
include: "workflow/rules/encoding.smk"
include: "workflow/rules/hierarchy.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# Planning speed at scale (brainprop.workflow.speed_up_planning; README, "Scale").
speed_up_planning(workflow.rules)
