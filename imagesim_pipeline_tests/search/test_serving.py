"""The serving decision after an index build: a passing finds_itself check moves serving.json, a failing one not."""

from imagesim_pipeline.models.registry import read_pointer, set_pointer
from imagesim_pipeline.search.serving import FINDS_ITSELF_MIN, FindsItself, serve_if_sound
from imagesim_pipeline.storage import open_bucket


def test_a_passing_check_moves_serving_to_the_version(tmp_path):
    bucket = open_bucket(tmp_path)
    serving = serve_if_sound(bucket, "smlc", "v2", FindsItself(100, 0.99))
    assert serving.moved and serving.version == "v2" and serving.previous is None
    assert read_pointer(bucket, "smlc", "serving").version == "v2"


def test_a_failing_check_leaves_serving_where_it_was(tmp_path):
    bucket = open_bucket(tmp_path)
    set_pointer(bucket, "smlc", "serving", "v1")
    check = FindsItself(100, FINDS_ITSELF_MIN - 0.01)
    assert not check.passed
    serving = serve_if_sound(bucket, "smlc", "v2", check)
    assert not serving.moved and serving.version == "v1"
    assert read_pointer(bucket, "smlc", "serving").version == "v1"


def test_no_serving_version_and_a_failing_check_says_none(tmp_path):
    bucket = open_bucket(tmp_path)
    serving = serve_if_sound(bucket, "smlc", "v2", FindsItself(10, 0.5))
    assert (serving.version, serving.moved) == ("none", False)
    assert read_pointer(bucket, "smlc", "serving") is None


def test_serving_the_same_version_again_is_no_move(tmp_path):
    bucket = open_bucket(tmp_path)
    set_pointer(bucket, "smlc", "serving", "v2")
    serving = serve_if_sound(bucket, "smlc", "v2", FindsItself(100, 1.0))
    assert (serving.version, serving.moved, serving.previous) == ("v2", False, "v2")
