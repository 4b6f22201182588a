"""Lesson 01 exercises: write a conversation by hand, and count the tokens an image costs."""

from __future__ import annotations

from ..errors import VLMCourseError
from .check import correct, expected_inputs, not_solved, same_image, wrong

QUESTION = "What do we see in this image?"


def check_conversation(vlm, messages, seed: int = 7) -> bool | None:
    """True when `messages` is one user turn holding the drawing of scene `seed` and then QUESTION, in
    transformers' format; the checker then runs the model on it. The placeholder None is "not solved yet";
    anything else that is wrong raises ExerciseError saying what."""
    from ..chat import count_tokens, generate, user
    from ..messages import validate
    from ..models import is_tiny
    from ..shapes import random_scene

    if messages is None:
        return not_solved("write `my_messages` as a list of dicts and run the check again.")
    try:
        checked = validate(messages)
    except VLMCourseError as e:
        raise wrong(f"the package refuses these messages:\n  {e}") from e
    if len(checked) != 1 or checked[0]["role"] != "user":
        raise wrong(f"expected exactly one user turn, got roles {[m['role'] for m in checked]}.")
    kinds = [p["type"] for p in checked[0]["content"]]
    texts = [p["text"] for p in checked[0]["content"] if p["type"] == "text"]
    if sorted(kinds) != ["image", "text"]:
        raise wrong(f"expected one image part and one text part, got parts {kinds}.")
    if texts != [QUESTION]:
        raise wrong(f"the text part should be the exercise's question, exactly; it is {texts[0]!r}.")
    if kinds != ["image", "text"]:
        raise wrong("the question comes before the image. Idefics2 learnt images first, then the question about "
                    "them (look at the prompt the template renders in this lesson): put the image part first.")
    scene = random_scene(seed)
    try:
        theirs = expected_inputs(vlm, checked)
    except VLMCourseError as e:
        raise wrong(f"the image could not be used: {e}") from e
    if not same_image(vlm, theirs.get("pixel_values"), expected_inputs(vlm, [user(scene.draw(), QUESTION)])["pixel_values"]):
        raise wrong(f"the image part is not the drawing of scene {seed} (random_scene({seed}).draw()).")
    reply = generate(vlm, checked)
    tokens = count_tokens(vlm, checked)
    read = (f"the model read {tokens['prompt_tokens']} tokens ({tokens['image_tokens']} of them image tokens) "
            f"and answered {reply.text!r}")
    if not is_tiny(vlm):
        return correct(f"the messages are well formed; {read}. This model ({vlm.name}) is not the tiny one, so "
                       f"its answer is not compared with scene {seed}: compare by eye.")
    truth = "which is what the scene shows" if reply.text == scene.describe() else \
        f"while scene {seed} shows {scene.describe()!r}: the model is wrong here, not your messages"
    return correct(f"the messages are well formed; {read}, {truth}.")


def check_image_tokens(answer, images: int = 3, splitting: bool = True) -> bool | None:
    """True when `answer` is the number of <image> tokens idefics2-8b reads for `images` images,
    computed from its published configuration (64 perceiver latents; 4 crops + the original with splitting)."""
    import json

    from ..memory import REFERENCE_CONFIGS

    if answer is None:
        return not_solved("set `answer` to a number and run the check again.")
    config = json.loads(REFERENCE_CONFIGS["idefics2-8b"].read_text())
    latents = config["perceiver_config"]["resampler_n_latents"]
    truth = images * latents * (5 if splitting else 1)
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise wrong(f"expected a whole number of tokens (an int), got {answer!r}.")
    if answer == truth:
        return correct(f"{images} image(s) x {5 if splitting else 1} block(s) x {latents} latents = {truth} image tokens.")
    hint = ("Did you forget that splitting makes 5 blocks per image (4 crops + the original)?"
            if splitting and answer == images * latents else
            "Each block is as long as the perceiver has latents (resampler_n_latents).")
    raise wrong(f"{answer} is not it. {hint}")
