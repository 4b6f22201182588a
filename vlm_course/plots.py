"""The figures the notebooks share, drawn to be read at notebook width.

JupyterLab shows a figure at 100 dpi and shrinks anything wider than its column (about 9-10 inches)
with all its text: a 15-inch figure with 8-point labels reads as 5-point. So every figure here is at
most WIDTH inches wide, with text of at least 9 points, legends outside the data, and labels that
cannot land on each other (one row a configuration rather than annotated points).
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

WIDTH = 9.5  # inches: the widest figure that JupyterLab shows unshrunk in a usual window
TEXT = 10  # points: labels, ticks, captions
SMALL = 9  # points: legends and value labels
OK, WRONG = "tab:green", "tab:red"


def save_loss_curve(history: list[dict], path: Path, title: str, stage_starts: tuple[int, ...] = ()):
    """A training run's loss per logged step (log scale) written to `path`, each later stage's first step marked.
    Drawn on a bare Figure (returned), not pyplot: training inside a notebook leaves its backend and figures alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=0.8)
    for k, step in enumerate(stage_starts):
        ax.axvline(step, color="grey", ls="--", lw=0.8, label="a later stage begins" if k == 0 else None)
    if stage_starts:
        ax.legend(fontsize=SMALL)
    ax.set(xlabel="step", ylabel="training loss (answers only)", yscale="log", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def pyplot():
    """pyplot, on a non-interactive backend outside a notebook (a command line writes files, shows nothing)."""
    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, inches: float, points: float = SMALL) -> str:
    """Wrap `text` into lines that fit `inches` at `points` (an average glyph is about 0.55 em wide)."""
    per_line = max(8, int(inches * 72 / (points * 0.55)))
    return "\n".join(textwrap.wrap(text, per_line, break_long_words=False)) or text


def show_images(images, titles=None, size: float = 2.3, ncols: int | None = None, correct=None):
    """PIL images in a grid (at most 4 a row, so it stays WIDTH wide), each framed, with its caption
    wrapped to the image's width; returns the figure.

    correct: optional list of booleans (one an image): frames right ones green and wrong ones red, and
    starts their captions with a tick or a cross, so that a wrong answer is never shown as if it were right.
    """
    plt = pyplot()
    images = list(images)
    titles = list(titles) if titles is not None else [None] * len(images)
    ncols = ncols or min(len(images), 4, max(1, int(WIDTH // size)))
    nrows = -(-len(images) // ncols)
    lines = max((len(_wrap(t, size).split("\n")) for t in titles if t), default=0)
    caption_inches = (lines * SMALL * 1.3 + 6) / 72 if lines else 0.1
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + caption_inches) * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(images[index])
        ax.set_xticks([])
        ax.set_yticks([])
        colour = "0.55"
        title = titles[index]
        if correct is not None:
            colour = OK if correct[index] else WRONG
            title = ("✓ " if correct[index] else "✗ ") + (title or "")
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2 if correct is not None else 1)
        if title:
            ax.set_title(_wrap(title, size), fontsize=SMALL, color="black" if correct is None else colour,
                         loc="center", pad=4)
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.6)
    return fig


# ---------------------------------------------------------------- benchmarks and memory (lessons 04 and 05)

def benchmark(rows: list[dict], title: str = "benchmark"):
    """Weights, decoding speed and answer quality of each configuration of `vlm_course.bench.run`.

    Three panels side by side share one row a configuration, so no label can cover another and two
    configurations with the same score (eager and sdpa agree to the token) each keep their own point.
    A configuration that failed gets its row with the error in place of bars."""
    plt = pyplot()
    names = [r["config"] for r in rows]
    ok = [not r.get("error") for r in rows]
    has_quality = any(r.get("quality") is not None for r in rows if not r.get("error"))
    panels = 3 if has_quality else 2
    height = max(2.6, 1.6 + 0.42 * len(rows))
    fig, axes = plt.subplots(1, panels, figsize=(WIDTH, height), sharey=True,
                             gridspec_kw={"width_ratios": [1.25, 1, 0.9][:panels]})
    y = list(range(len(rows)))
    mb = [r["model_bytes"] / 1e6 if good else 0 for r, good in zip(rows, ok)]
    weights, speed = axes[0], axes[1]
    weights.barh(y, mb, color="tab:blue", height=0.6, label="measured")
    estimates = [(r["estimate_bytes"] / 1e6, i) for i, (r, good) in enumerate(zip(rows, ok))
                 if good and r.get("estimate_bytes")]
    if estimates:
        weights.scatter([e for e, _ in estimates], [i for _, i in estimates], color="black", marker="|", s=260,
                        linewidths=2, zorder=3, label="estimate from the config")
    top = max(mb + [e for e, _ in estimates] + [1e-9])
    for i, value in enumerate(mb):
        if ok[i]:
            weights.text(value + 0.02 * top, i, f"{value:.2f}", va="center", fontsize=SMALL)
        else:
            weights.text(0.02 * top, i, "failed: " + textwrap.shorten(str(rows[i]["error"]), 34, placeholder=" ..."),
                         va="center", fontsize=SMALL, color=WRONG)
    weights.set_xlim(0, 1.3 * top)
    weights.set_xlabel("weights, MB", fontsize=TEXT)
    legend_inches = 0.35
    fig.legend(*weights.get_legend_handles_labels(), fontsize=SMALL, loc="lower left", ncol=2, frameon=False,
               bbox_to_anchor=(0.0, 0.0))
    decode = [r.get("decode_tok_s") or 0 for r in rows]
    speed.barh(y, decode, color="tab:green", height=0.6)
    fastest = max(decode + [1e-9])
    for i, value in enumerate(decode):
        if ok[i] and value:
            speed.text(value + 0.02 * fastest, i, f"{value:.0f}", va="center", fontsize=SMALL)
    speed.set_xlim(0, 1.25 * fastest)
    speed.set_xlabel("decode tokens / s (median)", fontsize=TEXT)
    if has_quality:
        quality = axes[2]
        for i, r in enumerate(rows):
            if ok[i] and r.get("quality") is not None:
                quality.plot([0, r["quality"]], [i, i], color="0.8", linewidth=1, zorder=1)
                quality.scatter(r["quality"], i, s=60, color="tab:purple", zorder=3)
                left = r["quality"] > 0.75  # the value beside its point, on the side with room
                quality.text(r["quality"] + (-0.05 if left else 0.05), i, f"{r['quality']:.0%}", fontsize=SMALL,
                             ha="right" if left else "left", va="center",
                             bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none"})
        quality.set_xlim(-0.08, 1.1)  # "0%" and "100%" inside the panel, clear of the next one
        quality.set_xticks([0, 0.5, 1])
        quality.set_xticklabels(["0%", "50%", "100%"])
        quality.set_xlabel("exact match", fontsize=TEXT)
    for ax in axes:
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.tick_params(labelsize=TEXT)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylim(len(rows) - 0.5, -0.5)  # the first configuration on top
    device = next((r["device"] for r in rows if r.get("device")), "?")
    fig.suptitle(f"{title} ({device})", fontsize=TEXT + 1)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1), w_pad=1.5)  # the legend below the panels
    return fig


def weights_and_peaks(weights: dict[str, float], peaks: dict[str, float] | None = None,
                      title: str = "idefics2-8b: weights vs published peak", unit: str = "GB"):
    """One row a variant: its weights as a bar with the value written beside it and, where known, a
    published peak memory as a marker on the same row (lesson 05's calculator); the legend below."""
    plt = pyplot()
    peaks = peaks or {}
    names = list(weights)
    height = max(2.6, 1.5 + 0.36 * len(names))
    fig, ax = plt.subplots(figsize=(WIDTH * 0.8, height))
    y = list(range(len(names)))
    ax.barh(y, [weights[n] for n in names], color="tab:blue", height=0.6, label="weights (estimate from the config)")
    top = max(list(weights.values()) + list(peaks.values()) + [1e-9])
    for i, name in enumerate(names):
        ax.text(weights[name] + 0.01 * top, i, f"{weights[name]:.2f}", va="center", ha="left", fontsize=SMALL)
    marked = [(peaks[n], i) for i, n in enumerate(names) if n in peaks]
    if marked:
        ax.scatter([p for p, _ in marked], [i for _, i in marked], marker="D", s=45, color="tab:red", zorder=3,
                   label="published peak (model card)")
        for value, i in marked:
            ax.text(value + 0.01 * top, i - 0.34, f"peak {value:.1f}", va="center", ha="left", fontsize=SMALL,
                    color="tab:red")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_ylim(len(names) - 0.5, -0.7)
    ax.set_xlim(0, 1.15 * top)
    ax.set_xlabel(unit, fontsize=TEXT)
    ax.tick_params(labelsize=TEXT)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=TEXT + 1)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=SMALL, loc="lower left", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))
    return fig


# ---------------------------------------------------------------- the architecture (lesson 01)

def _model_files(model) -> tuple[dict, dict]:
    """(config, processor facts) of a model: a saved directory, 'idefics2-8b', or a loaded VLM."""
    from .testmodel import LIKE, PROCESSORS

    if hasattr(model, "model") and hasattr(model, "processor"):  # a loaded VLM
        processor = model.processor
        return model.model.config.to_dict(), {"image_seq_len": processor.image_seq_len,
                                              "do_image_splitting": processor.image_processor.do_image_splitting}
    if str(model) in LIKE:  # the published configuration and processor, shipped with the package
        config = json.loads(LIKE[str(model)].read_text())
        return config, {"image_seq_len": config["perceiver_config"]["resampler_n_latents"],
                        "do_image_splitting": PROCESSORS[str(model)]["do_image_splitting"]}
    folder = Path(model)
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    image = processor.get("image_processor", processor)
    return config, {"image_seq_len": processor["image_seq_len"], "do_image_splitting": image["do_image_splitting"]}


def token_flow(model, name: str | None = None) -> dict:
    """What one image becomes on its way through Idefics2, read from the model's configuration and processor.

    The vision encoder cuts each image block into (image_size / patch_size)^2 patches and returns one
    vector a patch; the connector (an MLP, then the perceiver resampler) squeezes them into
    `resampler_n_latents` vectors, which the language model reads as that many <image> tokens. With image
    splitting the processor sends 5 blocks an image (4 crops and the whole), so 5 times the tokens."""
    config, processor = _model_files(model)
    vision, perceiver, text = config["vision_config"], config["perceiver_config"], config["text_config"]
    side = vision["image_size"] // vision["patch_size"]
    blocks = 5 if processor["do_image_splitting"] else 1
    latents = perceiver["resampler_n_latents"]
    assert processor["image_seq_len"] == latents, "the processor's image_seq_len must equal the perceiver's latents"
    return {"name": name or Path(str(getattr(model, "name", model))).name,
            "image_size": vision["image_size"], "patch_size": vision["patch_size"], "patches": side * side,
            "vision": f"{vision['num_hidden_layers']} layers x {vision['hidden_size']}",
            "latents": latents, "perceiver": f"depth {perceiver['resampler_depth']}",
            "text": f"{text['num_hidden_layers']} layers x {text['hidden_size']} ({text['model_type']})",
            "blocks": blocks, "image_tokens": latents * blocks, "text_hidden": text["hidden_size"]}


def architecture(models=("tiny", "idefics2-8b")):
    """Idefics2 as three boxes (vision encoder -> connector with the perceiver -> language model), with the
    number of vectors that pass each arrow for one image, for each model in `models` ('tiny' is the bundled
    model, 'idefics2-8b' its published configuration; a directory or a loaded VLM works too)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from .models import TINY_MODEL_DIR

    plt = pyplot()
    flows = [token_flow(TINY_MODEL_DIR, "tiny Idefics2 (this course)") if m == "tiny" else
             token_flow(m, "idefics2-8b (published config)" if m == "idefics2-8b" else None) for m in models]
    top = 1.55 * len(flows) + 0.85  # the boxes' lower edge; one band of numbers a model below them
    fig, ax = plt.subplots(figsize=(WIDTH, 0.8 * (top + 0.8)))
    ax.set_xlim(0, 10)
    ax.set_ylim(0.6, top + 1.4)
    ax.set_axis_off()
    boxes = [(0.1, "image", "pixels\n(one block)"), (2.25, "vision encoder", "SigLIP-style ViT:\none vector a patch"),
             (4.75, "connector", "MLP, then the perceiver\nresampler: latents"),
             (7.45, "language model", "reads them as\n<image> tokens")]
    width = [1.55, 2.0, 2.2, 2.45]
    colours = ["0.92", "#dbe9f6", "#fde5cc", "#dff2dd"]
    for (x, head, body), w, colour in zip(boxes, width, colours):
        ax.add_patch(FancyBboxPatch((x, top), w, 1.25, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="0.4"))
        ax.text(x + w / 2, top + 0.9, head, ha="center", va="center", fontsize=TEXT + 1, weight="bold")
        ax.text(x + w / 2, top + 0.38, body, ha="center", va="center", fontsize=SMALL)
    for (x, _, _), w, (nx, _, _) in zip(boxes, width, boxes[1:]):
        ax.add_patch(FancyArrowPatch((x + w + 0.08, top + 0.62), (nx - 0.08, top + 0.62), arrowstyle="-|>",
                                     mutation_scale=16, color="0.3"))
    for row, flow in enumerate(flows):
        y = top - 0.55 - 1.55 * row
        if row % 2 == 0:
            ax.axhspan(y - 1.2, y + 0.25, color="0.97", zorder=0)
        ax.text(0.1, y, flow["name"], fontsize=TEXT, weight="bold", va="center")
        cells = [f"{flow['image_size']}x{flow['image_size']} px\npatches of {flow['patch_size']}",
                 f"up to {flow['patches']:,} patch vectors\n{flow['vision']}",
                 f"{flow['latents']} latents a block\n({flow['perceiver']})",
                 f"{flow['image_tokens']} <image> tokens an image\n" +
                 (f"splitting: {flow['blocks']} blocks x {flow['latents']}" if flow["blocks"] > 1 else "no splitting")
                 + f"\n{flow['text']}"]
        for (x, _, _), w, cell in zip(boxes, width, cells):
            ax.text(x + w / 2, y - 0.62, cell, ha="center", va="center", fontsize=SMALL, linespacing=1.3)
    ax.set_title("Idefics2: what one image becomes (read from each model's config and processor)",
                 fontsize=TEXT + 1, loc="left")
    fig.tight_layout(pad=0.3)
    return fig
