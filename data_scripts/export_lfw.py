#!/usr/bin/env python
"""Write the LFW face crops that ship with scikit-image as image files, with a manifest.

The 100 faces of ``skimage.data.lfw_subset()`` (grayscale, center-cropped to 24×24 and resized to --size), split
as ``ddpm_ref.data.lfw_faces`` splits them (fixed 90/10). The result is a folder any image-folder trainer reads:

    python data_scripts/export_lfw.py --out data/lfw --size 32
    python -m ddpm_ref train --preset lfw-tiny --data data/lfw/train --image-size 32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ScriptError, check_manifest, run, save_png, write_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (gets train/ and test/ or all/)")
    p.add_argument("--size", type=int, default=24, help="image side in pixels (default 24)")
    p.add_argument("--split", choices=("both", "train", "test", "all"), default="both",
                   help="both = train/ and test/ (default); all = the 100 faces in their original order")
    args = p.parse_args(argv)
    from ddpm_ref.data import lfw_faces, lfw_split_indices, to_uint8_image

    if args.size < 4:
        raise ScriptError(f"--size must be at least 4 pixels, got {args.size}")
    out = Path(args.out)
    splits = ["train", "test"] if args.split == "both" else [args.split]
    groups = {}
    for split in splits:
        x = lfw_faces(split, size=args.size)
        idx = lfw_split_indices(split)
        groups[split] = [save_png(to_uint8_image(img), out / split / f"lfw_{i:03d}.png")
                         for i, img in zip(idx, x, strict=True)]
    write_manifest(out, groups, {"source": "skimage.data.lfw_subset() faces 0-99", "size": args.size,
                                 "split_seed": 0})
    counts = check_manifest(out, {s: args.size for s in splits})
    print(f"wrote {', '.join(f'{n} {s}' for s, n in counts.items())} faces ({args.size}x{args.size} grayscale PNG) "
          f"to {out}/, manifest {out / 'manifest.json'} checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
