"""The vision cases of two public OpenAI-compatible servers' test suites, replayed against `vlm-course serve`
with the official `openai` client:

- vLLM, tests/entrypoints/openai/test_vision.py (single image with logprobs, multi-turn, image_url as a
  bare string, base64 images of several formats, streaming equals non-streaming, too many images,
  system + text-then-image, beam search with n=2);
- llama.cpp, tools/server/tests/unit/test_vision_api.py (URL, data URI, malformed, missing and non-image
  URLs, file:// with and without an allowed directory, the size limit, directory-prefix and '..' escapes).

Their images lived on the internet; here the same kinds (JPEG, grey palette PNG, RGB PNG, RGBA PNG) are
drawn from the shapes world and served by an http.server on 127.0.0.1, and the server's fetcher may reach
loopback only. Where their assertions are about a big model ("boardwalk" in the answer), ours compare
with `chat.generate` on the same conversation. Documented differences, each asserted: n=2 / beam search
is a 400 naming `n`; the finish_reason comes in its own final chunk with an empty delta (as OpenAI's API
sends it; vLLM puts it with the last piece); llama.cpp's /completions, /embeddings and /models
"capabilities" are not part of this server.
"""

from __future__ import annotations

import io
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from _loopback import LOOPBACK_ONLY, loopback_only
from _need import need  # skips outside CI, fails in CI
from vlm_course import chat
from vlm_course.serve.settings import ServerSettings
from vlm_course.serve.server import start_in_background
from vlm_course.shapes import random_scene

openai = need("openai")
need("fastapi")

# vLLM's tests ask "What's in this image?"; the tiny model knows only the wordings it was trained on and answers
# that paraphrase with "I only know about shapes." or worse, so the replay asks the trained "What is in this image?".
QUESTION = "What is in this image?"
MAXIMUM_IMAGES = 2  # vLLM's --limit-mm-per-prompt


def as_format(img: Image.Image, kind: str) -> bytes:
    """The four kinds of vLLM's TEST_IMAGE_ASSETS: a JPEG, a grey palette PNG, an RGB PNG, an RGBA PNG."""
    buf = io.BytesIO()
    if kind == "jpg":
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue()
    if kind == "gray_palette":
        img.convert("L").convert("P").save(buf, format="PNG")
    elif kind == "rgba":
        img.convert("RGBA").save(buf, format="PNG")
    else:
        img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


KINDS = ["jpg", "gray_palette", "rgb", "rgba"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    allowed = root / "tmp"
    (allowed / "allowed").mkdir(parents=True)
    files = {}
    for i, kind in enumerate(KINDS):
        data = as_format(random_scene(40 + i).draw(), kind)
        name = f"{kind}.{'jpg' if kind == 'jpg' else 'png'}"
        (allowed / name).write_bytes(data)
        files[kind] = allowed / name
    (allowed / "page.html").write_text("<html>not an image</html>")
    big = random_scene(50).draw(1400).convert("RGB")
    big.save(allowed / "big.png", format="PNG", compress_level=0)  # ~5.9 MB: over a 1 MB limit
    return {"root": root, "allowed": allowed, "files": files}


@pytest.fixture(scope="module")
def site(assets):
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(assets["allowed"]), **k)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def serve(vlm, **settings):
    return start_in_background(ServerSettings(**settings), vlm=vlm, network=LOOPBACK_ONLY)


@pytest.fixture(scope="module")
def server(vlm, assets):
    with serve(vlm, allow_private_urls=True, max_images=MAXIMUM_IMAGES, allow_dirs=[str(assets["allowed"])]) as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def dummy_messages_from_image_url(image_urls, content_text=QUESTION):
    if isinstance(image_urls, str):
        image_urls = [image_urls]
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in image_urls),
                                         {"type": "text", "text": content_text}]}]


def image_url_of(kind, assets, site, how):
    path = assets["files"][kind]
    if how == "url":
        return f"{site}/{path.name}"
    mime = "image/jpeg" if kind == "jpg" else "image/png"
    import base64

    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def local(kind, assets):
    return chat.load_image(assets["files"][kind])


# --------------------------------------------------------------------------- vLLM


@pytest.mark.parametrize("how", ["url", "base64"])
@pytest.mark.parametrize("kind", KINDS)
def test_vllm_single_chat_session_image(client, vlm, assets, site, kind, how):
    messages = dummy_messages_from_image_url(image_url_of(kind, assets, site, how))
    max_completion_tokens = 10
    completion = client.chat.completions.create(model=vlm.name, messages=messages,
                                                max_completion_tokens=max_completion_tokens, logprobs=True,
                                                temperature=0.0, top_logprobs=5)
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    want = chat.generate(vlm, [chat.user(local(kind, assets), QUESTION)], max_new_tokens=max_completion_tokens)
    assert choice.finish_reason == want.finish_reason
    hf_prompt_tokens = want.usage.prompt_tokens  # the processor's own count, as vLLM's get_hf_prompt_tokens
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == \
        (hf_prompt_tokens, want.usage.completion_tokens, hf_prompt_tokens + want.usage.completion_tokens)
    message = choice.message
    assert message.content == want.text and len(message.content) >= 10
    assert message.role == "assistant"
    assert [len(e.top_logprobs) for e in choice.logprobs.content] == [5] * len(choice.logprobs.content)
    assert "".join(e.token for e in choice.logprobs.content).strip() == want.text
    messages.append({"role": "assistant", "content": message.content})
    messages.append({"role": "user", "content": "express your result in json"})
    follow_up = client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10)
    assert follow_up.choices[0].message.content is not None


def test_vllm_error_on_invalid_image_url_type(client, vlm, assets, site):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": image_url_of("rgb", assets, site, "url")},
                                             {"type": "text", "text": QUESTION}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10, temperature=0.0)
    assert "image_url" in info.value.body["param"]


def test_vllm_beam_search_n2_is_refused_naming_n(client, vlm, assets, site):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=vlm.name, messages=dummy_messages_from_image_url(
            image_url_of("rgb", assets, site, "base64")), n=2, max_completion_tokens=10, logprobs=True, top_logprobs=5,
            extra_body=dict(use_beam_search=True))
    assert info.value.body["param"] in ("n", "use_beam_search")


@pytest.mark.parametrize("kind", KINDS)
def test_vllm_chat_streaming_image(client, vlm, assets, site, kind):
    messages = dummy_messages_from_image_url(image_url_of(kind, assets, site, "url"))
    completion = client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10,
                                                temperature=0.0)
    output, stop_reason = completion.choices[0].message.content, completion.choices[0].finish_reason
    stream = client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10,
                                            temperature=0.0, stream=True)
    chunks, finish_reason_count, last_piece = [], 0, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta.role:
            assert delta.role == "assistant"
        if delta.content:
            chunks.append(delta.content)
            last_piece = delta.content
        if chunk.choices[0].finish_reason is not None:
            finish_reason_count += 1
    assert finish_reason_count == 1  # finish reason only in the last chunk
    assert chunk.choices[0].finish_reason == stop_reason
    assert last_piece and chunk.choices[0].delta.content in (None, "")  # OpenAI's shape: an empty final delta
    assert "".join(chunks) == output


@pytest.mark.parametrize("n", range(2, len(KINDS) + 1))
def test_vllm_multi_image_input(client, vlm, assets, site, n):
    messages = dummy_messages_from_image_url([image_url_of(k, assets, site, "url") for k in KINDS[:n]])
    if n > MAXIMUM_IMAGES:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10, temperature=0.0)
        assert info.value.body["code"] == "too_many_images"
        # the server still works afterwards
        after = client.chat.completions.create(model=vlm.name, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=5, temperature=0.0)
        assert after.choices[0].message.content is not None
    else:
        completion = client.chat.completions.create(model=vlm.name, messages=messages, max_completion_tokens=10,
                                                    temperature=0.0)
        want = chat.generate(vlm, [chat.user(*[local(k, assets) for k in KINDS[:n]], QUESTION)], max_new_tokens=10)
        assert completion.choices[0].message.content == want.text


def test_vllm_completions_with_image(client, vlm, assets, site):
    for kind in KINDS[:MAXIMUM_IMAGES]:
        completion = client.chat.completions.create(model=vlm.name, messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "Describe this image."},
                                         {"type": "image_url", "image_url": {"url": image_url_of(kind, assets, site, "url")}}]}])
        assert completion.choices[0].message.content is not None


# --------------------------------------------------------------------------- llama.cpp


def test_llamacpp_models(client, vlm):
    assert [m.id for m in client.models.list().data] == [vlm.name]


def llamacpp_request(client, vlm, prompt, url):
    return client.chat.completions.with_raw_response.create(model=vlm.name, temperature=0.0, extra_body={"top_k": 1},
                                                            messages=[{"role": "user", "content": [
                                                                {"type": "text", "text": prompt},
                                                                {"type": "image_url", "image_url": {"url": url}}]}])


@pytest.mark.parametrize("prompt, image, success", [
    ("What is this:\n", "url", True),
    ("What is this:\n", "base64", True),
    ("Test test\n", "url", True),
    ("What is this:\n", "malformed", False),
    ("What is this:\n", "missing", False),     # their https://google.com/404
    ("What is this:\n", "html", False),        # their https://ggml.ai: not image data
    ("What is this:\n", "file", True),         # an allowed directory on this server (theirs allows none)
])
def test_llamacpp_vision_chat_completion(client, vlm, assets, site, prompt, image, success):
    url = {"url": f"{site}/rgb.png", "base64": image_url_of("rgb", assets, site, "base64"), "malformed": "malformed",
           "missing": f"{site}/404.png", "html": f"{site}/page.html", "file": f"file://{assets['files']['rgb']}"}[image]
    if success:
        reply = llamacpp_request(client, vlm, prompt, url).parse()
        choice = reply.choices[0]
        assert choice.message.role == "assistant"
        want = chat.generate(vlm, [chat.user(prompt, local("rgb", assets))], max_new_tokens=128)
        assert choice.message.content == want.text
    else:
        with pytest.raises(openai.BadRequestError) as info:
            llamacpp_request(client, vlm, prompt, url)
        assert info.value.status_code == 400 and info.value.body["message"]


@pytest.mark.parametrize("max_mb, allowed, success, file", [
    (0, "tmp", True, "rgb"),
    (0, "tmp", True, "jpg"),
    (1, "tmp", False, "big"),
    (0, "tmp/allowed", False, "rgb"),
    (0, "tm", False, "rgb"),               # a prefix of the directory's name is not the directory
    (0, "tmp/allowed", False, "../rgb"),   # their ./tmp/allowed/..: '..' out of the allowed directory
    (0, "tmp/allowed", False, ".././rgb"),  # their ./tmp/allowed/../.
])
def test_llamacpp_vision_chat_completion_local_files(vlm, assets, max_mb, allowed, success, file):
    root = assets["root"]
    settings = {"allow_dirs": [str(root / allowed)]}
    if max_mb:
        settings["max_image_bytes"] = max_mb * 1_000_000
    if file == "big":
        path = assets["allowed"] / "big.png"
    elif file.startswith(".."):
        path = f"{assets['allowed']}/allowed/{file}.png"  # unresolved, as a client would send it
    else:
        path = assets["files"][file]
    with serve(vlm, **settings) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        if success:
            reply = llamacpp_request(client, vlm, "What is this:\n", f"file://{path}").parse()
            want = chat.generate(vlm, [chat.user("What is this:\n", chat.load_image(str(path)))], max_new_tokens=128)
            assert reply.choices[0].message.content == want.text
        else:
            with pytest.raises(openai.BadRequestError) as info:
                llamacpp_request(client, vlm, "What is this:\n", f"file://{path}")
            assert info.value.body["code"] in ("path_not_allowed", "invalid_image")


def test_loopback_guard_holds(vlm):
    """The tests' network guard itself: an address outside loopback is refused before any socket exists."""
    with pytest.raises(ConnectionRefusedError):
        loopback_only("192.0.2.1", 80, socket.AF_INET, None)
