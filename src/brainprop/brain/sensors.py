"""MEG and EEG sensor groups: which lobe a channel sits over, from its name (config `sensor_groups`).

A group is a list of regular expressions, each matched against the whole channel name
(`re.fullmatch`); a channel belongs to the group one of whose expressions matches, and to at
most one group (two matching groups are an error naming the channel). Channels no group
matches enter only the all-sensor rows. The brain stage writes each MEG target's group in the
target table's `roi` column ("" for none), and the encode stage summarises every group beside
all sensors (`brainprop.encoding.encode`).

`STANDARD_GROUPS` (config value `standard`) reads the two naming schemes of the supported
datasets:

- CTF (THINGS-MEG, the simulated CTF-275 array): `M` + hemisphere (`L`, `R`, `Z` for the
  midline) + the lobe letter `O`, `T`, `P`, `C` or `F` (MNE's CTF-275 layout, THINGS-MEG's
  `MLO11-1609`; DATASETS.md C.5: "the 3rd character is the sensor group");
- 10-20 / 10-10 EEG names (THINGS-EEG2's O1, POz, P7 …): by prefix, longest first: Fp, AF, F
  frontal; FC, C central; FT, T, TP temporal; CP, P parietal; PO, O, I occipital, each followed
  by a number or z. Fronto-central (FC) counts as central and parieto-occipital (PO) as occipital.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "GROUP_ORDER",
    "STANDARD_GROUPS",
    "check_sensor_groups",
    "grouped_sensors",
    "resolve_groups",
    "sensor_groups",
]

log = logging.getLogger(__name__)

_EEG_SUFFIX = r"(?:[0-9]+|[zZ])"

# group -> regular expressions (whole-name matches), in the order the tables list the groups
STANDARD_GROUPS: dict[str, list[str]] = {
    "occipital": [r"M[LRZ]O.*", rf"(?:PO|O|I){_EEG_SUFFIX}"],
    "temporal": [r"M[LRZ]T.*", rf"(?:FT|T|TP){_EEG_SUFFIX}"],
    "parietal": [r"M[LRZ]P.*", rf"(?:CP|P){_EEG_SUFFIX}"],
    "central": [r"M[LRZ]C.*", rf"(?:FC|C){_EEG_SUFFIX}"],
    "frontal": [r"M[LRZ]F.*", rf"(?:Fp|FP|AF|F){_EEG_SUFFIX}"],
}
GROUP_ORDER = tuple(STANDARD_GROUPS)

# config value -> the groups it names (a mapping is used as given)
_NAMED: dict[str, dict[str, list[str]]] = {"standard": STANDARD_GROUPS, "none": {}}


def resolve_groups(spec: str | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The groups a `sensor_groups` config value names: `standard`, `none`, or group -> expressions."""
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(f"sensor_groups {spec!r} unknown; expected one of {sorted(_NAMED)} or a mapping")
        return {k: list(v) for k, v in _NAMED[spec].items()}
    return {str(k): list(v) for k, v in spec.items()}


def check_sensor_groups(spec: str | Mapping[str, Sequence[str]], key: str) -> list[str]:
    """Problems with a `sensor_groups` value (unknown name, an expression that does not compile), naming `key`."""
    try:
        groups = resolve_groups(spec)
    except ValueError as err:
        return [f"config key {key}: {err}"]
    problems = []
    for group, patterns in groups.items():
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                problems.append(f"config key {key}.{group}: {pattern!r} is not a regular expression ({err})")
    return problems


def sensor_groups(names: Sequence[str], spec: str | Mapping[str, Sequence[str]] = "standard") -> np.ndarray:
    """The group of each channel name, "" where no group matches; (n_channels,) object array.

    Raises ValueError naming the channel when two groups match it.
    """
    groups = {g: [re.compile(p) for p in patterns] for g, patterns in resolve_groups(spec).items()}
    out = np.full(len(names), "", dtype=object)
    for i, name in enumerate(names):
        hits = [g for g, patterns in groups.items() if any(p.fullmatch(str(name)) for p in patterns)]
        if len(hits) > 1:
            raise ValueError(
                f"sensor {name!r} matches the sensor groups {hits}; expected at most one (config sensor_groups)"
            )
        if hits:
            out[i] = hits[0]
    return out


def grouped_sensors(sensors: np.ndarray, spec: str | Mapping[str, Sequence[str]] = "standard") -> np.ndarray:
    """The group of each MEG target from its sensor name, (n_targets,) object array; the counts are logged."""
    sensors = np.asarray(sensors, dtype=object)
    names, first = np.unique(sensors.astype(str), return_index=True)
    groups = dict(zip(names, sensor_groups(list(names), spec)))
    counts = pd.Series([groups[n] for n in names[np.argsort(first)]], dtype=object).value_counts().to_dict()
    empty = [g for g in resolve_groups(spec) if g not in counts]
    log.info("sensor groups (sensors per group; '' = in no group): %s", counts)
    if empty:
        log.warning("sensor groups %s match no sensor of this recording; they get no encoding rows", empty)
    return np.array([groups[str(s)] for s in sensors], dtype=object)
