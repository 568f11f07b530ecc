"""A dataset's outer cross-validation folds (identical for every layer, signal and subject) and a subject's rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._ridge import Fold

__all__ = ["folds_from_table", "folds_table", "make_folds", "subject_rows"]


def make_folds(n_samples: int, groups: np.ndarray | None, n_folds: int, seed: int) -> list[Fold]:
    """Outer cross-validation folds: shuffled KFold, or shuffled GroupKFold when groups are given.

    Parameters
    ----------
    n_samples : number of images, in manifest order.
    groups : (n_samples,) group key per image (e.g. source photograph), or None.
    n_folds : number of folds (>= 2).
    seed : random state of the shuffle.

    Returns
    -------
    list of (train, test) index arrays, identical to scikit-learn's `split` output.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}; expected at least 2")
    if n_samples < n_folds:
        raise ValueError(
            f"encoding.folds: {n_folds} folds, but only {n_samples} samples (images); set encoding.folds to at "
            f"most {n_samples}, then run snakemake again (the folds rule reruns with the new value)"
        )
    from sklearn.model_selection import GroupKFold, KFold

    X = np.zeros((n_samples, 1))
    if groups is None:
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(X))
    groups = np.asarray(groups)
    if groups.shape != (n_samples,):
        raise ValueError(f"groups has shape {groups.shape}, expected ({n_samples},) (one key per image)")
    n_groups = np.unique(groups).size
    if n_groups < n_folds:
        raise ValueError(
            f"encoding.folds: {n_folds} folds, but the images have {n_groups} groups (the manifest's group column) "
            f"and encoding.group_folds: true keeps each group in one fold; set encoding.folds to at most "
            f"{n_groups}, or encoding.group_folds: false, then run snakemake again (the folds rule reruns with "
            "the new value)"
        )
    return list(GroupKFold(n_folds, shuffle=True, random_state=seed).split(X, groups=groups))


def folds_table(samples: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> pd.DataFrame:
    """The outer folds of a dataset as a table: image_id, group, fold (the test fold of the image)."""
    groups = samples["group"].to_numpy() if grouped else None
    fold = np.full(len(samples), -1, dtype=np.int64)
    for k, (_, test) in enumerate(make_folds(len(samples), groups, n_folds, seed)):
        fold[test] = k
    return pd.DataFrame(
        {"image_id": samples["image_id"].to_numpy(), "group": samples["group"].to_numpy(), "fold": fold}
    )


def folds_from_table(table: pd.DataFrame, image_ids: np.ndarray) -> list[Fold]:
    """(train, test) index pairs for images in `image_ids` order from a `folds_table`.

    `image_ids` may be a subset of the table's images (a subject who saw only some of the image
    set): each image keeps its dataset-wide fold, so shared images fall in the same fold for every
    subject and groups never straddle train and test.
    """
    fold_of = pd.Series(table["fold"].to_numpy(), index=table["image_id"].to_numpy())
    ids = np.asarray(image_ids)
    unknown = ids[~np.isin(ids, fold_of.index)]
    if len(unknown):
        raise ValueError(
            f"the folds table has no fold for images {unknown[:5].tolist()} "
            f"({len(unknown)} in all); targets and folds must come from the same image set"
        )
    fold = fold_of.loc[ids].to_numpy()
    every = np.arange(len(fold))
    folds = [(every[fold != k], every[fold == k]) for k in np.unique(fold)]
    if len(folds) < 2:
        raise ValueError(f"{len(ids)} images fall in {len(folds)} fold(s); cross-validation needs at least 2")
    return folds


def subject_rows(feature_ids: np.ndarray, sample_ids: np.ndarray, features: str, samples: str) -> np.ndarray:
    """Rows of the feature matrices holding a subject's images, in the subject's order."""
    position = pd.Series(np.arange(len(feature_ids)), index=np.asarray(feature_ids))
    if not position.index.is_unique:
        raise ValueError(f"{features}: image ids repeat in the feature rows")
    missing = ~np.isin(sample_ids, position.index)
    if missing.any():
        raise ValueError(
            f"{samples}: {int(missing.sum())} image(s) have no features in {features} (e.g. "
            f"{np.asarray(sample_ids)[missing][:5].tolist()}); features and targets must follow the same manifest"
        )
    return position.loc[np.asarray(sample_ids)].to_numpy()
