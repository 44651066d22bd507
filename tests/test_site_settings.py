"""One site settings section: site, topic root, MQTT, TLS, the insecure switch and logging are
declared once (plumbing/site_settings.py and its sections) and refused the same way by every part."""

from __future__ import annotations

import io
import os
from collections import defaultdict
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from edgefleet.fleet import cli as fleet_cli
from edgefleet.fleet import identity_commands
from edgefleet.fleet.console.settings import ConsoleSettings
from edgefleet.fleet.settings import FleetSettings
from edgefleet.node import cli as node_cli
from edgefleet.node.settings import NodeSettings
from edgefleet.orchestrator import cli as orchestrator_cli
from edgefleet.orchestrator.settings import OrchestratorSettings
from edgefleet.plumbing.site_settings import SiteSettings

PARTS: tuple[type[SiteSettings], ...] = (NodeSettings, OrchestratorSettings, FleetSettings, ConsoleSettings)
SHARED = ("site", "topic_root", "mqtt_url", "mqtt_ca_file", "tls_cert_file", "insecure", "log_level", "log_format")
BAD_SITE = "lab/one"
SITE_REFUSAL = f"site name '{BAD_SITE}' is invalid: use 1-64 letters, digits"
# One address seen from both ends, on purpose (scripts/run sets it once for both): the orchestrator listens
# on it (default 0.0.0.0:50050, empty: off), the console's playground connects to it (default 127.0.0.1:50050).
BOTH_ENDS = {"front_door_address"}


def _sections() -> set[type[BaseSettings]]:
    return {c for part in PARTS for c in part.__mro__ if issubclass(c, BaseSettings) and c is not BaseSettings}


def _declared_in(func: object) -> str:
    """`module.Class` a validator is written in (pydantic rebinds its cls_ref to every subclass)."""
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', '').rsplit('.', 1)[0]}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No EDGEFLEET_* from the test harness, no CLI config file: only what a test sets."""
    for name in [n for n in os.environ if n.startswith("EDGEFLEET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", os.devnull)
    return monkeypatch


def test_every_settings_field_is_declared_in_exactly_one_class() -> None:
    owners: dict[str, list[str]] = defaultdict(list)
    for cls in _sections():
        for name in vars(cls).get("__annotations__", {}):
            if name in cls.model_fields:
                owners[name].append(cls.__qualname__)
    twice = {name: sorted(classes) for name, classes in owners.items() if len(classes) > 1 and name not in BOTH_ENDS}
    assert not twice, f"settings fields declared in more than one class: {twice}"
    for name in SHARED:
        assert owners[name] and issubclass(SiteSettings, _owner(name)), f"{name} is not in the site section"
        for part in PARTS:
            assert name in part.model_fields, f"{part.__name__} lacks the site section's {name}"


def _owner(name: str) -> type[BaseSettings]:
    return next(c for c in _sections() if name in vars(c).get("__annotations__", {}) and name in c.model_fields)


def test_no_field_is_validated_in_two_classes_and_no_validator_hides_another() -> None:
    """Two validators of one field in two classes would be a rule written twice; a validator named like one of
    a base class replaces it silently (pydantic keeps one per name), so the base's rule would be lost."""
    validated_in: dict[str, set[str]] = defaultdict(set)
    for part in PARTS:
        seen: dict[str, str] = {}
        for cls in part.__mro__:
            if not (isinstance(cls, type) and issubclass(cls, BaseSettings)) or cls is BaseSettings:
                continue
            infos = cls.__pydantic_decorators__
            for name, dec in {**infos.field_validators, **infos.model_validators}.items():
                if _declared_in(dec.func) != f"{cls.__module__}.{cls.__qualname__}":
                    continue  # inherited: counted where it is declared
                assert name not in seen, f"{part.__name__}: validator {name} of {cls.__name__} hides {seen[name]}'s"
                seen[name] = cls.__name__
        for dec in part.__pydantic_decorators__.field_validators.values():
            if dec.info.mode in ("after", "wrap"):  # before-validators only normalise input (empty → none)
                for field in dec.info.fields:
                    validated_in[field].add(_declared_in(dec.func))
    twice = {f: sorted(c) for f, c in validated_in.items() if len(c) > 1 and f not in BOTH_ENDS}
    assert not twice, f"fields validated in more than one class: {twice}"


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.__name__)
def test_every_part_refuses_an_invalid_site_name_the_same_way(
    part: type[SiteSettings], clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=SITE_REFUSAL):
        part(site=BAD_SITE)
    clean_env.setenv("EDGEFLEET_SITE", BAD_SITE)
    with pytest.raises(ValidationError, match=SITE_REFUSAL):
        part()


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.__name__)
def test_every_part_refuses_a_log_format_or_level_it_does_not_know(
    part: type[SiteSettings], clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("EDGEFLEET_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match=r"log_format\n.*Input should be 'json' or 'text'"):
        part()
    clean_env.setenv("EDGEFLEET_LOG_FORMAT", "TEXT")  # the spelling is forgiven, the value is not
    clean_env.setenv("EDGEFLEET_LOG_LEVEL", "info")
    settings = part()
    assert (settings.log_format, settings.log_level) == ("text", "INFO")
    clean_env.setenv("EDGEFLEET_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError, match=r"log_level\n.*Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"):
        part()


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.__name__)
def test_every_part_refuses_a_topic_root_or_broker_url_that_cannot_work(
    part: type[SiteSettings], clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=r"topic root 'fleet/\{zone\}/' may use only the placeholder \{site\}"):
        part(topic_root="fleet/{zone}/")
    with pytest.raises(ValidationError, match="may not contain wildcards"):
        part(topic_root="fleet/#/")
    with pytest.raises(ValidationError, match="must look like mqtt://host:1883 or mqtts://host:8883"):
        part(mqtt_url="http://broker:1883")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        part(sitee="lab")  # a misspelt override is an error, not silently dropped
    assert part(site="lab", topic_root="x/{site}/").topics().root == "x/lab/"


def test_an_unset_broker_is_the_local_one_except_on_a_node(clean_env: pytest.MonkeyPatch) -> None:
    for part in (OrchestratorSettings, FleetSettings, ConsoleSettings):
        assert part().mqtt_url == "mqtt://127.0.0.1:1883"
        assert part(mqtt_url="").mqtt_url == "mqtt://127.0.0.1:1883"
    assert NodeSettings().mqtt_url == ""  # no control plane
    clean_env.setenv("EDGEFLEET_MQTT_URL", "mqtts://broker:8883")
    assert {part().mqtt_url for part in PARTS} == {"mqtts://broker:8883"}


def test_the_console_passes_its_whole_site_section_to_the_commands_it_sends(clean_env: pytest.MonkeyPatch) -> None:
    console = ConsoleSettings(site="lab", mqtt_url="mqtts://b:8883", tls_crl_file=Path("/x/crl.pem"), insecure=True)
    fleet = console.fleet_settings()
    for name in SiteSettings.model_fields:
        assert getattr(fleet, name) == getattr(console, name), name


def test_each_entry_point_says_which_setting_is_wrong_and_exits_2(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI (site commands, the console, balena, PKI verbs), the node and the orchestrator: exit 2 and a
    message naming the setting, before anything starts."""
    for argv in (
        ["--site", BAD_SITE, "fleet", "status"],
        ["--site", BAD_SITE, "console"],
        ["--site", BAD_SITE, "fleet", "balena", "status", "--fleet", "f"],
    ):
        err = io.StringIO()
        assert fleet_cli.main(argv, io.StringIO(), err) == 2, argv
        said = err.getvalue() + capsys.readouterr().err  # the balena handler writes to stderr itself
        assert "invalid setting: site:" in said and SITE_REFUSAL in said, (argv, said)
    err = io.StringIO()
    rc = identity_commands.main(["--site", BAD_SITE, "identities", "--dir", str(tmp_path)], io.StringIO(), err)
    assert rc == 2 and SITE_REFUSAL in err.getvalue(), err.getvalue()
    clean_env.setenv("EDGEFLEET_LOG_FORMAT", "xml")
    for main, prog in ((node_cli.main, "edgefleet-node"), (orchestrator_cli.main, "edgefleet-orchestrator")):
        capsys.readouterr()
        assert main(["serve"]) == 2
        stderr = capsys.readouterr().err
        assert f"{prog}: invalid setting" in stderr and "log_format" in stderr, stderr
