"""Pictures from outside the shapes world: photo-like landscapes, noise, text and line drawings.

The tiny model learns to answer any question about them with the honest sentence ("I only know about
shapes.") instead of inventing shapes that are not there. Each kind is drawn from a seeded generator, so
evaluation can hold out its own pictures (it draws from seeds training never uses).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("photo", "noise", "text", "drawing")
_WORDS = ("hello", "the quick brown fox", "invoice", "menu", "chapter one", "total 42.50", "meeting at noon",
          "dear friend", "open", "exit", "sale", "welcome home", "page 7", "lorem ipsum", "notes", "map")


def outside_picture(rng: random.Random, kind: str | None = None, size: int | None = None) -> Image.Image:
    """One picture of `kind` (default: any of KINDS), `size` pixels square (default 64-256)."""
    kind = kind or rng.choice(KINDS)
    size = size or rng.choice((64, 96, 128, 256))
    draw = {"photo": _photo, "noise": _noise, "text": _text, "drawing": _drawing}[kind]
    return draw(rng, size)


def _colour(rng, lo=0, hi=255):
    return tuple(rng.randint(lo, hi) for _ in range(3))


def _mix(a, b, t):
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def _photo(rng, size):
    """A landscape the way a photo looks at a glance: graded sky, clouds, a horizon, textured ground."""
    img = Image.new("RGB", (size, size))
    pen = ImageDraw.Draw(img)
    top, bottom = _mix((40, 90, 200), _colour(rng, 60, 200), rng.random() * 0.5), _colour(rng, 150, 240)
    horizon = int(size * rng.uniform(0.35, 0.75))
    for y in range(horizon):
        pen.line([(0, y), (size, y)], fill=_mix(top, bottom, y / max(1, horizon)))
    ground = rng.choice(((60, 140, 50), (120, 100, 60), (200, 190, 140), (70, 90, 110), (30, 80, 40)))
    for y in range(horizon, size):
        pen.line([(0, y), (size, y)], fill=_mix(ground, (20, 30, 20), (y - horizon) / size))
    for _ in range(rng.randint(0, 5)):  # clouds: clusters of pale ellipses
        cx, cy, w = rng.uniform(0, size), rng.uniform(0, horizon * 0.8), size * rng.uniform(0.1, 0.3)
        for _ in range(rng.randint(3, 6)):
            dx, dy, r = rng.uniform(-w, w), rng.uniform(-w / 4, w / 4), w * rng.uniform(0.3, 0.6)
            pen.ellipse([cx + dx - r, cy + dy - r / 2, cx + dx + r, cy + dy + r / 2], fill=_colour(rng, 225, 255))
    if rng.random() < 0.5:  # hills or trees along the horizon
        points = [(0, horizon)] + [(x, horizon - rng.uniform(0, size * 0.15)) for x in range(0, size + 8, 8)]
        pen.polygon(points + [(size, horizon)], fill=_mix(ground, (0, 0, 0), 0.3))
    pixels = img.load()
    for _ in range(size * size // 6):  # grass and grain: a photo is never flat
        x, y = rng.randrange(size), rng.randrange(horizon, size) if rng.random() < 0.7 else rng.randrange(size)
        r, g, b = pixels[x, y]
        d = rng.randint(-35, 35)
        pixels[x, y] = (max(0, min(255, r + d)), max(0, min(255, g + d)), max(0, min(255, b + d)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))


def _noise(rng, size):
    """Random pixels: coloured or grey, fine or blocky."""
    cell = rng.choice((1, 2, 4, 8))
    grey = rng.random() < 0.3
    small = Image.new("RGB", (max(1, size // cell),) * 2)
    small.putdata([(v, v, v) if grey else _colour(rng) for v in (rng.randint(0, 255) for _ in range(small.width ** 2))])
    return small.resize((size, size), Image.NEAREST)


def _text(rng, size):
    """Words on paper, a sign or a screen."""
    paper = rng.choice(((255, 255, 255), _colour(rng, 200, 255), _colour(rng, 0, 60)))
    ink = (20, 20, 20) if sum(paper) > 380 else _colour(rng, 200, 255)
    img = Image.new("RGB", (size, size), paper)
    pen = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, int(size * rng.uniform(0.1, 0.2))))
    y = rng.uniform(0, size * 0.2)
    while y < size * 0.85:
        pen.text((rng.uniform(0, size * 0.15), y), rng.choice(_WORDS), fill=ink, font=font)
        y += font.size * rng.uniform(1.2, 1.8)
    return img


def _drawing(rng, size):
    """Line art: scribbles, strokes and outlines in pen colours on paper, nothing filled."""
    img = Image.new("RGB", (size, size), rng.choice(((255, 255, 255), _colour(rng, 225, 255))))
    pen = ImageDraw.Draw(img)
    ink = rng.choice(((20, 20, 20), (30, 30, 120), _colour(rng, 0, 160)))
    width = max(1, int(size * rng.uniform(0.01, 0.03)))
    for _ in range(rng.randint(2, 6)):
        kind = rng.random()
        points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(3, 8))]
        if kind < 0.5:
            pen.line(points, fill=ink, width=width, joint="curve")
        elif kind < 0.8:
            box = sorted(rng.uniform(0, size) for _ in range(2)), sorted(rng.uniform(0, size) for _ in range(2))
            pen.arc([box[0][0], box[1][0], box[0][1] + 2, box[1][1] + 2], rng.uniform(0, 360), rng.uniform(0, 360),
                    fill=ink, width=width)
        else:
            pen.polygon(points, outline=ink, width=width)
    return img
