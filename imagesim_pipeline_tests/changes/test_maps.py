"""Change maps as files: what is stored reads back as it was, garbage is named, the overlay is clear where
nothing changed and red where everything did."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagesim_pipeline.changes.maps import ChangeMapError, decode_map, encode_map, heat_overlay, overlay_png, triptych


def test_a_map_reads_back_within_one_grey_level_and_clipped_to_0_1():
    change = np.linspace(-0.5, 1.5, 64 * 48, dtype=np.float32).reshape(48, 64)
    back = decode_map(encode_map(change))
    assert back.shape == (48, 64) and back.dtype == np.float32
    assert np.abs(back - np.clip(change, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_an_unreadable_map_is_named():
    with pytest.raises(ChangeMapError, match="changes/v1/maps/x.png is not a readable PNG"):
        decode_map(b"not a png", "changes/v1/maps/x.png")
    rgb = io.BytesIO()
    Image.new("RGB", (4, 4)).save(rgb, format="PNG")
    with pytest.raises(ChangeMapError, match="RGB image, not a one-channel change map"):
        decode_map(rgb.getvalue(), "m.png")


def test_the_overlay_is_clear_where_nothing_changed_and_red_where_everything_did():
    change = np.array([[0.0, 0.1, 1.0]], np.float32)
    rgba = heat_overlay(change)
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 0
    assert rgba[0, 2, 3] > 200 and rgba[0, 2, 0] > 200 and rgba[0, 2, 1] < 60
    with Image.open(io.BytesIO(overlay_png(change, size=(30, 10)))) as image:
        assert image.mode == "RGBA" and image.size == (30, 10)


def test_the_triptych_puts_before_after_and_the_overlaid_after_side_by_side():
    before = np.zeros((20, 20, 3), np.uint8)
    after = np.full((20, 20, 3), 200, np.uint8)
    change = np.zeros((20, 20), np.float32)
    change[:, 10:] = 1.0
    with Image.open(io.BytesIO(triptych(before, after, change, gap=4))) as image:
        sheet = np.asarray(image.convert("RGB")).astype(int)
    assert sheet.shape == (20, 68, 3)
    assert sheet[10, 5].max() < 30 and abs(sheet[10, 30] - 200).max() < 30  # before, after
    third = sheet[:, 48:]
    assert abs(third[10, 3] - 200).max() < 30  # unchanged half: the after image shows through
    assert third[10, 17, 0] - third[10, 17, 2] > 80  # changed half: red over it
