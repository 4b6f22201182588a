"""load_image on what real files and URIs bring: EXIF orientation, a file the OS will not read,
percent-encoded data URIs."""

from __future__ import annotations

import builtins
import io
import urllib.parse

import pytest
from PIL import Image

from vlm_course.errors import ImageError
from vlm_course.images import load_image


def two_colour_jpeg(orientation: int | None) -> bytes:
    """30x20: red left half, blue right half; EXIF Orientation tag (0x0112) when given."""
    img = Image.new("RGB", (30, 20), "red")
    img.paste((0, 0, 255), (15, 0, 30, 20))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def is_red(px):
    return px[0] > 200 and px[2] < 60


def is_blue(px):
    return px[2] > 200 and px[0] < 60


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stores its pixels sideways with an Orientation tag: the image must come upright."""
    plain = load_image(two_colour_jpeg(None))
    assert plain.size == (30, 20) and is_red(plain.getpixel((2, 10))) and is_blue(plain.getpixel((27, 10)))
    path = tmp_path / "phone.jpg"
    path.write_bytes(two_colour_jpeg(6))  # 6: rotate 90 degrees clockwise to display
    turned = load_image(path)
    assert turned.size == (20, 30)
    assert is_red(turned.getpixel((10, 2))) and is_blue(turned.getpixel((10, 27)))  # left went to the top


def test_a_file_the_os_refuses_to_read_is_an_image_error(tmp_path, monkeypatch):
    """Permission denied (injected at open: the tests may run as root, who reads any file)."""
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    real_open = builtins.open

    def refuse(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(ImageError, match="Could not read the image file .*secret.png.*Permission denied.*permissions"):
        load_image(path)


def test_a_percent_encoded_data_uri_is_decoded():
    img = Image.new("RGB", (5, 3), (10, 200, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    uri = "data:image/png," + urllib.parse.quote(buf.getvalue())  # no ;base64: RFC 2397's percent-encoding
    got = load_image(uri)
    assert got.size == (5, 3) and got.getpixel((4, 2)) == (10, 200, 30)
    with pytest.raises(ImageError, match="not an image"):
        load_image("data:image/png," + urllib.parse.quote(b"plain text, not a picture"))
