"""One version pattern for templates, rules and artifacts."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from edgefleet.proto.versions import Version, check_version, is_older, valid_version


class _Versioned(BaseModel):
    version: Version


@pytest.mark.parametrize("good", ["1", "1.2.3", "2024-05-01", "1.0+build.7", "v2_rc1", "a" * 32])
def test_good_versions(good: str) -> None:
    assert valid_version(good) and check_version(good) == good
    assert _Versioned(version=good).version == good


@pytest.mark.parametrize("bad", ["", ".1", "-1", "1/2", "1 2", "1#", "a" * 33, "ü1", None, 3])
def test_bad_versions_are_refused_the_same_way_everywhere(bad: object) -> None:
    assert not valid_version(bad)
    with pytest.raises(ValueError, match="is invalid"):
        check_version(bad)
    with pytest.raises(ValidationError):
        _Versioned(version=bad)  # type: ignore[arg-type]


def test_the_payloads_use_the_one_pattern() -> None:
    from edgefleet.proto.artifacts import Manifest
    from edgefleet.proto.payloads import ArtifactRef, TemplateSpec
    from edgefleet.proto.rules import RuleSpec

    for model in (Manifest, ArtifactRef, TemplateSpec, RuleSpec):
        meta = model.model_fields["version"].metadata
        assert any(getattr(m, "pattern", None) == r"^[A-Za-z0-9][A-Za-z0-9._+-]*$" for m in meta), model


def test_natural_order() -> None:
    assert is_older("1.9", "1.10") and is_older("1.9.9", "2") and not is_older("2", "2")
    assert is_older("1.1", "1.a")
