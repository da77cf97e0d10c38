"""The label vocabulary: the default, the rule syntax, and clear errors for bad configuration."""

from __future__ import annotations

import json

import pytest

from imagesim_pipeline.labels.vocabulary import (
    TagRule,
    Vocabulary,
    VocabularyError,
    load_vocabulary,
)


def test_default_has_the_reference_thirteen_labels():
    vocab = load_vocabulary()
    assert len(vocab) == 13
    assert vocab.names[:3] == ["building", "major_road", "minor_road"]
    assert {"water", "forest", "farmland", "residential", "parking", "bare_ground"} <= set(vocab.names)


@pytest.mark.parametrize("rule, tags, expected", [
    ("building", {"building": "yes"}, True),
    ("building", {"building": "no"}, False),
    ("building", {"amenity": "school"}, False),
    ("highway=primary|secondary", {"highway": "secondary"}, True),
    ("highway=primary|secondary", {"highway": "tertiary"}, False),
    ("natural=water", {"natural": "water"}, True),
])
def test_tag_rules(rule, tags, expected):
    assert TagRule.parse(rule, "test").matches(tags) is expected


def test_exclusions_drop_what_is_not_visible_from_above():
    road = load_vocabulary().labels[1]
    assert road.name == "major_road"
    assert road.matches({"highway": "primary"})
    assert not road.matches({"highway": "primary", "tunnel": "yes"})


@pytest.mark.parametrize("label, message", [
    ({"name": "x", "tags": ["highway~primary"]}, "label 'x' (tags): tag rule 'highway~primary' is not one of"),
    ({"name": "x", "tags": ["highway="]}, "has an empty value"),
    ({"name": "x", "tags": []}, "label 'x': needs at least one tag rule"),
    ({"name": "x", "tags": ["building"], "geometry": ["area"]}, "geometry must be a non-empty list"),
    ({"name": "x", "tags": ["building"], "min_area": 0.1}, "unknown field(s) min_area"),
    ({"name": "x", "tags": ["building"], "min_area_share": 1.5}, "min_area_share must be a number 0.0..1.0"),
    ({"name": "9lives", "tags": ["building"]}, "must start with a letter"),
    ({"name": "x", "tags": ["amenity"], "geometry": ["point"], "min_count": 2.5}, "min_count must be a whole number"),
])
def test_bad_labels_are_named_with_the_reason(label, message):
    with pytest.raises(VocabularyError) as err:
        Vocabulary.from_config({"labels": [label]}, "my.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.yaml")


def test_duplicate_names_and_empty_files_are_refused(tmp_path):
    with pytest.raises(VocabularyError, match="repeated: a"):
        Vocabulary.from_config({"labels": [{"name": "a", "tags": ["x"]}, {"name": "a", "tags": ["y"]}]})
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(VocabularyError, match="empty.yaml: expected a mapping"):
        load_vocabulary(empty)
    with pytest.raises(VocabularyError, match="cannot read"):
        load_vocabulary(tmp_path / "missing.yaml")


def test_a_file_round_trips_and_the_fingerprint_follows_the_rules(tmp_path):
    default = load_vocabulary()
    path = tmp_path / "vocab.json"
    path.write_text(default.to_json())
    again = load_vocabulary(path)
    assert again == default and again.fingerprint == default.fingerprint
    config = json.loads(default.to_json())
    config["labels"][0]["min_area_share"] = 0.2
    assert Vocabulary.from_config(config).fingerprint != default.fingerprint
