"""Stage 0: teach the tiny vision tower to see shapes before it meets any language.

Idefics2 starts from a pretrained vision encoder (SigLIP); the tiny model has none. Learning to see
through the language loss alone is slow: the model stays shape-blind for thousands of steps. So the
tower is first pretrained on a dense target the renderer gives for free: for every patch, the shape,
the colour and the grid cell ("at the top left", ...) of the object covering it, or background. A
patch that sees only an edge must ask its neighbours (attention) to know which shape it belongs to,
and a patch near a cell's border must find its object's centre to know where it is: exactly what
the answers need. The small heads used here are thrown away afterwards; only the tower's weights carry on.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..shapes.world import COLOURS, POSITIONS, SHAPES, Scene, draw_scene, label_map, random_scene

SHAPE_CLASSES = ("background", *SHAPES)
COLOUR_CLASSES = ("background", *COLOURS)
CELL_CLASSES = ("background", *(name for row in POSITIONS for name in row))  # row-major, as Thing.row * 3 + Thing.col


def patch_targets(scene: Scene, image_size: int, patch: int,
                  min_cover: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shape class, colour class, cell class) of every patch in row-major order: those of the object
    covering at least `min_cover` of the patch (the larger one if two do), else background (0)."""
    labels = torch.from_numpy(np.array(label_map(scene, image_size), dtype=np.int64))
    n = image_size // patch
    cells = labels.view(n, patch, n, patch).permute(0, 2, 1, 3).reshape(n * n, patch * patch)
    counts = nn.functional.one_hot(cells, len(scene.things) + 1).sum(1)[:, 1:]  # pixels of each object per patch
    best = counts.argmax(1)
    covered = counts.max(1).values >= min_cover * patch * patch
    shape_of = torch.tensor([SHAPE_CLASSES.index(t.shape) for t in scene.things])
    colour_of = torch.tensor([COLOUR_CLASSES.index(t.colour) for t in scene.things])
    cell_of = torch.tensor([CELL_CLASSES.index(t.position) for t in scene.things])
    return tuple(torch.where(covered, of[best], 0) for of in (shape_of, colour_of, cell_of))


def vision_batch(processor, rng: random.Random, batch_size: int, image_size: int, patch: int):
    """Pixel values of freshly drawn scenes (varied like the training images, but never moved, so the
    targets stay true) and their patch targets (shapes, colours, cells)."""
    images, targets = [], []
    for _ in range(batch_size):
        scene = random_scene(rng)
        if rng.random() < 0.5:
            scene = Scene(scene.things, tuple(rng.randint(215, 255) for _ in range(3)))
        images.append(draw_scene(scene, size=rng.choice((64, 96, 128, 256)), jpeg_quality=rng.choice((None, 60, 75, 90))))
        targets.append(patch_targets(scene, image_size, patch))
    pixels = processor.image_processor([[im] for im in images], return_tensors="pt")["pixel_values"][:, 0]
    return pixels, *(torch.stack(kind) for kind in zip(*targets))


def pretrain_vision(model, processor, steps: int = 800, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    progress: bool = True) -> dict:
    """Train `model`'s vision tower on patch targets for `steps` steps; returns what it reached."""
    tower = model.model.vision_model
    vcfg = tower.config
    hidden = vcfg.hidden_size
    classes = {"shape": SHAPE_CLASSES, "colour": COLOUR_CLASSES, "cell": CELL_CLASSES}
    heads = nn.ModuleDict({kind: nn.Linear(hidden, len(names)) for kind, names in classes.items()})
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(seed + 3_000_003)
    tower.train()
    start, accuracy = time.time(), dict.fromkeys(classes, 0.0)
    bar = tqdm(range(steps), desc="pretraining the vision tower (stage 0)", disable=not progress, mininterval=2)
    for step in bar:
        for group in optimizer.param_groups:  # warm up, then cosine down to a tenth
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        pixels, *targets = vision_batch(processor, rng, batch_size, vcfg.image_size, vcfg.patch_size)
        features = tower(pixel_values=pixels).last_hidden_state
        logits = {kind: head(features) for kind, head in heads.items()}
        loss = sum(nn.functional.cross_entropy(logits[kind].flatten(0, 1), target.flatten())
                   for kind, target in zip(classes, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        objects = targets[0] > 0  # accuracy on the patches that show an object (background is easy)
        for kind, target in zip(classes, targets):
            hit = (logits[kind].argmax(-1)[objects] == target[objects]).float().mean().item()
            accuracy[kind] = 0.9 * accuracy[kind] + 0.1 * hit
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", **{kind: f"{a:.2f}" for kind, a in accuracy.items()})
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "seconds": round(time.time() - start, 1),
            "final_loss": round(loss.item(), 4),
            **{f"patch_{kind}_accuracy": round(a, 3) for kind, a in accuracy.items()}}
