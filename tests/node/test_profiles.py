from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.node.errors import ProfileError
from edgefleet.node.profiles import builtin_profiles, detect_profile_name, load_profile_file, resolve_profile
from tests.conftest import write_profile

REQUIRED = {"rpi4-4gb", "rpi5-8gb", "jetson-orin-nano-8gb", "jetson-agx-orin-64gb", "x86-dev"}


def test_every_shipped_profile_validates() -> None:
    names = builtin_profiles()
    assert set(names) >= REQUIRED
    for name, path in names.items():
        p = load_profile_file(path)
        assert p.name == name, f"{path} declares name {p.name}"
        assert p.thermal.shed_c > p.thermal.throttle_c


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (b"Raspberry Pi 4 Model B Rev 1.4\x00", "rpi4-4gb"),
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "rpi5-8gb"),
        (b"NVIDIA Jetson Orin Nano Developer Kit\x00", "jetson-orin-nano-8gb"),
        (b"Jetson AGX Orin\x00", "jetson-agx-orin-64gb"),
        (b"Some other board\x00", "x86-dev"),
    ],
)
def test_auto_detect_from_the_device_tree(tmp_path: Path, model: bytes, expected: str) -> None:
    dt = tmp_path / "model"
    dt.write_bytes(model)
    assert detect_profile_name(dt) == expected
    assert resolve_profile(None, dt).name == expected


def test_no_device_tree_means_x86_dev(tmp_path: Path) -> None:
    assert detect_profile_name(tmp_path / "missing") == "x86-dev"


def test_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    bad = write_profile(tmp_path / "bad.toml", name="bad", n_batch="lots")
    with pytest.raises(ProfileError, match=r"bad\.toml.*context\.n_batch"):
        load_profile_file(bad)
    hot = write_profile(tmp_path / "hot.toml", name="hot", shed_c=60.0, throttle_c=70.0)
    with pytest.raises(ProfileError, match="shed_c"):
        load_profile_file(hot)
    extra = tmp_path / "extra.toml"
    extra.write_text((tmp_path / "hot.toml").read_text().replace("[memory]", "[memory]\nbudget_gb = 3"))
    with pytest.raises(ProfileError, match=r"memory\.budget_gb"):
        load_profile_file(extra)
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\nname=")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile_file(broken)


def test_unknown_profile_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ProfileError, match="x86-dev"):
        resolve_profile("toaster-9000")


def test_a_profile_names_its_device_class_s_embedder(tmp_path: Path) -> None:
    """[knowledge] embedder: the Jetsons use MiniLM, the small boards and x86-dev the default wordllama;
    a name that is no embedder is refused naming the field."""
    shipped = {name: load_profile_file(path).knowledge.embedder for name, path in builtin_profiles().items()}
    assert shipped["jetson-orin-nano-8gb"] == shipped["jetson-agx-orin-64gb"] == "minilm"
    assert shipped["rpi4-4gb"] == shipped["x86-dev"] == "wordllama"
    bad = tmp_path / "bad.toml"
    bad.write_text(builtin_profiles()["x86-dev"].read_text() + '\n[knowledge]\nembedder = "bert-huge"\n')
    with pytest.raises(ProfileError, match=r"knowledge\.embedder"):
        load_profile_file(bad)


def test_profiles_name_the_catalog_models_their_device_has_the_memory_for(tmp_path: Path) -> None:
    """[model] models: the 0.5B tool-calling model on the Jetsons and the 8 GB Pi; unknown names, a list
    without the preferred model and a model larger than the budget are refused naming the field."""
    shipped = {name: load_profile_file(path).model for name, path in builtin_profiles().items()}
    for name in ("jetson-orin-nano-8gb", "jetson-agx-orin-64gb", "rpi5-8gb"):
        assert "qwen2.5-coder-0.5b-instruct" in shipped[name].models, name
    for name, model in shipped.items():
        assert model.preferred in model.models, name
    unknown = write_profile(tmp_path / "unknown.toml", models=["smollm2-135m-instruct", "llama-70b"])
    with pytest.raises(ProfileError, match=r"unknown\.toml.*model\.models.*llama-70b not in the catalog"):
        load_profile_file(unknown)
    unlisted = write_profile(tmp_path / "unlisted.toml", models=["gemma-3-270m"])
    with pytest.raises(ProfileError, match=r"models: does not list the preferred model 'smollm2-135m-instruct'"):
        load_profile_file(unlisted)
    small = write_profile(tmp_path / "small.toml", budget_mb=600, overhead_mb=150)
    too_big = r"model\.models: qwen2\.5-coder-0\.5b-instruct, qwen2\.5-coder-1\.5b-instruct does not fit memory\.budget"
    with pytest.raises(ProfileError, match=too_big):
        load_profile_file(small)
    fits = write_profile(tmp_path / "fits.toml", budget_mb=600, overhead_mb=150, models=["smollm2-135m-instruct"])
    assert load_profile_file(fits).model.models == ["smollm2-135m-instruct"]
