#!/usr/bin/env python
"""Write deterministic synthetic RGB faces (cartoons: skin oval, hair, eyes, brows, mouth) as PNG files.

Same --seed, same images, at any --size: RGB test data for the image-folder pipeline and CI, no download.

    python data_scripts/make_synthetic_faces.py --out data/synthetic --n 256 --size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ScriptError, check_manifest, run, save_png, write_manifest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from ddpm_ref.data import synthetic_faces, to_uint8_image

    if args.n < 1 or args.size < 4:
        raise ScriptError(f"need --n >= 1 and --size >= 4, got --n {args.n} --size {args.size}")
    out = Path(args.out)
    files = []
    for start in range(0, args.n, 256):  # in chunks: bounded memory for large n
        chunk = synthetic_faces(min(256, args.n - start), args.size, seed=args.seed + start)
        files += [save_png(to_uint8_image(img), out / f"face_{start + i:05d}.png") for i, img in enumerate(chunk)]
    write_manifest(out, {"images": files}, {"source": "ddpm_ref.data.synthetic_faces", "seed": args.seed,
                                            "size": args.size})
    check_manifest(out, {"images": args.size})
    print(f"wrote {len(files)} synthetic {args.size}x{args.size} RGB faces to {out}/ (seed {args.seed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
