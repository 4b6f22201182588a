"""Lesson 06 exercise: add a "describe in detail" button to the image Q&A app.

Write `add_detail_button(app)`: it adds a button to `app.widget` (somewhere a person sees it) and,
when the button is clicked, asks the model for a detailed description of the current image. Then:

    from vlm_course.exercises.lesson06 import check_detail_button
    check_detail_button(add_detail_button, vlm)

The checker builds a fresh app, draws a scene, runs your function, finds your new button in the app,
clicks it the way a person would, and checks what the model itself received and wrote: the current image
with a request for a detailed description (the phrasing the model was trained on, as the app suggests it),
and the model's reply recorded as the app's answer. The placeholder None is "not solved yet"; anything
wrong raises ExerciseError.
"""

from __future__ import annotations

from ..shapes.questions import DETAIL_QUESTIONS
from .check import ModelWatch, correct, explain_mismatch, learner_call, matching_call, not_solved, reply_text, wrong


def _buttons(widget) -> list:
    """Every Button in a widget tree, depth first."""
    import ipywidgets

    found = [widget] if isinstance(widget, ipywidgets.Button) else []
    for child in getattr(widget, "children", ()) or ():
        found += _buttons(child)
    return found


def _normal(question: str) -> str:
    return " ".join(question.lower().strip().rstrip(".").split())


def asks_for_detail(question: str) -> bool:
    """Whether `question` is a request for a detailed description in the words the model learnt."""
    return _normal(question) in {_normal(q) for q in DETAIL_QUESTIONS}


def check_detail_button(add_detail_button, vlm, seed: int = 6) -> bool | None:
    """Verify `add_detail_button(app)`: True if it works, ExerciseError saying what is wrong otherwise."""
    from ..chat import user
    from ..models import is_tiny
    from ..shapes import detailed_description
    from ..widgets import ImageQAApp

    if add_detail_button is None:
        return not_solved("write add_detail_button(app) and pass it to the checker.")
    if not callable(add_detail_button):
        raise wrong(f"expected a function add_detail_button(app), got {type(add_detail_button).__name__}.")
    app = ImageQAApp(vlm, seed=seed)
    scene = app.draw_scene()
    image = app.image
    before = {id(b) for b in _buttons(app.widget)}
    learner_call("add_detail_button(app)", add_detail_button, app)
    new = [b for b in _buttons(app.widget) if id(b) not in before]
    if not new:
        raise wrong("no new button appears in app.widget. Add it to a box that is displayed, e.g. "
                    "app.widget.children += (button,).")
    button = new[0]
    with ModelWatch(vlm) as watch:
        learner_call(f"clicking {button.description!r}", button.click)
        finished = app.wait(120)
        watch.settle()
    if not finished:
        raise wrong("the answer did not finish within two minutes.")
    questions = [p["text"] for m in app.history if m["role"] == "user" for p in m["content"] if p["type"] == "text"]
    if not questions:
        raise wrong(f"clicking {button.description!r} asked nothing. Call app.ask(...) in its on_click handler. "
                    f"App message: {app.error or '(none)'}")
    question = questions[-1]
    if not asks_for_detail(question):
        raise wrong(f"your button asked {question!r}, which is not a request for a detailed description in the words "
                    "this course's model learnt (the app suggests one: look at its suggested questions).")
    messages = [user(image, question)]
    call = matching_call(vlm, watch, messages)
    if call is None:
        raise wrong(explain_mismatch(vlm, watch, messages, "your button") +
                    " It should ask about the image the app shows (app.ask does that).")
    said = reply_text(vlm, call)
    if app.history[-1]["role"] != "assistant" or not app.answer or app.answer != said:
        raise wrong("the model answered, but its reply is not what the app recorded as the answer: let app.ask "
                    "stream it into the app.")
    verdict = "" if not is_tiny(vlm) else (" It matches the scene." if said == detailed_description(scene) else
                                           " (The model is wrong about this scene; your button is right.)")
    return correct(f"{button.description!r} asked {question!r} about the app's image and the model answered: "
                   f"{app.answer!r}.{verdict}")
