"""The statistics stage: the tests T1…E per subject and across subjects, comparisons, sensitivity,
calibration, and the run's tables (METHOD.md §6)."""
