"""The shared figures fit a notebook's width and keep every label readable (vlm_course/plots.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from vlm_course import plots  # noqa: E402
from vlm_course.shapes import random_scene  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _text_extents(fig):
    """Window extents of every text the figure draws (after a draw): not the labels of ticks that lie
    outside their axis' range, which matplotlib keeps but does not draw."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    undrawn.update({id(tick.label1), id(tick.label2)})
    return [t.get_window_extent(renderer) for t in fig.findobj(matplotlib.text.Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes) if i < j and a.overlaps(b)]


def test_eight_scene_grid_fits_the_notebook_and_its_captions_do_not_overlap():
    scenes = [random_scene(seed) for seed in range(100, 108)]
    captions = [s.describe() for s in scenes]
    fig = plots.show_images([s.draw() for s in scenes], captions, correct=[True] * 7 + [False])
    assert fig.get_figwidth() <= plots.WIDTH
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    assert len(titles) == 8
    assert all(t.get_fontsize() >= plots.SMALL for t in titles)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert _overlaps([t.get_window_extent(renderer) for t in titles]) == []
    # each caption stays within its own image's width
    for ax in fig.axes[:8]:
        box, title = ax.get_window_extent(renderer), ax.title.get_window_extent(renderer)
        assert title.x0 >= box.x0 - 2 and title.x1 <= box.x1 + 2, ax.title.get_text()
    # right and wrong are told apart: the frame of the wrong one is red, its caption starts with a cross
    assert fig.axes[7].title.get_text().startswith("✗")
    assert matplotlib.colors.to_hex(fig.axes[7].spines["top"].get_edgecolor()) == matplotlib.colors.to_hex(plots.WRONG)


def _row(config, quality, mb=3.42, decode=300.0):
    return {"config": config, "model_bytes": mb * 1e6, "estimate_bytes": mb * 1e6, "decode_tok_s": decode,
            "quality": quality, "device": "cpu"}


def test_benchmark_gives_each_configuration_its_own_row_so_equal_scores_stay_visible():
    rows = [_row("eager", 0.98), _row("sdpa", 0.98), _row("bnb-4bit", 0.9, mb=1.0, decode=80.0),
            {"config": "quanto-int4", "error": "generate failed: Cannot set version_counter for inference tensor",
             "device": "cpu"}]
    fig = plots.benchmark(rows, "attention backends")
    assert fig.get_figwidth() <= plots.WIDTH
    quality = fig.axes[2]
    points = [tuple(p) for collection in quality.collections for p in collection.get_offsets()]
    assert len(points) == 3 and len(set(points)) == 3  # eager and sdpa: same score, two points
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["eager", "sdpa", "bnb-4bit", "quanto-int4"]
    assert any(t.get_text().startswith("failed:") for t in fig.axes[0].texts)
    # the legend sits below the panels, outside every data area, and no text covers another
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert all(not legend.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert _overlaps(_text_extents(fig)) == []


def test_benchmark_of_two_configurations_keeps_its_labels_apart():
    fig = plots.benchmark([_row("eager", 1.0), _row("sdpa", 1.0, decode=65.0)], "attention backends")
    assert _overlaps(_text_extents(fig)) == []
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert all(not legend.overlaps(ax.get_window_extent()) for ax in fig.axes)


def test_weights_and_peaks_marks_the_published_peaks_on_their_own_rows():
    weights = {"float32": 33.6, "bfloat16": 16.81, "float16": 16.81, "bnb-8bit": 8.68, "bnb-4bit": 5.11}
    peaks = {"float32": 38.8, "bfloat16": 22.2, "float16": 21.3, "bnb-4bit": 9.2}
    fig = plots.weights_and_peaks(weights, peaks)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(weights)
    [markers] = ax.collections
    assert [tuple(p) for p in markers.get_offsets()] == [(38.8, 0), (22.2, 1), (21.3, 2), (9.2, 4)]
    assert fig.get_figwidth() <= plots.WIDTH
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())
    assert _overlaps(_text_extents(fig)) == []


def test_architecture_reads_its_token_counts_from_the_configs():
    from vlm_course.models import TINY_MODEL_DIR

    tiny, big = plots.token_flow(TINY_MODEL_DIR), plots.token_flow("idefics2-8b")
    assert (tiny["patches"], tiny["latents"], tiny["image_tokens"]) == (64, 8, 8)
    assert (big["patches"], big["latents"], big["blocks"], big["image_tokens"]) == (4900, 64, 5, 320)
    fig = plots.architecture()
    texts = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
    assert "8 <image> tokens an image" in texts and "320 <image> tokens an image" in texts
    assert fig.get_figwidth() <= plots.WIDTH
    assert _overlaps(_text_extents(fig)) == []


def test_token_flow_of_a_loaded_model_agrees_with_its_processor(vlm):
    from vlm_course.chat import count_tokens, user

    counted = count_tokens(vlm, [user(random_scene(7).draw(), "What do we see in this image?")])
    assert plots.token_flow(vlm)["image_tokens"] == counted["image_tokens"]


def _workload(tokens, images, speedup):
    return {"completion_tokens": tokens, "conversations": 16, "images": images, "speedup": speedup,
            "preprocess_seconds": 0.11, "vision_seconds": 0.09, "batch_seconds": 0.85}


def test_batching_figure_fits_the_notebook_with_its_legend_below():
    from vlm_course.chat_bench import plot_batching

    fig = plot_batching({"descriptions": _workload(288, [1] * 16, 6.2), "two images": _workload(208, [2] * 16, 3.9),
                         "mixed": _workload(112, [1] * 13 + [2] * 3, 3.8)})
    assert fig.get_figwidth() <= plots.WIDTH
    assert all(t.get_fontsize() >= plots.SMALL for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip())
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].get_yticklabels()] == ["descriptions", "two images", "mixed"]
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert all(not legend.overlaps(ax.get_window_extent()) for ax in fig.axes)
    assert _overlaps(_text_extents(fig)) == []


def test_caption_throughput_figure_labels_every_point_readably():
    from vlm_course.caption_bench import plot_caption_throughput

    rows = [{"batch size": b, "captions/s": v} for b, v in [(1, 37.9), (4, 130.2), (16, 302.7)]]
    fig = plot_caption_throughput(rows)
    assert fig.get_figwidth() <= plots.WIDTH
    assert [t.get_text() for t in fig.axes[0].texts] == ["38", "130", "303"]
    assert all(t.get_fontsize() >= plots.SMALL for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip())
    assert _overlaps(_text_extents(fig)) == []


def test_loss_curve_marks_each_later_stage_and_leaves_pyplot_alone(tmp_path):
    import matplotlib.pyplot as plt

    history = [{"step": s, "loss": 2.0 / (1 + s)} for s in range(0, 300, 10)]
    fig = plots.save_loss_curve(history, tmp_path / "loss.png", "Training", stage_starts=(200,))
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert not plt.get_fignums()  # drawn outside pyplot: a notebook's own figures and backend are untouched
    assert fig.get_figwidth() <= plots.WIDTH
    [ax] = fig.axes
    marks = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in marks] == [200] and ax.get_legend() is not None
    assert all(t.get_fontsize() >= plots.SMALL for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip())
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a bare Figure has no renderer of its own to measure its text with
    assert not _overlaps(_text_extents(fig))
    plain = plots.save_loss_curve(history, tmp_path / "one.png", "Training")
    assert plain.axes[0].get_legend() is None  # one stage: nothing to mark
