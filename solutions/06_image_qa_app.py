"""Notebook 06, exercise: a reference solution, run as a cell after the exercise cell (which holds a placeholder)."""

import ipywidgets as widgets


def add_detail_button(app):
    """A button that asks for a detailed description of the app's current image."""
    button = widgets.Button(description="Describe in detail", icon="search")
    button.on_click(lambda _: app.ask("Describe this image in detail."))
    app.widget.children += (button,)
