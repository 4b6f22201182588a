"""Lesson 01 exercises: write a conversation by hand, and count the tokens an image costs."""

from __future__ import annotations

from ..errors import VLMCourseError

QUESTION = "What do we see in this image?"


def check_conversation(vlm, messages, seed: int) -> bool:
    """True when `messages` asks the model QUESTION about scene `seed` in the right format and the
    model's answer matches the scene. Prints what is wrong otherwise; never raises."""
    from ..chat import count_tokens, generate
    from ..messages import image_sources, validate
    from ..shapes import random_scene

    if messages is None:
        print("Not answered yet: write `messages` as a list of dicts and run the check again.")
        return False
    try:
        checked = validate(messages)
    except VLMCourseError as e:
        print(f"Not quite. The package refuses these messages:\n  {e}")
        return False
    images = image_sources(checked)
    if len(checked) != 1 or checked[0]["role"] != "user":
        print(f"Expected exactly one user turn, got roles {[m['role'] for m in checked]}.")
        return False
    texts = [p["text"] for p in checked[0]["content"] if p["type"] == "text"]
    if len(images) != 1 or texts != [QUESTION]:
        print(f"Expected one image part and one text part {QUESTION!r}; got {len(images)} image(s) and texts {texts}.")
        return False
    scene = random_scene(seed)
    try:
        reply = generate(vlm, checked)
        tokens = count_tokens(vlm, checked)
    except VLMCourseError as e:
        print(f"The image could not be used: {e}")
        return False
    from ..models import is_tiny

    if not is_tiny(vlm):
        print(f"Correct: the messages are well formed; the model read {tokens['prompt_tokens']} tokens "
              f"({tokens['image_tokens']} of them image tokens) and answered {reply.text!r}. This model ({vlm.name}) "
              f"is not the tiny one, so its answer is not compared with scene {seed} ({scene.describe()!r}): "
              "compare by eye.")
        return True
    if reply.text != scene.describe():
        print(f"The messages are well formed, but the model answered {reply.text!r} while scene {seed} shows "
              f"{scene.describe()!r}. Is the image the drawing of scene {seed} (random_scene({seed}).draw())?")
        return False
    print(f"Correct: the model read {tokens['prompt_tokens']} tokens ({tokens['image_tokens']} of them image tokens) "
          f"and answered {reply.text!r}, which is what scene {seed} shows.")
    return True


def check_image_tokens(answer, images: int = 3, splitting: bool = True) -> bool:
    """True when `answer` is the number of <image> tokens idefics2-8b reads for `images` images,
    computed from its published configuration (64 perceiver latents; 4 crops + the original with splitting)."""
    import json

    from ..memory import REFERENCE_CONFIGS

    if answer is None:
        print("Not answered yet: set `answer` to a number and run the check again.")
        return False
    config = json.loads(REFERENCE_CONFIGS["idefics2-8b"].read_text())
    latents = config["perceiver_config"]["resampler_n_latents"]
    truth = images * latents * (5 if splitting else 1)
    if isinstance(answer, bool) or not isinstance(answer, int):
        print(f"Expected a whole number of tokens, got {answer!r}.")
        return False
    if answer == truth:
        print(f"Correct: {images} image(s) x {5 if splitting else 1} block(s) x {latents} latents = {truth} image tokens.")
        return True
    hint = ("Did you forget that splitting makes 5 blocks per image (4 crops + the original)?"
            if splitting and answer == images * latents else
            "Each block is as long as the perceiver has latents (resampler_n_latents).")
    print(f"Not quite: {answer} is not it. {hint}")
    return False
