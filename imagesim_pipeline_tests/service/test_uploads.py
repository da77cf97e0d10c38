"""Query images and boxes at the edges (issue 20, case 6): decompression bombs, EXIF orientation,
animations and out-of-range bounding boxes, through check_image, decode, the CLI and the filters schema.

No index is needed: the CLI checks the image and the box before it opens one.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
from PIL import Image
from pydantic import ValidationError

from imagesim_pipeline.cli import main
from imagesim_pipeline.models.preprocess import ORIENTATION, decode
from imagesim_pipeline.search.bbox import BboxError, check_bbox, parse_bbox
from imagesim_pipeline.service.schemas import FiltersIn, SearchRequest
from imagesim_pipeline.service.uploads import MAX_PIXELS, UploadError, check_image


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@functools.lru_cache(maxsize=None)
def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A black 1-bit grayscale PNG of ``width`` x ``height``: a few tens of KB that decode to width*height
    pixels. Written row by row with zlib, so building it takes neither the pixels' memory nor Pillow."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then the packed bits
    block = row * 256
    idat = [compressor.compress(block) for _ in range(height // 256)]
    idat += [compressor.compress(row * (height % 256)), compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b"")


# -- decompression bombs ------------------------------------------------------------------------------
@pytest.mark.parametrize("side,size", [
    (5000, "5000x5000 px"),  # over MAX_PIXELS, under Pillow's limit: the header's size is named
    (10000, "100000000 pixels"),  # over Pillow's warning limit (89 M): the warning is an error
    (20000, "400000000 pixels"),  # over Pillow's error limit (179 M): DecompressionBombError at open
], ids=["over the budget", "pillow warning", "pillow error"])
def test_a_decompression_bomb_is_413_in_one_line(side, size):
    data = bomb_png(side, side)
    assert len(data) < 400_000  # a small upload ...
    with pytest.raises(UploadError) as caught:
        check_image(data, "bomb.png")  # ... refused from its header, before anything is decompressed
    assert caught.value.status == 413
    message = str(caught.value)
    assert "\n" not in message and message.startswith("bomb.png is ")
    assert size in message and f"budget is {MAX_PIXELS} pixels" in message


def test_the_pillow_limit_is_an_error_only_inside_check_image():
    import warnings

    with pytest.raises(UploadError):
        check_image(bomb_png(10000, 10000), "bomb.png")
    assert not any(f[0] == "error" and f[2] is Image.DecompressionBombWarning for f in warnings.filters)


def test_search_image_with_a_bomb_is_one_line_and_exit_2(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    # an empty bucket: the image is checked before the index is looked for
    assert main(["search", "--image", str(bomb), "--bucket", str(tmp_path / "bucket")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {bomb} is 400000000 pixels; the budget is ")
    assert "Traceback" not in err


# -- EXIF orientation -----------------------------------------------------------------------------------
def _upright() -> np.ndarray:
    """64 x 96, no symmetry: any flip or turn changes it (white left half, green top half)."""
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :48] = 255
    image[:32, :, 1] = 128
    image[:16, :16] = (0, 0, 255)
    return image


# how to store an upright image so that a viewer, applying the orientation, shows it upright
STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def _with_orientation(orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    out = io.BytesIO()
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(_upright()).transpose(STORED[orientation]).save(out, fmt, exif=exif.tobytes(), **options)
    return out.getvalue()


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_exactly_png(orientation):
    data = _with_orientation(orientation, "PNG")
    assert Image.open(io.BytesIO(data)).size == ((96, 64) if orientation <= 4 else (64, 96))  # 5-8: on its side
    pixels = decode(data).permute(1, 2, 0).numpy()
    assert pixels.shape == (64, 96, 3)
    assert np.array_equal(pixels, _upright())


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_rotated_jpeg_decodes_upright(orientation):
    data = _with_orientation(orientation, "JPEG")
    assert data[:2] == b"\xff\xd8"
    pixels = decode(data).permute(1, 2, 0).numpy().astype(int)
    assert pixels.shape == (64, 96, 3)
    difference = np.abs(pixels - _upright())
    assert difference.mean() < 1 and difference.max() <= 8  # JPEG at quality 100: the same picture
    ignored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)  # the stored pixels
    assert ignored.shape != pixels.shape or np.abs(ignored - _upright()).mean() > 20


def test_a_chip_jpeg_without_exif_takes_the_fast_path(monkeypatch):
    chip = simplejpeg.encode_jpeg(_upright(), quality=90, colorspace="RGB")

    def no_pillow(*args, **kwargs):
        raise AssertionError("a JPEG without EXIF is decoded by simplejpeg, not opened with Pillow")

    monkeypatch.setattr("imagesim_pipeline.models.preprocess.Image.open", no_pillow)
    pixels = decode(chip).permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, simplejpeg.decode_jpeg(chip, colorspace="RGB"))


def test_an_upright_exif_jpeg_decodes_as_without_exif():
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    out = io.BytesIO()
    Image.fromarray(_upright()).save(out, "JPEG", quality=95, exif=exif.tobytes())
    data = out.getvalue()
    assert np.array_equal(decode(data).permute(1, 2, 0).numpy(), simplejpeg.decode_jpeg(data, colorspace="RGB"))


# -- animations ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,options", [
    ("GIF", {}),
    ("PNG", {}),  # APNG
    ("WEBP", {"lossless": True}),
])
def test_an_animation_is_used_by_its_first_frame(fmt, options):
    if fmt == "WEBP" and not Image.registered_extensions().get(".webp"):
        pytest.skip("Pillow without WebP")
    red, blue, green = (Image.new("RGB", (48, 40), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0)))
    out = io.BytesIO()
    red.save(out, fmt, save_all=True, append_images=[blue, green], duration=100, loop=0, **options)
    data = out.getvalue()
    info = check_image(data, f"anim.{fmt.lower()}")
    assert tuple(info) == (48, 40, fmt) and info.n_frames == 3
    pixels = decode(data).permute(1, 2, 0).numpy()
    assert pixels.shape == (40, 48, 3)
    assert (pixels == (255, 0, 0)).all()


def test_a_still_image_has_one_frame():
    out = io.BytesIO()
    Image.new("RGB", (64, 64)).save(out, "PNG")
    width, height, fmt = info = check_image(out.getvalue())
    assert (width, height, fmt, info.n_frames) == (64, 64, "PNG", 1)


# -- bounding boxes --------------------------------------------------------------------------------------
BAD_BOXES = [
    ("0,200,1,201", "south 200 is not a latitude"),
    ("0,-91,1,0", "south -91 is not a latitude"),
    ("0,0,1,90.5", "north 90.5 is not a latitude"),
    ("-181,0,1,1", "west -181 is not a longitude"),
    ("0,0,180.01,1", "east 180.01 is not a longitude"),
    ("10,0,5,1", "west 10 is east of east 5"),
    ("0,5,1,2", "south 5 is north of north 2"),
    ("nan,0,1,1", "west nan is not a longitude"),
    ("1,2,3", "must be four numbers"),
    ("a,b,c,d", "must be four numbers"),
]


@pytest.mark.parametrize("text,message", BAD_BOXES, ids=[b[0] for b in BAD_BOXES])
def test_parse_bbox_refuses_what_is_no_box(text, message):
    with pytest.raises(BboxError, match=message) as caught:
        parse_bbox(text)
    assert "\n" not in str(caught.value)


def test_parse_bbox_accepts_the_whole_world_and_a_point():
    assert parse_bbox("-180,-90,180,90") == (-180.0, -90.0, 180.0, 90.0)
    assert parse_bbox("26.9,60.4,26.9,60.4") == (26.9, 60.4, 26.9, 60.4)
    assert check_bbox([1, 2, 3, 4]) == (1.0, 2.0, 3.0, 4.0)


def test_the_filters_schema_refuses_a_latitude_of_200():
    with pytest.raises(ValidationError) as caught:
        SearchRequest.model_validate({"positives": ["Z35-01313111111312103_KOTKAB.jpg"],
                                      "filters": {"bbox": [0, 200, 1, 201]}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("filters", "bbox") and error["msg"] == \
        "bbox south 200 is not a latitude: latitudes are -90..90 degrees"
    assert FiltersIn(bbox=(-10, -20, 10, 20)).bbox == (-10.0, -20.0, 10.0, 20.0)
    assert FiltersIn().bbox is None


@pytest.mark.parametrize("argv", [
    ["search", "--chip", "Z35-01313111111312103_KOTKAB.jpg", "--bbox", "0,200,1,201"],
    ["changes", "--bbox", "0,200,1,201"],
    ["ingest", "x.tif", "--bounds", "0,200,1,201"],
], ids=["search --bbox", "changes --bbox", "ingest --bounds"])
def test_the_cli_refuses_a_latitude_of_200(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith("bbox south 200 is not a latitude: latitudes are -90..90 degrees")
    assert "Traceback" not in err
