"""Every kind of awkward or broken file, as real files on disk."""

import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from features.images import UnreadableImage, load_rgb
from tests.conftest import write_image


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width x height`` (a decompression bomb header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    "mode, fmt, ext",
    [("L", "PNG", "png"), ("P", "GIF", "gif"), ("RGBA", "PNG", "png"), ("LA", "PNG", "png"), ("CMYK", "JPEG", "jpg"),
     ("1", "PNG", "png"), ("RGB", "WEBP", "webp"), ("RGB", "BMP", "bmp"), ("RGB", "TIFF", "tif")],
)
def test_convertible_modes_become_rgb(tmp_path, mode, fmt, ext):
    path = write_image(str(tmp_path / f"x.{ext}"), 1, mode=mode, fmt=fmt)
    with Image.open(path) as raw:
        assert raw.mode == mode or fmt == "GIF"
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (48, 40)


def test_sixteen_bit_keeps_its_range(tmp_path):
    arr = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_rgb(path))
    # A naive convert("RGB") saturates everything above 255 to white; scaling keeps the ramp.
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 100 < rgb[20, 0, 0] < 160


def test_palette_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0] * 256)
    path = str(tmp_path / "t.gif")
    img.save(path, transparency=0)
    assert np.asarray(load_rgb(path)).min() == 255


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all\n" * 20, "not a recognised image format"),
        ("bomb.png", _png_with_size(20000, 20000), "decompression bomb"),
    ],
)
def test_unreadable_files_give_reasons(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        load_rgb(str(path))


def test_decompression_bombs_are_refused_from_many_threads_at_once(tmp_path):
    """A header just above the pixel limit (PIL only warns there) is refused in every thread,
    and PIL's global limit and warning filters are as they were afterwards."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_size(10000, 10000))  # 100 M pixels: between the limit and twice it
    good = write_image(str(tmp_path / "good.jpg"), 1, size=(300, 200))
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    def outcome(path: str) -> str:
        try:
            return "loaded %dx%d" % load_rgb(path).size
        except UnreadableImage as exc:
            return str(exc)

    paths = [str(bomb), good] * 200
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(outcome, paths))
    assert all("decompression bomb" in o for o in outcomes[0::2])
    assert set(outcomes[1::2]) == {"loaded 300x200"}
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters


def test_truncated_jpeg_is_refused(tmp_path):
    whole = write_image(str(tmp_path / "whole.jpg"), 2, size=(256, 256))
    data = open(whole, "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="cannot decode"):
        load_rgb(str(cut))
