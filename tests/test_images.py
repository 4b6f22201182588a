"""load_image(): every accepted source, and a clear ImageError for every bad one.

URL tests talk to a real http.server on 127.0.0.1 running in a thread (no mocks).
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from vlm_course.errors import ImageError, VLMCourseError
from vlm_course.images import image_to_data_uri, load_image


# --------------------------------------------------------------------------- helpers


def make_png(size=(24, 16), color=(200, 30, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data stops after a few bytes (a tiny 'bomb')."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)[:-4]  # an unfinished stream: decoding it would fail
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)


PNG = make_png()


def assert_rgb(img, size=(24, 16), pixel=(200, 30, 40)):
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == size
    if pixel is not None:
        assert img.getpixel((0, 0)) == pixel


# --------------------------------------------------------------------------- a local HTTP server


TRICKLED = {"bytes": 0, "ended": threading.Event()}  # what /trickle sent before the client hung up


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, body: bytes, ctype="image/png", length: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0]
        try:
            if path == "/img.png":
                self._send(200, PNG)
            elif path == "/text":
                self._send(200, b"<html>not an image</html>", ctype="text/html")
            elif path == "/empty":
                self._send(200, b"")
            elif path == "/big-declared":
                self._send(200, b"\0" * 5000)
            elif path == "/big-undeclared":
                # No Content-Length: the body runs until the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"\0" * 5000)
                self.close_connection = True
            elif path == "/slow":
                time.sleep(3)
                self._send(200, PNG)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.send_header("Connection", "close")
                self.end_headers()
                TRICKLED["bytes"] = 0
                TRICKLED["ended"].clear()
                try:
                    for i in range(len(PNG)):
                        self.wfile.write(PNG[i : i + 1])
                        self.wfile.flush()
                        TRICKLED["bytes"] += 1
                        time.sleep(0.05)
                finally:
                    TRICKLED["ended"].set()
            else:
                self._send(404, b"no such thing", ctype="text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as the timeout tests intend


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------- good sources


def test_pil_rgb_is_returned_as_rgb_copy():
    src = Image.new("RGB", (24, 16), (200, 30, 40))
    out = load_image(src)
    assert_rgb(out)
    assert out is not src


def test_pil_rgba_alpha_is_composited_on_white():
    src = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    src.putpixel((1, 1), (0, 0, 255, 255))  # one opaque blue pixel
    src.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black
    out = load_image(src)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 255)
    assert all(120 <= c <= 135 for c in out.getpixel((2, 2)))


@pytest.mark.parametrize("mode,color", [("L", 128), ("LA", (0, 0)), ("P", 3), ("CMYK", (0, 0, 0, 0)), ("1", 1)])
def test_pil_other_modes_become_rgb(mode, color):
    out = load_image(Image.new(mode, (5, 3), color))
    assert out.mode == "RGB" and out.size == (5, 3)
    if mode == "LA":  # fully transparent: white
        assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_is_composited_on_white():
    src = Image.new("P", (3, 3), 0)
    src.putpalette([0, 0, 0] * 256)
    src.info["transparency"] = 0
    buf = io.BytesIO()
    src.save(buf, format="PNG", transparency=0)
    out = load_image(buf.getvalue())
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_path_object_and_str_path(tmp_path):
    f = tmp_path / "red.png"
    f.write_bytes(PNG)
    assert_rgb(load_image(f))
    assert_rgb(load_image(str(f)))
    assert_rgb(load_image(f"  {f}  "))  # surrounding whitespace is ignored


def test_relative_str_path(tmp_path, monkeypatch):
    (tmp_path / "rel.png").write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    assert_rgb(load_image("rel.png"))


def test_jpeg_file(tmp_path):
    f = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32), (10, 200, 10)).save(f, format="JPEG", quality=95)
    out = load_image(f)
    assert out.mode == "RGB" and out.size == (32, 32)
    assert all(abs(a - b) <= 4 for a, b in zip(out.getpixel((16, 16)), (10, 200, 10)))


def test_16_bit_png_is_scaled_not_clipped():
    src = Image.new("I;16", (4, 4), 32768)
    buf = io.BytesIO()
    src.save(buf, format="PNG")
    out = load_image(buf.getvalue())
    assert out.getpixel((0, 0)) == (128, 128, 128)


def test_http_url(server):
    assert_rgb(load_image(f"{server}/img.png", timeout=5))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like(kind):
    assert_rgb(load_image(kind(PNG)))


def test_base64_string():
    b64 = base64.b64encode(PNG).decode()
    assert_rgb(load_image(b64))
    # line-wrapped, unpadded and url-safe variants too
    wrapped = "\n".join(b64[i : i + 60] for i in range(0, len(b64), 60))
    assert_rgb(load_image(wrapped))
    assert_rgb(load_image(base64.urlsafe_b64encode(PNG).decode().rstrip("=")))


def test_data_uri():
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert_rgb(load_image(uri))
    assert_rgb(load_image("DATA:image/PNG;BASE64," + base64.b64encode(PNG).decode()))


def test_image_to_data_uri_round_trip():
    img = Image.new("RGB", (8, 6), (1, 2, 3))
    uri = image_to_data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    back = load_image(uri)
    assert back.size == (8, 6) and back.getpixel((0, 0)) == (1, 2, 3)
    jpeg = image_to_data_uri(Image.new("RGBA", (8, 6), (1, 2, 3, 255)), format="jpeg")
    assert jpeg.startswith("data:image/jpeg;base64,")
    assert load_image(jpeg).size == (8, 6)
    assert image_to_data_uri(PNG).startswith("data:image/png;base64,")  # any load_image source
    with pytest.raises(ImageError, match="Unknown image format"):
        image_to_data_uri(img, format="NOPE")


# --------------------------------------------------------------------------- bad sources


def err(source, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **kw)
    assert isinstance(info.value, VLMCourseError) and isinstance(info.value, ValueError)
    return str(info.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.png"
    assert "not found" in err(missing) and "nope.png" in err(missing)
    assert "not found" in err(str(missing))
    assert "not found" in err("definitely/not/here.png")


def test_directory(tmp_path):
    assert "is a directory" in err(tmp_path)
    assert "is a directory" in err(str(tmp_path))


def test_non_image_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("just some text, not pixels\n")
    msg = err(f)
    assert "not an image" in msg and "PNG" in msg


def test_binary_non_image_file(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(bytes(range(256)) * 4)
    assert "not an image format" in err(f)


def test_truncated_file(tmp_path):
    big = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(big, format="PNG")
    f = tmp_path / "cut.png"
    f.write_bytes(big.getvalue()[: len(big.getvalue()) // 2])
    msg = err(f)
    assert "truncated or corrupt" in msg and "cut.png" in msg


def test_truncated_jpeg_bytes():
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    assert "truncated or corrupt" in err(buf.getvalue()[:300])


def test_too_many_bytes(tmp_path):
    f = tmp_path / "red.png"
    f.write_bytes(PNG)
    assert "too large" in err(f, max_bytes=10) and "max_bytes" in err(f, max_bytes=10)
    assert "too large" in err(PNG, max_bytes=10)
    assert "too large" in err(base64.b64encode(PNG).decode(), max_bytes=10)
    assert "too large" in err("data:image/png;base64," + base64.b64encode(PNG).decode(), max_bytes=10)


def test_too_many_pixels_is_checked_before_decoding():
    assert "max_pixels" in err(PNG, max_pixels=100)  # 24x16 = 384 pixels
    assert "max_pixels" in err(Image.new("RGB", (24, 16)), max_pixels=100)
    # A header claiming 8000 x 8000 with almost no pixel data: refused by size, not as truncated.
    msg = err(png_header_only(8000, 8000))
    assert "64,000,000 pixels" in msg and "max_pixels" in msg
    bomb = png_header_only(2000, 2000)
    assert "4,000,000 pixels" in err(bomb, max_pixels=1_000_000)
    assert "truncated" in err(bomb)  # under the limit it is decoded, and the decoding fails


def test_pillow_decompression_bomb_becomes_image_error():
    # Past Pillow's own guard (2 x MAX_IMAGE_PIXELS) even with our limit raised.
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 10
    msg = err(png_header_only(side, side), max_pixels=10**12)
    assert "too many pixels" in msg
    # Between 1x and 2x Pillow warns; the warning must not slip through either.
    side = int((1.5 * Image.MAX_IMAGE_PIXELS) ** 0.5)
    assert "too many pixels" in err(png_header_only(side, side), max_pixels=10**12)


def test_bad_base64():
    assert "not valid base64" in err("data:image/png;base64,!!!!not*base64!!!!")
    assert "not valid base64" in err("A" * 33)  # impossible length
    msg = err(base64.b64encode(b"hello world, this is text" * 3).decode())
    assert "not an image" in msg and "no such file" in msg


def test_bad_data_uris():
    assert "not an image" in err("data:text/plain;base64," + base64.b64encode(PNG).decode())
    assert "no data" in err("data:image/png;base64,")
    assert "','" in err("data:image/png;base64")


@pytest.mark.parametrize(
    "url,word",
    [
        ("ftp://example.org/cat.png", "ftp://"),
        ("s3://bucket/cat.png", "s3://"),
        ("file:///tmp/cat.png", "file://"),
    ],
)
def test_unsupported_schemes(url, word):
    msg = err(url)
    assert word in msg
    if word == "file://":
        assert "local path" in msg


def test_http_error(server):
    msg = err(f"{server}/missing.png", timeout=5)
    assert "HTTP 404" in msg


def test_url_not_an_image(server):
    assert "not an image" in err(f"{server}/text", timeout=5)


def test_url_empty_body(server):
    assert "empty" in err(f"{server}/empty", timeout=5)


def test_url_too_many_bytes(server):
    assert "too large" in err(f"{server}/big-declared", max_bytes=1000, timeout=5)
    assert "more than" in err(f"{server}/big-undeclared", max_bytes=1000, timeout=5)


def test_connection_refused():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    msg = err(f"http://127.0.0.1:{port}/x.png", timeout=5)
    assert "Could not download" in msg and "refused" in msg.lower()


def test_url_timeout_slow_server(server):
    # /slow answers (with a good PNG) after 3 s: an ignored timeout would load it and fail err().
    msg = err(f"{server}/slow", timeout=0.3)
    assert "timed out" in msg and "0.3" in msg


def test_url_timeout_trickling_body(server):
    # Each byte arrives well within the timeout, but the whole body would take seconds: a deadline per
    # read would load it. The client must hang up early, so the server gets to send only part of the body.
    assert "timed out" in err(f"{server}/trickle", timeout=0.5)
    assert TRICKLED["ended"].wait(30), "the server kept trickling: the client never hung up"
    assert TRICKLED["bytes"] < len(PNG), f"the server sent the whole body ({len(PNG)} bytes)"


def test_url_without_host():
    assert "no host" in err("http:///cat.png")


@pytest.mark.parametrize("source", ["", "   \n", b"", bytearray()])
def test_empty_input(source):
    assert "empty" in err(source)


def test_empty_file(tmp_path):
    f = tmp_path / "zero.png"
    f.write_bytes(b"")
    assert "empty" in err(f)


@pytest.mark.parametrize("source", [42, None, 3.5, ["a.png"], {"url": "x"}])
def test_wrong_type(source):
    msg = err(source)
    assert type(source).__name__ in msg and "PIL image" in msg


def test_allow_local_false_refuses_paths(tmp_path):
    f = tmp_path / "red.png"
    f.write_bytes(PNG)
    assert "not allowed" in err(f, allow_local=False)
    assert "not allowed" in err(str(f), allow_local=False)
    assert_rgb(load_image(base64.b64encode(PNG).decode(), allow_local=False))


def test_image_error_is_catchable_as_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_image(Path(tmp_path) / "missing.png")


def test_data_uri_works_in_a_fresh_process():
    # PIL's MIME table is empty until its plugins are registered: a fresh interpreter must still work.
    import subprocess
    import sys

    code = ("from PIL import Image; from vlm_course.images import image_to_data_uri; "
            "print(image_to_data_uri(Image.new('RGB', (4, 4)))[:22])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "data:image/png;base64,", out.stderr


# --------------------------------------------------------------------------- bounded decoding (issue 16)


def big_png(side=6000) -> bytes:
    """A 6000x6000 greyscale PNG: about 35 KB on the wire, 36 M pixels once decoded (the issue's bomb)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 0).save(buf, format="PNG")
    return buf.getvalue()


def test_max_side_decodes_no_larger_than_asked():
    img = load_image(make_png((800, 400)), max_side=128)
    assert img.size == (128, 64) and img.mode == "RGB"
    assert load_image(make_png((100, 50)), max_side=128).size == (100, 50)  # never enlarged


def test_jpeg_is_decoded_at_a_reduced_scale():
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(buf, format="JPEG")
    # 12 M pixels, over max_pixels, but JPEG decodes at 1/8 scale: 500x375 ever exists in memory
    img = load_image(buf.getvalue(), max_side=300, max_pixels=1_000_000)
    assert img.size == (300, 225)
    assert img.getpixel((150, 100))[1] > 150


def test_pixel_bomb_is_refused_from_its_header():
    data = big_png()
    assert len(data) < 100_000
    with pytest.raises(ImageError, match="36,000,000 pixels") as info:
        load_image(data, max_pixels=4_000_000, max_side=128)
    assert "MB once decoded" in str(info.value)


def test_request_budget_is_charged_before_decoding():
    from vlm_course.images import PixelBudget

    budget = PixelBudget(30_000)
    load_image(make_png((100, 100)), budget=budget)
    load_image(make_png((100, 100)), budget=budget)
    with pytest.raises(ImageError, match="per request"):
        load_image(make_png((150, 100)), budget=budget)
    assert budget.spent == 20_000


@pytest.mark.parametrize("source", ["nope\x00.png", "x" * 5000 + ".png", "dir/" + "y" * 300 + ".png"])
def test_unusable_paths_are_image_errors(source):
    with pytest.raises(ImageError):
        load_image(source)
    with pytest.raises(ImageError):
        load_image(Path(source))


@pytest.mark.parametrize("url", ["http://example.org:99999/x.png", "http://example.org:abc/x.png",
                                 "http://example.org:-1/x.png", "http://[::1/x.png", "http://exa\x00mple.org/x",
                                 "http://example.org/a\r\nHost: evil", "http://ex\ud800.org/x.png"])
def test_malformed_urls_are_image_errors_without_any_connection(url):
    with pytest.raises(ImageError, match="URL"):
        load_image(url, timeout=1)


def test_missing_file_message_does_not_reveal_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("missing.png", Path("missing.png")):
        with pytest.raises(ImageError) as info:
            load_image(source)
        assert str(tmp_path) not in str(info.value) and "missing.png" in str(info.value)
