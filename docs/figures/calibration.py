"""The calibration evidence behind the default per-subject null (docs/calibration.md).

Usage: python docs/figures/calibration.py [OUT_DIR] [N_SEEDS]
(defaults: the folder of this script, 200). In-process on scores drawn from planted plans
(`brainprop.stats.calibration.null_calibration`, no encoding): 8 subjects per seed, 99
surrogates per per-subject test, for 8 and 22 layers: type I error on `shuffled` and on
`smooth_null` at length-scales 1, 2, 4 under every per-subject null, and power on `backprop`
against the noise on r. Writes `calibration_nulls_{n}layers.png` and prints the rates as
Markdown tables. About 10 minutes on 2 shared cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from brainprop.brain import simulate as S
from brainprop.config import load_config
from brainprop.figures.calibration import null_figure
from brainprop.stats.calibration import null_calibration, rejection_rates
from brainprop.stats.nulls import NULLS

ROOT = Path(__file__).resolve().parents[2]
GROUP = {
    "atlas": "sim",
    "threshold": 0.95,
    "min_count": 3,
    "exclude": "nonpositive",
    "seed": 0,
    "n_permutations": 99,
    "n_boot": 1,
    "alpha": 0.05,
}
NOISES = (1.0, 0.6, 0.3, 0.1)  # SD of the noise on r; the tests' default is 0.3


def main(out: Path, n_seeds: int) -> None:
    demo = load_config(ROOT / "config" / "config.yaml", check_models=False)
    meg = S.params_from_config(demo["datasets"]["sim_backprop"])["meg"]
    pd.set_option("display.width", 200)
    for n_layers in (8, 22):
        depths = np.linspace(0, 1, n_layers)
        nulls = null_calibration(
            depths,
            meg,
            GROUP,
            NULLS,
            [("shuffled", None), ("smooth_null", 1.0), ("smooth_null", 2.0), ("smooth_null", 4.0)],
            n_seeds,
        ).assign(snr_fmri=1.0)
        power = pd.concat(
            [
                null_calibration(depths, meg, GROUP, NULLS, [("backprop", None)], n_seeds // 2, noise=noise).assign(
                    snr_fmri=1.0 / noise
                )
                for noise in NOISES
            ],
            ignore_index=True,
        )
        rates = rejection_rates(nulls, GROUP["alpha"])
        power_rates = rejection_rates(power, GROUP["alpha"])
        title = (
            f"planted scores, {n_layers} layers, 8 subjects, {n_seeds} seeds "
            f"(power: {n_seeds // 2}; SNR = 1 / noise SD)"
        )
        path = out / f"calibration_nulls_{n_layers}layers.png"
        null_figure(rates, str(path), GROUP["alpha"], title, power_rates)
        # A 256-colour palette, as docs/figures/update.py keeps the README's line plots small.
        image = Image.open(path).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        table = rates[rates["test"] != "T2"].assign(length=rates["length_scale"].fillna(0))
        print(f"\n## {n_layers} layers: per-subject type I error (length 0 = shuffled)\n")
        print(table.pivot_table(index=["test", "length"], columns="null", values="subject_rate").round(3).to_markdown())
        print("\ngroup Wilcoxon type I error\n")
        group = table[table["null"] == NULLS[0]]
        print(group.pivot_table(index="length", columns="test", values="group_rate").round(3).to_markdown())
        print(f"\n## {n_layers} layers: power on backprop (per-subject; group in the last column)\n")
        p = power_rates[power_rates["test"] != "T2"]
        print(p.pivot_table(index=["test", "snr_fmri"], columns="null", values="subject_rate").round(3).to_markdown())
        print(p[p["null"] == NULLS[0]].pivot_table(index="snr_fmri", columns="test", values="group_rate").to_markdown())


if __name__ == "__main__":
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    main(out_dir, int(sys.argv[2]) if len(sys.argv) > 2 else 200)
