"""Copy the demo's key figures into docs/figures/ for the README, reduced to keep the repository small.

Usage: python docs/figures/update.py [FIGURES_DIR] [OUT_DIR]
(defaults: results/demo/figures and the folder of this script). Run by `make readme-figures`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

# The README's figures, in the order it shows them.
KEY_FIGURES = (
    "encoding_by_layer_sim_backprop_mobilenet_v2.png",
    "spatial_hierarchy_sim_backprop_mobilenet_v2.png",
    "tmax_sim_backprop_mobilenet_v2.png",
    "brain_map_sim_backprop_mobilenet_v2.png",
    "simulation_recovery_sim_backprop.png",
)
MAX_WIDTH = 1400
MAX_TOTAL_BYTES = 1_500_000


# Smooth colormaps on surfaces band visibly in a 256-colour palette; line plots lose nothing.
FULL_COLOUR = {"brain_map_sim_backprop_mobilenet_v2.png"}


def reduce(source: Path, target: Path) -> int:
    """Write `source` to `target` at most MAX_WIDTH px wide (palette unless in FULL_COLOUR); return its size."""
    image = Image.open(source).convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    if source.name not in FULL_COLOUR:
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(target, optimize=True)
    return target.stat().st_size


def main(figures_dir: Path, out_dir: Path) -> None:
    """Reduce every key figure; fail when one is missing or the total exceeds MAX_TOTAL_BYTES."""
    missing = [name for name in KEY_FIGURES if not (figures_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{figures_dir}: missing {missing}; run the demo first (make demo)")
    total = 0
    for name in KEY_FIGURES:
        size = reduce(figures_dir / name, out_dir / name)
        total += size
        print(f"{out_dir / name}: {size / 1000:.0f} kB")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"README figures total {total / 1e6:.2f} MB; keep them under {MAX_TOTAL_BYTES / 1e6} MB")
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    main(args[0] if args else Path("results/demo/figures"), args[1] if len(args) > 1 else Path(__file__).parent)
