"""Messages: building, validating, and every trap of Idefics2's chat template, shown and then prevented."""

from __future__ import annotations

import pytest

from vlm_course.chat import count_tokens, generate, prepare, render_prompt, splitting_processor
from vlm_course.errors import MessagesError, VLMCourseError
from vlm_course.history import ChatHistory
from vlm_course.messages import assistant, image_sources, user, validate
from vlm_course.shapes import random_scene

IMG = random_scene(3).draw(size=64)
IMG2 = random_scene(4).draw(size=64)


def test_user_builds_typed_parts_in_order():
    turn = user(IMG, "What do we see?", IMG2)
    assert turn["role"] == "user"
    assert [p["type"] for p in turn["content"]] == ["image", "text", "image"]
    assert turn["content"][1] == {"type": "text", "text": "What do we see?"}
    assert user("cat.png", "What is this?")["content"][0]["type"] == "image"  # a file name is an image
    assert user("What is in cat.png?")["content"][0]["type"] == "text"


def test_image_sources_follow_placeholder_order():
    msgs = [user(IMG, "q"), assistant("a"), user("q2", IMG2)]
    assert image_sources(validate(msgs)) == [IMG, IMG2]


@pytest.mark.parametrize("bad, needle", [
    ({"role": "user", "content": [{"type": "text", "text": "hi"}]}, "single message dict"),
    ([], "non-empty list"),
    ([{"role": "robot", "content": [{"type": "text", "text": "hi"}]}], "role 'robot'"),
    ([{"role": "user", "content": "Hello"}], "plain-string content"),
    ([{"role": "user", "content": [{"type": "text", "text": "  "}]}], "no text"),
    ([{"role": "user", "content": [{"type": "video"}]}], "type 'video'"),
    ([{"role": "user", "content": [{"type": "image"}]}], "without an image"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "image_url"),
    ([{"role": "user", "content": [{"type": "text", "text": "<image>What is it?"}]}], "typed by hand"),
    ([user("q"), {"role": "assistant", "content": [{"type": "image", "image": IMG}]}, user("q")], "cannot contain images"),
    ([user("q"), assistant("a")], "ends with a 'assistant' turn"),
])
def test_validate_explains_each_mistake(bad, needle):
    with pytest.raises(MessagesError, match=None) as info:
        validate(bad)
    assert needle in str(info.value)
    assert isinstance(info.value, VLMCourseError) and isinstance(info.value, ValueError)


def test_trap_plain_string_content_is_silently_dropped_then_refused(vlm):
    plain = [{"role": "user", "content": "What do we see in this image?"}]
    raw = vlm.processor.apply_chat_template(plain, add_generation_prompt=True)
    assert "What do we see" not in raw  # the trap: transformers renders an empty turn without a word
    with pytest.raises(MessagesError, match="plain-string content"):
        generate(vlm, plain)
    typed = [user("What do we see in this image?")]
    assert "What do we see in this image?" in render_prompt(vlm, typed)


def test_trap_images_must_match_placeholders(vlm):
    text = render_prompt(vlm, [user(IMG, "What do we see in this image?")])
    with pytest.raises(ValueError):  # the trap: the raw processor, two images for one placeholder
        vlm.processor(text=[text], images=[[IMG, IMG2]], return_tensors="pt")
    with pytest.raises(MessagesError, match="typed by hand"):  # the package: placeholders come only from parts
        generate(vlm, [user("<image>", IMG, "What do we see in this image?")])


def test_placeholder_check_catches_a_template_that_loses_images(vlm):
    import copy

    broken = copy.copy(vlm)
    broken.processor = copy.deepcopy(vlm.processor)
    # A template that writes only the text parts: the prompt has no <image> for the image given.
    broken.processor.chat_template = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}"
                                      "{% if p['type'] == 'text' %}{{ p['text'] }}{% endif %}{% endfor %}\n"
                                      "{% endfor %}Assistant:")
    with pytest.raises(MessagesError, match="0 <image> placeholder"):
        prepare(broken, [[user(IMG, "What do we see in this image?")]])


def test_render_prompt_roles_and_generation_prompt(vlm):
    msgs = [user(IMG, "What do we see in this image?"), assistant("a red circle."), user("And how about this image?", IMG2)]
    with_prompt = render_prompt(vlm, msgs)
    assert with_prompt.endswith("Assistant:")
    assert with_prompt.count("<image>") == 2
    assert with_prompt.count("<end_of_utterance>") == 3
    assert "Assistant: a red circle.<end_of_utterance>" in with_prompt
    history = render_prompt(vlm, msgs[:2], add_generation_prompt=False)
    assert not history.endswith("Assistant:") and history.rstrip().endswith("<end_of_utterance>")


def test_one_image_becomes_fake_plus_latents_tokens(vlm):
    latents = vlm.model.config.perceiver_config.resampler_n_latents
    one = count_tokens(vlm, [user(IMG, "What do we see in this image?")])
    assert one["image_tokens"] == latents == vlm.processor.image_seq_len
    assert one["fake_tokens"] == 2
    two = count_tokens(vlm, [user(IMG, IMG2, "What is the difference between these two images?")])
    assert two["image_tokens"] == 2 * latents
    assert two["fake_tokens"] == 3  # adjacent images share one fake token


def test_image_splitting_multiplies_image_tokens_by_five(vlm):
    msgs = [user(IMG, "What do we see in this image?")]
    plain = count_tokens(vlm, msgs)
    split = count_tokens(vlm, msgs, processor=splitting_processor(vlm))
    assert split["image_splitting"] and not plain["image_splitting"]
    assert split["image_tokens"] == 5 * plain["image_tokens"]
    assert split["pixel_values_shape"][1] == 5 * plain["pixel_values_shape"][1]
    assert vlm.processor.image_processor.do_image_splitting is False  # the copy, not the model's processor


def test_history_keeps_the_reply_in_the_assistant_turn(vlm):
    chat = ChatHistory()
    first = chat.ask(vlm, IMG, "What do we see in this image?", max_new_tokens=24)
    second = chat.ask(vlm, "And how about this image?", IMG2, max_new_tokens=24)
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert chat.messages[1]["content"] == [{"type": "text", "text": first.text}]
    assert chat.messages[3]["content"] == [{"type": "text", "text": second.text}]
    assert chat.messages[2]["content"][0]["text"] == "And how about this image?"
    assert all("this image?" not in m["content"][0]["text"] for m in chat.messages if m["role"] == "assistant")
    assert chat.images == [IMG, IMG2]
    # The second answer is what one call on the whole conversation gives: the history is the conversation.
    assert generate(vlm, chat.messages[:3], max_new_tokens=24).text == second.text
    chat.undo()
    assert len(chat) == 2


def test_history_refuses_turns_out_of_order_and_survives_a_failed_ask(vlm):
    chat = ChatHistory()
    with pytest.raises(MessagesError):
        chat.add_assistant("hello")
    chat.add_user(IMG, "What do we see in this image?")
    with pytest.raises(MessagesError):
        chat.add_user("again?")
    chat.add_assistant("a red circle.")
    with pytest.raises(VLMCourseError, match="does-not-exist.png"):  # a missing image: ImageError
        chat.ask(vlm, "/tmp/does-not-exist.png", "What do we see in this image?")
    assert len(chat) == 2
