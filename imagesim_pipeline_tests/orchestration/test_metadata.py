"""The metadata helpers: numbers people read are rounded, short tables stay inline, plots are images."""

import base64
import math

from dagster import MetadataValue

from imagesim_pipeline.orchestration.metadata import INLINE_MARKDOWN, counts_table, plot, rounded, significant


def test_significant_keeps_four_digits_and_whole_ones():
    assert significant(0.20857037603855133) == 0.2086
    assert significant(12.345678) == 12.35
    assert significant(0.000123456) == 0.0001235
    assert significant(123456.78) == 123457.0  # whole digits are never dropped
    assert significant(-3.14159, 3) == -3.14
    assert significant(0.0) == 0.0
    assert math.isnan(significant(float("nan")))


def test_rounded_reaches_into_nested_values_and_leaves_the_rest():
    value = {"kind": "flat", "n": 12, "bytes_per_vector": 1280.0, "params": {"share": 0.97333333},
             "list": [0.123456, (1.0 / 3, "x")], "ok": True}
    assert rounded(value) == {"kind": "flat", "n": 12, "bytes_per_vector": 1280.0, "params": {"share": 0.9733},
                              "list": [0.1235, (0.3333, "x")], "ok": True}


def test_rounded_leaves_dagster_values_whole():
    """Dagster's metadata values are tuples underneath and refuse iteration: rounding must pass them through."""
    json_value, url = MetadataValue.json({"f2": 0.123456}), MetadataValue.url("file:///x")
    assert rounded({"thresholds": json_value, "card": url, "loss": 0.123456}) == {
        "thresholds": json_value, "card": url, "loss": 0.1235}


def test_counts_table_rounds_floats_and_fits_inline():
    table = counts_table(("median", "p90"), [(0.20857037603855133, 1.23456789)])
    assert "| 0.2086 | 1.235 |" in table
    assert len(table) < INLINE_MARKDOWN


def test_plot_is_a_markdown_image_of_the_png():
    png = b"\x89PNG\r\n\x1a\nfake"
    value = plot(png, "change scores")
    assert isinstance(value, MetadataValue.md("").__class__)
    assert value.value == f"![change scores](data:image/png;base64,{base64.b64encode(png).decode()})"
