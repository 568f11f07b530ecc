"""The hierarchy stage: best layers, T_max and the spatial and temporal scores of each subject (METHOD.md §5)."""
