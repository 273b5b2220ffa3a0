#!/usr/bin/env python
"""Get the seed's dataset and write prepared copies at several sizes, with a checksummed manifest.

Source, one of:
  --kaggle         download Kaggle's denislukovnikov/celebahq256-images-only with the ``kaggle`` package
                   (pip install kaggle; credentials in ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)
  --src FOLDER     any local folder tree of .jpg/.jpeg/.png/.webp images (e.g. an unpacked download)

Output: OUT/32/, OUT/64/, OUT/128/, OUT/256/ (choose with --sizes), each image resized (shorter side) and
center-cropped, RGB PNG; unreadable files are skipped and listed; OUT/manifest.json holds the counts, sizes and a
SHA-256 per file, and the folder is checked against it at the end (or on its own with --check OUT).

    python data_scripts/prepare_celebahq.py --kaggle --out data/celebahq
    python data_scripts/prepare_celebahq.py --src ~/Downloads/data256x256 --out data/celebahq --sizes 64,128
    python data_scripts/prepare_celebahq.py --check data/celebahq
    python -m ddpm_ref train --preset celebahq256-fixed --data data/celebahq/256
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ScriptError, check_manifest, run, write_manifest  # noqa: E402

KAGGLE_DATASET = "denislukovnikov/celebahq256-images-only"


def kaggle_credentials() -> str | None:
    """Where the Kaggle credentials are, or None."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    cfg = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    return str(cfg) if cfg.is_file() else None


def download(dest: Path) -> Path:
    """Download and unzip the seed's dataset into dest with the kaggle package."""
    where = kaggle_credentials()
    if where is None:
        raise ScriptError("no Kaggle credentials: put kaggle.json in ~/.kaggle/ (kaggle.com > Settings > API > "
                          "Create New Token) or set KAGGLE_USERNAME and KAGGLE_KEY, or use --src FOLDER")
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise ScriptError("the kaggle package is not installed: pip install kaggle (or ddpm-course[kaggle])") from None
    api = KaggleApi()
    api.authenticate()
    dest.mkdir(parents=True, exist_ok=True)
    print(f"downloading {KAGGLE_DATASET} to {dest} (credentials from {where}) ...")
    api.dataset_download_files(KAGGLE_DATASET, path=str(dest), unzip=True, quiet=False)
    return dest


def _convert(job: tuple[str, str, list[int], str]) -> tuple[str, list[str] | None, str | None]:
    """Resize + center crop one source image to every size; returns (source, outputs or None, error)."""
    from PIL import Image
    from torchvision.transforms import v2 as T

    src, out_root, sizes, stem = job
    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            outs = []
            for s in sizes:
                small = T.CenterCrop(s)(T.Resize(s, antialias=True)(im))
                path = Path(out_root) / str(s) / f"{stem}.png"
                small.save(path)
                outs.append(str(path))
        return src, outs, None
    except (OSError, ValueError, SyntaxError) as e:
        return src, None, f"{type(e).__name__}: {e}"


def prepare(src: Path, out: Path, sizes: list[int], workers: int) -> dict[str, int]:
    from ddpm_ref.data import find_images

    files = find_images(src)
    for s in sizes:
        (out / str(s)).mkdir(parents=True, exist_ok=True)
    jobs = [(str(f), str(out), sizes, f"{i:06d}_{f.stem}") for i, f in enumerate(files)]
    done: dict[int, list[Path]] = {s: [] for s in sizes}
    skipped: list[str] = []
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    results = pool.map(_convert, jobs, chunksize=64) if pool is not None else map(_convert, jobs)
    try:
        for k, (source, outs, err) in enumerate(results, 1):
            if outs is None:
                skipped.append(f"{source}: {err}")
                print(f"warning: skipping unreadable image {source} ({err})", file=sys.stderr)
            else:
                for s, o in zip(sizes, outs, strict=True):
                    done[s].append(Path(o))
            if k % 2000 == 0:
                print(f"  {k}/{len(jobs)} images")
    finally:
        if pool is not None:
            pool.shutdown()
    write_manifest(out, {str(s): v for s, v in done.items()},
                   {"source": str(src), "found": len(files), "skipped": skipped, "sizes": sizes, "format": "png"})
    return check_manifest(out, {str(s): s for s in sizes})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--kaggle", action="store_true", help=f"download {KAGGLE_DATASET} (needs credentials)")
    src.add_argument("--src", help="a local folder of images instead")
    src.add_argument("--check", metavar="OUT", help="only check a prepared folder against its manifest")
    p.add_argument("--out", help="output folder for the prepared copies")
    p.add_argument("--sizes", default="32,64,128,256", help="comma-separated sides in pixels (default 32,64,128,256)")
    p.add_argument("--download-dir", default=None, help="where --kaggle unpacks (default OUT/raw)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.check:
        counts = check_manifest(Path(args.check))
        print(f"{args.check}: OK, " + ", ".join(f"{n} images at {s}px" for s, n in counts.items()))
        return 0
    if not args.out:
        raise ScriptError("--out is required (where the prepared copies go)")
    try:
        sizes = sorted({int(v) for v in args.sizes.split(",") if v.strip()})
    except ValueError:
        raise ScriptError(f"--sizes must be comma-separated integers, got {args.sizes!r}") from None
    if not sizes or sizes[0] < 4:
        raise ScriptError(f"--sizes must be integers >= 4, got {args.sizes!r}")
    out = Path(args.out)
    source = download(Path(args.download_dir or out / "raw")) if args.kaggle else Path(args.src)
    counts = prepare(source, out, sizes, args.workers)
    print(f"prepared {out}/: " + ", ".join(f"{n} images at {s}px" for s, n in counts.items())
          + f"; manifest {out / 'manifest.json'} checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
