"""Lesson 06 exercise: add a "describe in detail" button to the image Q&A app.

Write `add_detail_button(app)`: it adds a button to `app.widget` (somewhere a person sees it) and,
when the button is clicked, asks the model for a detailed description of the current image. Then:

    from vlm_course.exercises.lesson06 import check_detail_button
    check_detail_button(add_detail_button, vlm)

The checker builds a fresh app, draws a scene, runs your function, finds your new button in the
app, clicks it the way a person would, and checks that a detailed description was asked for and
answered. It prints a verdict and returns True or False; it never raises on a wrong answer.
"""

from __future__ import annotations

DETAIL_WORDS = ("detail",)


def _buttons(widget) -> list:
    """Every Button in a widget tree, depth first."""
    import ipywidgets

    found = [widget] if isinstance(widget, ipywidgets.Button) else []
    for child in getattr(widget, "children", ()) or ():
        found += _buttons(child)
    return found


def check_detail_button(add_detail_button, vlm, seed: int = 6) -> bool:
    """Verify `add_detail_button(app)`: print a verdict, return True if it works."""
    from ..widgets import ImageQAApp

    def verdict(ok: bool, text: str) -> bool:
        print(("Correct! " if ok else "Not yet: ") + text)
        return ok

    if add_detail_button is None:
        return verdict(False, "not answered yet. Write add_detail_button(app) and pass it to the checker.")
    if not callable(add_detail_button):
        return verdict(False, f"expected a function add_detail_button(app), got {type(add_detail_button).__name__}.")
    app = ImageQAApp(vlm, seed=seed)
    app.draw_scene()
    before = {id(b) for b in _buttons(app.widget)}
    try:
        add_detail_button(app)
    except Exception as e:  # the learner's code: report it, do not stop the notebook
        return verdict(False, f"add_detail_button(app) raised {type(e).__name__}: {e}")
    new = [b for b in _buttons(app.widget) if id(b) not in before]
    if not new:
        return verdict(False, "no new button appears in app.widget. Add it to a box that is displayed, e.g. "
                              "app.widget.children += (button,).")
    button = new[0]
    try:
        button.click()
        finished = app.wait(120)
    except Exception as e:
        return verdict(False, f"clicking your button raised {type(e).__name__}: {e}")
    if not finished:
        return verdict(False, "the answer did not finish within two minutes.")
    questions = [p["text"] for m in app.history if m["role"] == "user" for p in m["content"] if p["type"] == "text"]
    if not questions:
        return verdict(False, f"clicking {button.description!r} asked nothing. Call app.ask(...) in its on_click "
                              f"handler. App message: {app.error or '(none)'}")
    question = questions[-1]
    if not any(word in question.lower() for word in DETAIL_WORDS):
        return verdict(False, f"your button asked {question!r}, which does not ask for a detailed description "
                              "(try 'Describe this image in detail.').")
    if app.history[-1]["role"] != "assistant" or not app.answer:
        return verdict(False, "the question was asked but no answer was recorded.")
    return verdict(True, f"{button.description!r} asked {question!r} and the model answered: {app.answer!r}")
