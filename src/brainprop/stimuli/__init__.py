"""The stimuli stage: ordered image sets (the manifest) that index every feature and brain matrix."""
