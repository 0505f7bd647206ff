"""Write a domain-shifted copy of an image folder (same layout and file names) for adaptation tests.

Each image is first downscaled so that its shorter side is at most ``--max-side``
(256) px (the shift then has the same strength relative to the content whatever
the photo's size), then shifted and saved as JPEG (quality 95 unless the shift
sets its own). Shifts (deterministic per file for a given ``--seed``)::

    gray_blur    grayscale, then Gaussian blur (radius 1.5% of the shorter side)
    color_cast   strong warm cast: R x1.25 + 20, G x0.9, B x0.45
    jpeg_noise   Gaussian noise (sigma 25) then JPEG quality 8
    dark         underexposed: gamma 2.2 and 0.6 contrast (night-like)
    fog          blend with light gray (0.55 of 200) and blur (radius 0.8%)
    cold_noise   blue cast (R x0.6, B x1.3 + 25) plus noise (sigma 15)

The output must be outside the repository (default ``/tmp/tfx_shifts/<name>-<shift>``),
so that shifted copies of third-party photos never land in the project.

Example::

    python benchmarks/make_shift.py ../shared/datasets/hymenoptera --shift color_cast
    # -> /tmp/tfx_shifts/hymenoptera-color_cast/{train,val}/{ants,bees}/*.jpg
    python benchmarks/make_shift.py --smoke   # every shift of data_samples/val/, in a temporary folder
"""

from __future__ import annotations

import argparse
import io
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples" / "val"
EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp")


def _gray_blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    radius = 0.015 * min(img.size)
    return img.convert("L").convert("RGB").filter(ImageFilter.GaussianBlur(radius))


def _color_cast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(img, np.float32)
    x = x * np.array([1.25, 0.9, 0.45]) + np.array([20.0, 0.0, 0.0])
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    x = np.asarray(img, np.float32) + rng.normal(0.0, sigma, (img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _jpeg_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    _noise(img, rng, 25.0).save(buffer, format="JPEG", quality=8)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _dark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(img, np.float32) / 255.0
    x = (x ** 2.2 - 0.5) * 0.6 + 0.5 - 0.3
    return Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8))


def _fog(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(img.filter(ImageFilter.GaussianBlur(0.008 * min(img.size))), np.float32)
    return Image.fromarray(np.clip(0.45 * x + 0.55 * 200.0, 0, 255).astype(np.uint8))


def _cold_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(img, np.float32) * np.array([0.6, 1.0, 1.3]) + np.array([0.0, 0.0, 25.0])
    return _noise(Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)), rng, 15.0)


SHIFTS = {"gray_blur": _gray_blur, "color_cast": _color_cast, "jpeg_noise": _jpeg_noise,
          "dark": _dark, "fog": _fog, "cold_noise": _cold_noise}


def make_shift(src: Path, out: Path, shift: str, max_side: int = 256, seed: int = 0) -> int:
    """Write the shifted copy of every image under ``src`` to ``out``; returns the count."""
    out = out.resolve()
    if out == REPO or REPO in out.parents:
        raise SystemExit(f"--out {out} is inside the repository; write shifted copies to /tmp.")
    count = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in EXTENSIONS or any(
                part.startswith(".") for part in path.relative_to(src).parts):
            continue
        try:
            with Image.open(path) as opened:
                opened.seek(0)
                img = opened.convert("RGB")
        except Exception as err:  # an unreadable file is reported, not copied
            print(f"skipped {path}: {type(err).__name__}: {err}")
            continue
        scale = max_side / min(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.BICUBIC)
        rng = np.random.default_rng([seed, zlib.crc32(str(path.relative_to(src)).encode())])
        shifted = SHIFTS[shift](img, rng)
        target = (out / path.relative_to(src)).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        shifted.save(target, format="JPEG", quality=95)
        count += 1
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, nargs="?", help="image folder (any layout; it is mirrored)")
    parser.add_argument("--shift", choices=sorted(SHIFTS), help="the shift (required)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default /tmp/tfx_shifts/<src name>-<shift>)")
    parser.add_argument("--max-side", type=int, default=256, help="shorter side cap before shifting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: every shift of data_samples/val/ into a temporary folder")
    args = parser.parse_args(argv)
    if args.smoke:
        args.src = args.src or SAMPLES
    elif args.src is None or args.shift is None:
        parser.error("SRC and --shift are required (or --smoke)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.src.is_dir():
        raise SystemExit(f"{args.src} is not a folder.")
    shifts = [args.shift] if args.shift else sorted(SHIFTS)
    if args.smoke and args.out is None:
        import tempfile

        args.out = Path(tempfile.mkdtemp(prefix="make_shift_smoke_"))
    for shift in shifts:
        out = args.out or Path("/tmp/tfx_shifts") / f"{args.src.resolve().name}-{shift}"
        if len(shifts) > 1:
            out = out / shift
        n = make_shift(args.src, out, shift, args.max_side, args.seed)
        print(f"{n} images -> {out}")


if __name__ == "__main__":
    main()
