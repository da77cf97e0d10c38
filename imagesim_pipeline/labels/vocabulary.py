"""The label vocabulary: which OSM features make a chip carry which label.

A vocabulary is configuration (YAML or JSON, see ``default_vocabulary.yaml``): per label a
name, OSM tag rules, exclusions, the geometry kinds that count and a minimum presence per kind
(polygon area share of the chip, line length in metres, point count). Label ids are the
positions in the list. The fingerprint (a hash of the canonical form) travels with every table
labelled with it, so tables from different vocabularies are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from imagesim_pipeline.errors import ImagesimError

KINDS = ("polygon", "line", "point")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KEY = re.compile(r"^[A-Za-z0-9_:.\-]+$")
_LABEL_FIELDS = {"name", "tags", "exclude", "geometry", "min_area_share", "min_length_m", "min_count"}


class VocabularyError(ImagesimError, ValueError):
    """The vocabulary configuration is invalid; the message names the label and the field."""


@dataclass(frozen=True)
class TagRule:
    """``key`` (present, not "no"), ``key=value`` or ``key=v1|v2``."""

    key: str
    values: frozenset[str] | None = None  # None: any value but "no"

    @classmethod
    def parse(cls, text: str, where: str) -> TagRule:
        """The rule written as ``text``; :class:`VocabularyError` naming ``where`` when invalid."""
        if not isinstance(text, str):
            raise VocabularyError(f"{where}: tag rule {text!r} is not a string")
        key, eq, values = text.partition("=")
        key = key.strip()
        if not _KEY.match(key):
            raise VocabularyError(f"{where}: tag rule {text!r} is not one of key, key=value, key=v1|v2 "
                                  "(keys are letters, digits and _ : . -)")
        if not eq:
            return cls(key)
        parts = [v.strip() for v in values.split("|")]
        if not all(parts):
            raise VocabularyError(f"{where}: tag rule {text!r} has an empty value")
        return cls(key, frozenset(parts))

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Whether ``tags`` satisfy the rule."""
        value = tags.get(self.key)
        if value is None:
            return False
        return value != "no" if self.values is None else value in self.values

    def __str__(self) -> str:
        return self.key if self.values is None else f"{self.key}={'|'.join(sorted(self.values))}"


@dataclass(frozen=True)
class Label:
    """One label: the tag rules that give it and how much of a chip it must cover."""

    name: str
    tags: tuple[TagRule, ...]
    geometry: tuple[str, ...]
    exclude: tuple[TagRule, ...] = ()
    min_area_share: float = 0.0
    min_length_m: float = 0.0
    min_count: int = 1

    def matches(self, tags: Mapping[str, str]) -> bool:
        """Whether a feature with ``tags`` counts for this label."""
        return any(r.matches(tags) for r in self.tags) and not any(r.matches(tags) for r in self.exclude)

    def as_config(self) -> dict[str, Any]:
        """The label in configuration form (what the fingerprint hashes)."""
        config: dict[str, Any] = {"name": self.name, "tags": [str(r) for r in self.tags],
                                  "geometry": list(self.geometry)}
        if self.exclude:
            config["exclude"] = [str(r) for r in self.exclude]
        if "polygon" in self.geometry:
            config["min_area_share"] = self.min_area_share
        if "line" in self.geometry:
            config["min_length_m"] = self.min_length_m
        if "point" in self.geometry:
            config["min_count"] = self.min_count
        return config


@dataclass(frozen=True)
class Vocabulary:
    """The labels, in id order, and where they were read from."""

    labels: tuple[Label, ...]
    source: str = field(default="built-in", compare=False)

    @property
    def names(self) -> list[str]:
        """Label names in id order."""
        return [label.name for label in self.labels]

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, name: str) -> int:
        """The id of label ``name``."""
        return self.names.index(name)

    def as_config(self) -> dict[str, Any]:
        """The vocabulary in configuration form."""
        return {"version": 1, "labels": [label.as_config() for label in self.labels]}

    @property
    def fingerprint(self) -> str:
        """A hash of the canonical configuration: equal vocabularies label alike."""
        canonical = json.dumps(self.as_config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The configuration with its fingerprint, as stored beside label tables."""
        return json.dumps({**self.as_config(), "fingerprint": self.fingerprint}, indent=2)

    @classmethod
    def from_config(cls, config: Any, source: str = "config") -> Vocabulary:
        """The vocabulary in a parsed YAML/JSON ``config``; :class:`VocabularyError` naming ``source``."""
        if not isinstance(config, Mapping) or not isinstance(config.get("labels"), list) or not config["labels"]:
            raise VocabularyError(f"{source}: expected a mapping with a non-empty 'labels' list")
        labels = [_parse_label(entry, f"{source}: label {i}") for i, entry in enumerate(config["labels"])]
        names = [label.name for label in labels]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise VocabularyError(f"{source}: label names must be unique; repeated: {', '.join(duplicates)}")
        if len(labels) > 127:
            raise VocabularyError(f"{source}: at most 127 labels (label ids are int8); got {len(labels)}")
        return cls(tuple(labels), source)


def _number(entry: Mapping[str, Any], key: str, where: str, lo: float, hi: float | None, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise VocabularyError(f"{where}: {key} must be a number {bound}; got {value!r}")
    return float(value)


def _rules(entry: Mapping[str, Any], key: str, where: str) -> tuple[TagRule, ...]:
    rules = entry.get(key, [])
    if isinstance(rules, str):
        rules = [rules]
    if not isinstance(rules, list):
        raise VocabularyError(f"{where}: {key} must be a list of tag rules")
    return tuple(TagRule.parse(r, f"{where} ({key})") for r in rules)


def _parse_label(entry: Any, where: str) -> Label:
    if not isinstance(entry, Mapping):
        raise VocabularyError(f"{where}: expected a mapping, got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise VocabularyError(f"{where}: name {name!r} must start with a letter and hold letters, digits, _")
    where = f"{where.rsplit(': ', 1)[0]}: label {name!r}"
    unknown = sorted(set(entry) - _LABEL_FIELDS)
    if unknown:
        raise VocabularyError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(_LABEL_FIELDS))}")
    tags = _rules(entry, "tags", where)
    if not tags:
        raise VocabularyError(f"{where}: needs at least one tag rule")
    kinds = entry.get("geometry", ["polygon"])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    bad = [k for k in kinds if k not in KINDS] if isinstance(kinds, list) else [kinds]
    if bad or not kinds:
        raise VocabularyError(f"{where}: geometry must be a non-empty list of {', '.join(KINDS)}; got {kinds!r}")
    return Label(name=name, tags=tags, exclude=_rules(entry, "exclude", where),
                 geometry=tuple(k for k in KINDS if k in kinds),
                 min_area_share=_number(entry, "min_area_share", where, 0.0, 1.0, 0.0),
                 min_length_m=_number(entry, "min_length_m", where, 0.0, None, 0.0),
                 min_count=_count(entry, where))


def _count(entry: Mapping[str, Any], where: str) -> int:
    value = entry.get("min_count", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise VocabularyError(f"{where}: min_count must be a whole number >= 1; got {value!r}")
    return value


def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The vocabulary in a YAML/JSON file, or the built-in default of 13 labels."""
    if path is None or path == "":
        text = resources.files("imagesim_pipeline.labels").joinpath("default_vocabulary.yaml").read_text()
        return Vocabulary.from_config(yaml.safe_load(text), "built-in vocabulary")
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise VocabularyError(f"{file}: cannot read the vocabulary ({exc.strerror})") from None
    try:
        config = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise VocabularyError(f"{file}: not valid YAML/JSON ({exc})") from None
    return Vocabulary.from_config(config, str(file))


def vocabulary_from_json(text: str) -> Vocabulary:
    """The vocabulary stored beside a table (``Vocabulary.to_json``)."""
    return Vocabulary.from_config(json.loads(text), "stored vocabulary")


__all__ = ["KINDS", "Label", "TagRule", "Vocabulary", "VocabularyError", "load_vocabulary", "vocabulary_from_json"]
