"""The notebooks' exercises: each committed notebook holds a placeholder, each reference solution in solutions/
passes its checker when substituted into the notebook's exercise cells, and each checker rejects wrong answers,
the loopholes of issue 19 among them, with an ExerciseError that does not give the answer away."""

from __future__ import annotations

import copy
import re
import runpy
from pathlib import Path

import nbformat
import pytest

from vlm_course.chat import assistant, generate, stream, user
from vlm_course.exercises import ExerciseError
from vlm_course.shapes import random_scene

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
SOLUTIONS = ROOT / "solutions"


def solution(notebook: str, **names) -> dict:
    """The names a reference solution defines, run as a cell after the notebook's own (with `names` in scope)."""
    return runpy.run_path(str(SOLUTIONS / f"{notebook}.py"), init_globals=names)


def rejects(check, *args, match: str | None = None, **kwargs) -> str:
    """Assert that a checker raises ExerciseError (whose message matches `match`); return the message."""
    with pytest.raises(ExerciseError, match=match) as caught:
        check(*args, **kwargs)
    return str(caught.value)


def exercise_cells(path: Path) -> list[str]:
    """The code cells from the notebook's last "## Exercise" heading on."""
    nb = nbformat.read(path, as_version=4)
    start = max(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercise" in c.source)
    return [c.source for c in nb.cells[start:] if c.cell_type == "code"]


# --- every notebook: a placeholder committed, the solution apart, and the two meet ---------------------------

def test_every_notebook_has_an_exercise_with_a_placeholder_and_a_solution_apart():
    assert len(NOTEBOOKS) == 10
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
        assert tagged, f"{path.name}: no cell tagged 'exercise'"
        for cell in tagged:
            assert re.search(r"\bNone\b", cell.source), f"{path.name}: no placeholder (None) in its exercise cell"
            assert re.search(r"^check_\w+\(", cell.source.splitlines()[-1]), f"{path.name}: the cell must end with its check"
        assert (SOLUTIONS / f"{path.stem}.py").exists(), f"no reference solution for {path.name} in solutions/"
        assert f"solutions/{path.stem}.py" in "".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_solutions_are_not_shipped_in_the_package():
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["vlm_course*"] and not (ROOT / "vlm_course" / "solutions").exists()
    assert not (SOLUTIONS / "__init__.py").exists()


@pytest.fixture(scope="module")
def blip2():
    from vlm_course.models import load_vlm

    return load_vlm("tiny-blip2", device="cpu")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_exercise_cells_say_not_solved_then_pass_with_the_reference_solution(path, vlm, request, capsys):
    """Runs the notebook's exercise cells as committed (the placeholder: "Not solved yet", nothing raised, and a
    demo of a wrong answer where the lesson has one), then the reference solution as the next cell, then the
    exercise's checks again: each must now return True."""
    names = {"vlm": vlm, "base": vlm}
    if path.stem.startswith("08"):
        names["blip2"] = request.getfixturevalue("blip2")
    cells = exercise_cells(path)
    for source in cells:
        exec(compile(source, f"{path.name}:exercise", "exec"), names)
    assert "Not solved yet" in capsys.readouterr().out
    names.update(solution(path.stem, **names))
    checks = [source.splitlines()[-1] for source in cells if re.match(r"check_\w+\(", source.splitlines()[-1])]
    assert checks
    for check in checks:
        assert eval(check, names) is True, check
    assert "Correct" in capsys.readouterr().out


# --- 00: ask the model, return its reply ----------------------------------------------------------------------

def test_lesson00_rejects_a_reply_not_written_by_the_model_and_the_wrong_image_or_question(vlm, capsys):
    from vlm_course.exercises.lesson00 import check_count

    ask = solution("00_setup")["ask_count"]
    assert check_count(ask, vlm) is True and "right" in capsys.readouterr().out
    assert check_count(None, vlm) is None and check_count(lambda vlm, image: None, vlm) is None
    rejects(check_count, lambda vlm, image: "one, two or three?", vlm, match="never ran the model")
    rejects(check_count, lambda vlm, image: generate(vlm, [user(image, "How many shapes are there?")]).text + " three",
            vlm, match="not a string of your own")
    rejects(check_count, lambda vlm, image: generate(vlm, [user(random_scene(3).draw(), "How many shapes are there?")]).text,
            vlm, match="image the model saw is not")
    rejects(check_count, lambda vlm, image: generate(vlm, [user(image, "How many shapes?")]).text, vlm,
            match="another prompt")
    rejects(check_count, lambda vlm, image: 7 // 0, vlm, match="ZeroDivisionError")


def test_lesson00_on_another_model_checks_what_the_model_did_not_its_numbers(test_vlm, capsys):
    from vlm_course.exercises.lesson00 import check_count

    assert check_count(solution("00_setup")["ask_count"], test_vlm) is True
    assert "never saw the shapes world" in capsys.readouterr().out
    rejects(check_count, lambda vlm, image: "two.", test_vlm, match="never ran the model")


# --- 01: messages by hand; image tokens -----------------------------------------------------------------------

QUESTION_01 = "What do we see in this image?"


@pytest.mark.parametrize("model", ["vlm", "test_vlm"])
def test_lesson01_checks_the_image_and_its_place_before_the_question(model, request, capsys):
    from vlm_course.exercises.lesson01 import check_conversation

    vlm = request.getfixturevalue(model)
    assert check_conversation(vlm, solution("01_chat_templates")["my_messages"], seed=7) is True
    assert ("what the scene shows" if model == "vlm" else "not the tiny one") in capsys.readouterr().out
    assert check_conversation(vlm, None, seed=7) is None
    rejects(check_conversation, vlm, [user(random_scene(8).draw(), QUESTION_01)], seed=7, match="not the drawing of scene 7")
    rejects(check_conversation, vlm, [user(QUESTION_01, random_scene(7).draw())], seed=7, match="before the image")
    rejects(check_conversation, vlm, [{"role": "user", "content": QUESTION_01}], seed=7, match="plain-string")
    rejects(check_conversation, vlm, [user(random_scene(7).draw(), "What is in this image?")], seed=7,
            match="exercise's question")
    rejects(check_conversation, vlm, [user(random_scene(7).draw(), QUESTION_01), assistant("a blue circle.")], seed=7,
            match="refuses|one user turn")


def test_lesson01_image_tokens():
    from vlm_course.exercises.lesson01 import check_image_tokens

    assert check_image_tokens(solution("01_chat_templates")["answer"]) is True
    assert check_image_tokens(None) is None
    assert "5 blocks" in rejects(check_image_tokens, 3 * 64)
    rejects(check_image_tokens, 960.0, match="whole number")
    rejects(check_image_tokens, "960", match="whole number")
    assert check_image_tokens(2 * 64, images=2, splitting=False) is True


# --- 02: the history ------------------------------------------------------------------------------------------

def test_lesson02_rejects_the_demo_bug_a_wrong_image_and_the_question_first():
    from vlm_course.exercises.lesson02 import check_add_exchange

    assert check_add_exchange(solution("02_multi_image")["add_exchange"]) is True
    assert check_add_exchange(None) is None and check_add_exchange(lambda *args: None) is None
    rejects(check_add_exchange, lambda h, q, image, reply: h + [user(image, q), assistant(q)], match="well-known bug")
    rejects(check_add_exchange, lambda h, q, image, reply: h + [user(q, image), assistant(reply)],
            match="question comes before the image")
    rejects(check_add_exchange, lambda h, q, image, reply: h + [user(random_scene(1).draw(64), q), assistant(reply)],
            match="image passed to add_exchange")
    rejects(check_add_exchange, lambda h, q, image, reply: [user(image, q), assistant(reply)], match="roles")
    rejects(check_add_exchange, lambda h, q, image, reply: {}[q], match="KeyError")


# --- 03: stop the stream at the first sentence ----------------------------------------------------------------

def read_everything(vlm, messages):
    text = "".join(stream(vlm, messages, max_new_tokens=80))
    return text[: text.index(".") + 1]


def cut_afterwards(vlm, messages):
    text = generate(vlm, messages, max_new_tokens=80).text
    return text[: text.index(".") + 1]


def left_open(vlm, messages, kept=[]):  # noqa: B006 - keeps the stream alive, as a learner's global would
    s = stream(vlm, messages, max_new_tokens=80)
    kept.append(s)
    text = ""
    for piece in s:
        text += piece
        if "." in text:
            return text[: text.index(".") + 1]


def in_a_thread_never_stopped(vlm, messages):
    """TextIteratorStreamer with generate in a thread, but nothing stops generate: it writes the whole reply."""
    import threading

    from transformers import TextIteratorStreamer

    from vlm_course.chat import prepare

    streamer = TextIteratorStreamer(vlm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
    kwargs = dict(**prepare(vlm, [messages]), max_new_tokens=80, do_sample=False, streamer=streamer)
    threading.Thread(target=vlm.model.generate, kwargs=kwargs, daemon=True).start()
    text = ""
    for piece in streamer:
        text += piece
        if "." in text:
            return text[: text.index(".") + 1].strip()


def with_thread_stream(vlm, messages):
    from vlm_course.streaming import thread_stream

    text = ""
    with thread_stream(vlm, messages, max_new_tokens=80) as pieces:  # leaving the block stops generate's thread
        for piece in pieces:
            text += piece
            if "." in text:
                return text[: text.index(".") + 1]
    return text


@pytest.mark.parametrize("model", ["vlm", "test_vlm"])
def test_lesson03_counts_forward_passes_and_never_shows_the_sentence(model, request, capsys):
    from vlm_course.exercises.lesson03 import check_first_sentence, exercise_cases

    vlm = request.getfixturevalue(model)
    assert check_first_sentence(solution("03_streaming")["first_sentence"], vlm) is True
    assert check_first_sentence(None, vlm) is None and check_first_sentence(lambda vlm, m: None, vlm) is None
    assert check_first_sentence(with_thread_stream, vlm) is True  # the lesson's other way, done right, passes too
    capsys.readouterr()
    cases = exercise_cases(vlm)
    sentences = {id(messages): sentence for _, messages, sentence, _, _ in cases}
    rejects(check_first_sentence, lambda vlm, messages: sentences[id(messages)], vlm, match="never ran the model")
    for wasteful in (read_everything, cut_afterwards, in_a_thread_never_stopped):
        rejects(check_first_sentence, wasteful, vlm, match="forward passes")
    rejects(check_first_sentence, left_open, vlm, match="still generating")
    message = rejects(check_first_sentence, lambda vlm, messages: "".join(stream(vlm, messages, max_new_tokens=2)), vlm)
    assert all(sentence not in message for sentence in sentences.values())
    assert all(sentence not in capsys.readouterr().out for sentence in sentences.values())


# --- 04: 'auto' on machines the lesson does not show ----------------------------------------------------------

def test_lesson04_asks_about_other_machines_and_rejects_one_answer_for_all():
    from vlm_course.exercises.lesson04 import MACHINES, auto_backend, check_auto_backends

    right = solution("04_attention")["answers"]
    assert right == {name: auto_backend(name) for name in MACHINES}  # the solution agrees with load_vlm's logic
    assert check_auto_backends(right) is True
    assert check_auto_backends(None) is None and check_auto_backends({name: None for name in MACHINES}) is None
    assert "3 of 4" in rejects(check_auto_backends, {name: "sdpa" for name in MACHINES})
    rejects(check_auto_backends, {name: "flash_attention_2" for name in MACHINES}, match="1 of 4")
    rejects(check_auto_backends, {**right, "colab-t4": "flash"}, match="not a backend name")
    rejects(check_auto_backends, {**right, "my-laptop": "sdpa"}, match="unknown machine")


# --- 05: bytes of idefics2-8b ---------------------------------------------------------------------------------

def test_lesson05_tolerance_rejects_one_byte_a_parameter():
    from vlm_course.exercises.lesson05 import check_weights_gb
    from vlm_course.memory import estimate

    assert check_weights_gb("bnb-8bit", solution("05_quantization_memory")["answer"], dtype="float32") is True
    assert check_weights_gb("bnb-8bit", None, dtype="float32") is None
    parameters = estimate("idefics2-8b").parameters
    rejects(check_weights_gb, "bnb-8bit", parameters / 1e9, dtype="float32", match="too low")  # 8.40 GB
    rejects(check_weights_gb, "bnb-8bit", 8.68, dtype="float32", match="stay in float32")  # the table's bf16 figure
    for method in ("bnb-8bit", "quanto-int8", "torchao-int8"):  # in bf16 too: 8.40 against about 8.68
        rejects(check_weights_gb, method, parameters / 1e9, match="too low")
    rejects(check_weights_gb, "bnb-4bit", parameters / 2e9, match="too low")  # half a byte forgets scales, lm_head
    rejects(check_weights_gb, "bnb-8bit", 2 * parameters / 1e9, dtype="float32", match="too high")
    rejects(check_weights_gb, "bnb-8bit", "9.2", dtype="float32", match="number of GB")


# --- 06: the app's button -------------------------------------------------------------------------------------

def button_asking(question=None, action=None):
    import ipywidgets as widgets

    def add(app):
        button = widgets.Button(description="Describe in detail")
        button.on_click(action or (lambda _: app.ask(question)))
        app.widget.children += (button,)
    return add


def test_lesson06_checks_the_question_the_image_and_that_the_model_answered(vlm, capsys):
    from vlm_course.exercises.lesson06 import check_detail_button

    assert check_detail_button(solution("06_image_qa_app")["add_detail_button"], vlm) is True
    assert "It matches the scene" in capsys.readouterr().out
    assert check_detail_button(None, vlm) is None
    assert check_detail_button(button_asking("describe the image in detail"), vlm) is True  # a phrasing it learnt
    rejects(check_detail_button, button_asking("Skip the details: what colour is it?"), vlm, match="not a request")
    rejects(check_detail_button, button_asking("How many shapes are there?"), vlm, match="not a request")

    def another_scene(app):
        button_asking(action=lambda _: (app.draw_scene(99), app.ask("Describe this image in detail.")))(app)
    rejects(check_detail_button, another_scene, vlm, match="image the model saw is not")

    def fake_answer(app):
        def write(_):
            app.history += [user("Describe this image in detail."), assistant("There is one shape.")]
            app.answer = "There is one shape."
        button_asking(action=write)(app)
    rejects(check_detail_button, fake_answer, vlm, match="never ran the model")

    def hidden(app):
        import ipywidgets as widgets

        widgets.Button(description="Describe in detail").on_click(lambda _: app.ask("Describe this image in detail."))
    rejects(check_detail_button, hidden, vlm, match="no new button")
    rejects(check_detail_button, lambda app: 1 / 0, vlm, match="ZeroDivisionError")


# --- 07: a request body by hand -------------------------------------------------------------------------------

def test_lesson07_sends_the_body_to_a_real_server_and_checks_its_image(vlm):
    from vlm_course.exercises.lesson07 import check_request
    from vlm_course.images import image_to_data_uri

    right = solution("07_serving")["body"]
    assert check_request(right, vlm) is True
    assert check_request({**right, "model": vlm.name}, vlm) is True
    assert check_request(None, vlm) is None
    other_scene = copy.deepcopy(right)
    other_scene["messages"][0]["content"][0]["image_url"]["url"] = image_to_data_uri(random_scene(4).draw())
    rejects(check_request, other_scene, vlm, match="not the drawing of scene 3")
    for wrong, why in [({**right, "stream": False}, "stream is not true"), ({**right, "temperature": 0.7}, "greedy"),
                       ({**right, "max_tokens": 64}, "at most 16"),
                       ({**right, "messages": [{"role": "user", "content": "How many shapes are there?"}]}, "list of parts"),
                       ({**right, "messages": [{"role": "tool", "content": "x"}]}, "refuse"), ("a string", "dict")]:
        rejects(check_request, wrong, vlm, match=why)


# --- 08: BLIP-2's prompt --------------------------------------------------------------------------------------

def test_lesson08_scores_the_prompts_on_the_tiny_blip2(blip2):
    from vlm_course.exercises.lesson08 import check_make_prompt

    assert check_make_prompt(solution("08_image_to_text")["make_prompt"], blip2) is True
    assert check_make_prompt(None, blip2) is None and check_make_prompt(lambda q: None, blip2) is None
    rejects(check_make_prompt, lambda question: question, blip2, match="answered right")
    rejects(check_make_prompt, lambda question: f"Answer: {question}", blip2, match="answered right")
    rejects(check_make_prompt, lambda question: 3, blip2, match="string")


# --- 09: labels by hand ---------------------------------------------------------------------------------------

def test_lesson09_labels(vlm):
    import torch

    from vlm_course import finetune as ft
    from vlm_course.exercises.lesson09 import check_two_turn_labels, exercise_input_ids

    ids = exercise_input_ids(vlm)
    right = solution("09_fine_tuning", base=vlm, ids=ids)["labels"]
    assert right == ft.build_labels(torch.tensor([ids]), vlm.processor)[0].tolist()
    assert check_two_turn_labels(vlm, right) is True and check_two_turn_labels(vlm, torch.tensor(right)) is True
    assert check_two_turn_labels(vlm, None) is None
    image_id = vlm.tokenizer.convert_tokens_to_ids("<image>")
    rejects(check_two_turn_labels, vlm, [-100 if t == image_id else t for t in ids], match="should be masked")
    end_id = vlm.tokenizer.convert_tokens_to_ids(ft.END_OF_UTTERANCE)
    rejects(check_two_turn_labels, vlm, [-100 if t == end_id else t for t in right], match="<end_of_utterance>")
    rejects(check_two_turn_labels, vlm, right[:-1], match="one per input id")
    rejects(check_two_turn_labels, vlm, right[1:] + [-100], match="-100 or the token id")
