"""The one conversion function: modes, EXIF, resize rules, and refusal of bad files."""

import numpy as np
import pytest
from PIL import Image

from imgclf.errors import DataError
from imgclf.data.images import BACKGROUND, MAX_PIXELS, to_rgb


def test_grayscale_becomes_three_equal_channels(tmp_path):
    Image.fromarray(np.full((32, 32), 77, np.uint8), "L").save(tmp_path / "g.png")
    out = to_rgb(tmp_path / "g.png")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out == 77).all()


def test_rgba_is_composited_on_the_fixed_background(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # opaque red on the left, fully transparent on the right
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = to_rgb(tmp_path / "a.png")
    assert tuple(out[5, 3]) == (255, 0, 0)
    assert tuple(out[5, 30]) == BACKGROUND


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    out = to_rgb(tmp_path / "p.png")
    assert tuple(out[0, 0]) == BACKGROUND


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.zeros((32, 32), np.uint16)
    arr[:, :16] = 65535
    arr[:, 16:] = 32896  # 128 * 257
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = to_rgb(tmp_path / "deep.png")
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 20]) == (128, 128, 128)  # clipping would have given 255


def test_exif_orientation_is_applied(tmp_path):
    # 40 wide x 20 tall: left half red, right half blue; EXIF 6 = rotate 90 degrees clockwise to view.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = to_rgb(tmp_path / "rot.jpg", size=(40, 20))  # viewed upright: 20 wide x 40 tall
    assert out.shape == (40, 20, 3)
    top, bottom = out[2, 10], out[37, 10]
    assert top[0] > 200 and top[2] < 60  # red ends up on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_turns_as_pillow_does(tmp_path, orientation):
    from PIL import ImageOps

    arr = np.random.default_rng(orientation).integers(0, 256, (12, 20, 3)).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert expected.shape == ((12, 20, 3) if orientation < 5 else (20, 12, 3))
    assert np.array_equal(to_rgb(tmp_path / "o.png", size=expected.shape[:2]), expected)


@pytest.mark.parametrize("rule", ["stretch", "crop", "pad"])
def test_resize_rules_give_the_input_size(tmp_path, rule):
    Image.new("RGB", (64, 32), (10, 200, 10)).save(tmp_path / "wide.png")
    out = to_rgb(tmp_path / "wide.png", size=32, resize=rule)
    assert out.shape == (32, 32, 3)
    if rule == "pad":  # 64x32 scaled to 32x16 then padded top and bottom
        assert tuple(out[0, 16]) == BACKGROUND and tuple(out[16, 16]) == (10, 200, 10)
    else:
        assert tuple(out[0, 16]) == (10, 200, 10)


def test_crop_keeps_the_centre(tmp_path):
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, 32:64] = 255  # white centre third
    Image.fromarray(arr).save(tmp_path / "c.png")
    assert (to_rgb(tmp_path / "c.png", 32, "crop") > 250).all()
    assert (to_rgb(tmp_path / "c.png", 32, "stretch")[:, 0] < 5).all()


def test_bad_files_raise_one_line_naming_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.jpg: not an image"):
        to_rgb(tmp_path / "text.jpg")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: corrupt or truncated"):
        to_rgb(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        to_rgb(tmp_path / "empty.png")
    with pytest.raises(DataError, match="missing.png: file not found"):
        to_rgb(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100  # just above the limit; warning range counts as an error too
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"bomb\.png: image is larger than"):
        to_rgb(tmp_path / "bomb.png")


def test_unknown_resize_rule(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="resize"):
        to_rgb(tmp_path / "x.png", 8, "zoom")
