"""The shapes world: scenes of 1-3 coloured shapes, drawn with PIL.

Objects sit in distinct cells of an invisible 3x3 grid, at a random offset and size inside their
cell, so any layout is possible (rows, columns, stacks, diagonals) and every position has a plain
name ("at the top left", "in the middle", ...). A shape may repeat in another colour and a colour
on another shape, but never the same coloured shape twice, so "the red circle" always names one
object. Objects are listed left to right, then top to bottom.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter

from ..errors import VLMCourseError

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
# Colours the renderer can draw but the tiny model never saw in training: lesson 09 teaches it pink.
# Kept apart from COLOURS, which seeded scenes iterate, so that the base model's data stays the same.
NEW_COLOURS = {
    "pink": (245, 110, 185),
}
RGB = {**COLOURS, **NEW_COLOURS}
# Position names of the 3x3 grid cells, indexed [row][column].
POSITIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the middle", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
MIN_RADIUS, MAX_RADIUS = 0.09, 0.14  # of the canvas side
MAX_OBJECTS = 3


@dataclass(frozen=True)
class Thing:
    """One coloured shape; x, y, radius are fractions of the canvas side."""

    shape: str
    colour: str
    col: int
    row: int
    x: float
    y: float
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return POSITIONS[self.row][self.col]


@dataclass(frozen=True)
class Scene:
    """Objects in reading order (left to right, then top to bottom) and the canvas colour."""

    things: tuple[Thing, ...]
    background: tuple[int, int, int] = (255, 255, 255)
    seed: int | None = field(default=None, compare=False)

    def describe(self) -> str:
        """The short answer to "What do we see in this image?", e.g. "a red circle and a blue square."."""
        return join_names([with_article(t.name) for t in self.things]) + "."

    def draw(self, size: int = 128, **style) -> Image.Image:
        return draw_scene(self, size=size, **style)


def with_article(name: str) -> str:
    """The name with its indefinite article: "a red circle", "an orange square"."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def join_names(parts: list[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def random_scene(rng: random.Random | int | None = None, n: int | None = None, tinted: bool = False,
                 colours: tuple[str, ...] | None = None, include: str | None = None) -> Scene:
    """A random scene of `n` (default 1-3) objects; pass an int seed for a reproducible one.

    colours: the palette to draw from (default: the six of COLOURS); include: a colour that at least
    one object must have (it need not be in `colours`)."""
    seed = rng if isinstance(rng, int) else None
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    palette = check_colours(colours or tuple(COLOURS))
    n = n or rng.randint(1, MAX_OBJECTS)
    cells = rng.sample([(c, r) for r in range(3) for c in range(3)], n)
    kinds = [(s, c) for s in SHAPES for c in palette]  # no coloured shape twice
    if include is None:
        kinds = rng.sample(kinds, n)
    else:
        first = (rng.choice(SHAPES), check_colours((include,))[0])
        kinds = [first] + rng.sample([k for k in kinds if k != first], n - 1)
    things = []
    for (col, row), (shape, colour) in zip(cells, kinds):
        radius = rng.uniform(MIN_RADIUS, MAX_RADIUS)
        slack = 1 / 6 - radius - 0.01  # keep inside the cell, so objects never overlap
        x = (col + 0.5) / 3 + rng.uniform(-slack, slack)
        y = (row + 0.5) / 3 + rng.uniform(-slack, slack)
        things.append(Thing(shape, colour, col, row, x, y, radius))
    things.sort(key=lambda t: (t.col, t.row))
    background = (255, 255, 255)
    if tinted:
        background = tuple(rng.randint(215, 255) for _ in range(3))
    return Scene(tuple(things), background, seed)


def check_colours(colours) -> tuple[str, ...]:
    """The colour names, if the renderer can draw every one of them."""
    unknown = [c for c in colours if c not in RGB]
    if unknown:
        raise VLMCourseError(f"Unknown colour(s) {unknown}: the shapes world draws {', '.join(RGB)}.")
    return tuple(colours)


def draw_scene(scene: Scene, size: int = 128, jitter: float = 0.0, rng: random.Random | None = None,
               jpeg_quality: int | None = None, blur: float = 0.0) -> Image.Image:
    """Draw `scene` as an RGB image of `size` x `size` pixels.

    jitter moves each object by up to that fraction of the canvas; jpeg_quality round-trips the
    image through JPEG; blur applies a Gaussian blur of that radius in pixels.
    """
    rng = rng or random.Random(0)
    img = Image.new("RGB", (size, size), scene.background)
    pen = ImageDraw.Draw(img)
    for t in scene.things:
        x = (t.x + rng.uniform(-jitter, jitter)) * size
        y = (t.y + rng.uniform(-jitter, jitter)) * size
        draw_shape(pen, t.shape, x, y, t.radius * size, RGB[t.colour])
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    if jpeg_quality:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=jpeg_quality)
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def draw_shape(pen: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    """One shape centred at (x, y) pixels, of "radius" r pixels."""
    if shape == "circle":
        pen.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        s = r * 0.88  # a square of the same area impression as the circle
        pen.rectangle([x - s, y - s, x + s, y + s], fill=fill)
    else:
        pen.polygon([(x, y - r), (x + r * 0.95, y + r * 0.8), (x - r * 0.95, y + r * 0.8)], fill=fill)


def label_map(scene: Scene, size: int) -> Image.Image:
    """A greyscale image of `size` pixels where each object is painted with its index + 1 (0: background)."""
    img = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(img)
    for i, t in enumerate(scene.things):
        draw_shape(pen, t.shape, t.x * size, t.y * size, t.radius * size, i + 1)
    return img


def perturbed_image(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene as a real drawing might come: jittered, tinted, JPEG at quality 75, drawn at 256 px."""
    tinted = Scene(scene.things, tuple(rng.randint(215, 255) for _ in range(3)), scene.seed)
    return draw_scene(tinted, size=256, jitter=0.012, rng=rng, jpeg_quality=75)
