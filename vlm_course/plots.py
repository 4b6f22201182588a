"""Small matplotlib helpers the notebooks share."""

from __future__ import annotations


def show_images(images, titles=None, size: float = 2.6):
    """Show PIL images side by side, with optional titles; returns the figure."""
    import matplotlib.pyplot as plt

    images = list(images)
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size), squeeze=False)
    for ax, img, title in zip(axes[0], images, titles or [None] * len(images)):
        ax.imshow(img)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig
