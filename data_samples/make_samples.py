"""Generate ``data_samples/``: a tiny procedural image-folder dataset (no photos).

Three classes of 64x64 RGB images -- ``circle``, ``square`` and ``triangle`` --
each a filled shape of random size, position and rotation on a noisy grey
gradient background. Three shapes in four have their class's hue (reddish
circles, greenish squares, bluish triangles, +-30 degrees of hue jitter); the
rest have a random hue, so only the shape tells them apart. Colour makes the
classes learnable in a few epochs even by a randomly initialised backbone (the
offline demo, where ImageNet weights cannot be downloaded); the odd-coloured
shapes are what a model that learnt colour alone gets wrong. The layout is the
one ``tfx-transfer train`` expects::

    data_samples/train/<class>/*.jpg|*.png     30 images per class
    data_samples/val/<class>/*.jpg|*.png       10 images per class

Every third image is a PNG, the rest JPEG. The script is seeded and
deterministic: running it again rewrites the same images (byte-identical for a
given Pillow/libjpeg). The whole dataset is about 0.3 MB.

Example:
    $ python data_samples/make_samples.py            # or: make data-samples
    $ python data_samples/make_samples.py --out /tmp/shapes --train 50 --val 20 --size 96
"""

from __future__ import annotations

import argparse
import colorsys
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
CLASS_HUES = {"circle": 0.0, "square": 1 / 3, "triangle": 2 / 3}  # red, green, blue
HUE_JITTER = 1 / 12  # +-30 degrees
P_CLASS_HUE = 0.75
HERE = Path(__file__).resolve().parent
MAX_BYTES = 2_000_000


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random linear gradient between two near-grey colours, float (size, size, 3)."""
    c0, c1 = (rng.uniform(50, 210) + rng.normal(0, 8, 3) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _shape_colour(kind: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour: the class hue (with jitter) 3 times in 4, else any hue."""
    if rng.uniform() < P_CLASS_HUE:
        hue = (CLASS_HUES[kind] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
    else:
        hue = rng.uniform()
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return tuple(int(round(255 * c)) for c in rgb)


def _polygon(kind: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple]:
    corners = 4 if kind == "square" else 3
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * i / corners),
         cy + radius * math.sin(angle + 2 * math.pi * i / corners))
        for i in range(corners)
    ]


def draw_sample(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One image of class ``kind`` (``"circle"``, ``"square"`` or ``"triangle"``).

    Example:
        >>> img = draw_sample("triangle", np.random.default_rng(0), size=64)
        >>> img.size, img.mode
        ((64, 64), 'RGB')
    """
    if kind not in CLASSES:
        raise ValueError(f"kind={kind!r} is not one of {CLASSES}.")
    background = _background(rng, size)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.36) * size
    margin = radius * 1.05
    cx, cy = rng.uniform(margin, size - margin, 2)
    colour = _shape_colour(kind, rng)
    if kind == "circle":
        r = radius * 0.85  # similar area to the square and triangle
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, radius, rng.uniform(0, 2 * math.pi)), fill=colour)
    pixels = np.asarray(image, np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_samples(out: Path = HERE, train: int = 30, val: int = 10, size: int = 64,
                 seed: int = 7) -> dict[str, int]:
    """Write ``out/train/<class>/`` and ``out/val/<class>/``; returns file counts per split.

    Example:
        >>> make_samples(Path("/tmp/shapes"), train=4, val=2)
        {'train': 12, 'val': 6}
    """
    out = Path(out)
    counts = {}
    for split, n in (("train", train), ("val", val)):
        split_dir = out / split
        if split_dir.exists():
            shutil.rmtree(split_dir)
        counts[split] = 0
        for c, kind in enumerate(CLASSES):
            folder = split_dir / kind
            folder.mkdir(parents=True)
            rng = np.random.default_rng([seed, c, 0 if split == "train" else 1])
            for i in range(n):
                image = draw_sample(kind, rng, size)
                if i % 3 == 2:
                    image.save(folder / f"{kind}_{i:03d}.png", optimize=True)
                else:
                    image.save(folder / f"{kind}_{i:03d}.jpg", quality=85)
                counts[split] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: data_samples/)")
    parser.add_argument("--train", type=int, default=30, help="training images per class")
    parser.add_argument("--val", type=int, default=10, help="validation images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    counts = make_samples(args.out, args.train, args.val, args.size, args.seed)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.suffix in (".jpg", ".png"))
    print(f"wrote {counts} images of {CLASSES} to {args.out} ({total / 1e6:.2f} MB)")
    if args.out.resolve() == HERE and total > MAX_BYTES:
        raise SystemExit(f"data_samples/ is {total} bytes, over the {MAX_BYTES}-byte budget.")


if __name__ == "__main__":
    main()
