"""Firmware profiles: one TOML file per device class, validated by a strict pydantic model.

A profile says what a device can afford: memory budget, threads, context per slot, slots,
queue length, GPU layers, the preferred model and the thermal limits. It is chosen by
``--profile`` / ``EDGEFLEET_PROFILE`` (a name or a path), else auto-detected from
``/proc/device-tree/model``, else ``x86-dev``.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.node.engine.kv_type import DEFAULT_KV_TYPE, KvType, kv_bytes_per_token
from edgefleet.node.errors import ProfileError
from edgefleet.node.model_catalog import CATALOG
from edgefleet.proto.payloads import describe_validation_error

DEFAULT_PROFILE = "x86-dev"
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
MiB = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSection(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Profile name")]
    description: str = ""
    match: list[str] = Field(default_factory=list, description="Substrings of the device-tree model")
    min_ram_mb: Annotated[int, Field(ge=0)] = 0


class MemorySection(_Strict):
    budget_mb: Annotated[int, Field(gt=0, description="Memory the node may use, in MiB")]
    overhead_mb: Annotated[int, Field(ge=0, description="Runtime overhead beyond model and KV")] = 150


class ComputeSection(_Strict):
    threads: Annotated[int, Field(ge=1, le=256)]
    gpu_layers: Annotated[int, Field(ge=0, le=1000)] = 0


class ContextSection(_Strict):
    n_ctx: Annotated[int, Field(ge=128, le=131072, description="Context tokens each slot gets")]
    n_batch: Annotated[int, Field(ge=32, le=8192, description="Tokens per decode step")]
    slots: Annotated[int, Field(ge=1, le=64, description="Sequences decoded together")]
    queue_length: Annotated[int, Field(ge=0, le=10000, description="Requests waiting for a slot")]
    kv_type: KvType = Field(
        default=DEFAULT_KV_TYPE,
        description="KV cache cells: f16, or q8_0 (47 % less KV memory, flash attention on; f16 where the "
        "model cannot) where measured safe (bench/kv_type.py); EDGEFLEET_KV_TYPE overrides it",
    )


class ModelSection(_Strict):
    preferred: str = "smollm2-135m-instruct"
    quantization: str = "Q4_1"
    models: list[str] = Field(
        default_factory=list,
        description="Catalog models this device class has the memory for (node/model_catalog.py); "
        "each must be a catalog name whose file fits memory.budget_mb, and include `preferred`",
    )

    @field_validator("models")
    @classmethod
    def _catalog_names(cls, models: list[str]) -> list[str]:
        unknown = [m for m in models if m not in CATALOG]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not in the catalog ({', '.join(CATALOG)})")
        return models

    @model_validator(mode="after")
    def _lists_preferred(self) -> ModelSection:
        if self.models and self.preferred in CATALOG and self.preferred not in self.models:
            raise ValueError(f"models: does not list the preferred model {self.preferred!r}")
        return self


class ThermalSection(_Strict):
    zone: str = "/sys/class/thermal/thermal_zone0/temp"
    throttle_c: Annotated[float, Field(gt=0, lt=200)]
    shed_c: Annotated[float, Field(gt=0, lt=200)]
    throttle_slots: Annotated[int, Field(ge=1)] = 1
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0

    @model_validator(mode="after")
    def _ordered(self) -> ThermalSection:
        if self.shed_c <= self.throttle_c:
            raise ValueError(f"shed_c ({self.shed_c}) must be above throttle_c ({self.throttle_c})")
        return self


class KnowledgeSection(_Strict):
    embedder: Literal["wordllama", "minilm", "node"] = Field(
        default="wordllama",
        description="The knowledge embedder of this device class, unless EDGEFLEET_EMBEDDER names one: "
        "wordllama for the smallest devices, minilm where cores and disk allow (better retrieval)",
    )


class FirmwareProfile(_Strict):
    device: DeviceSection
    memory: MemorySection
    compute: ComputeSection
    context: ContextSection
    model: ModelSection = ModelSection()
    thermal: ThermalSection
    knowledge: KnowledgeSection = KnowledgeSection()
    source: str = Field(default="", exclude=True, description="File the profile came from")

    @property
    def name(self) -> str:
        return self.device.name

    @model_validator(mode="after")
    def _slots(self) -> FirmwareProfile:
        if self.thermal.throttle_slots > self.context.slots:
            raise ValueError(
                f"thermal.throttle_slots ({self.thermal.throttle_slots}) exceeds context.slots ({self.context.slots})"
            )
        budget = (self.memory.budget_mb - self.memory.overhead_mb) * MiB
        too_big = [m for m in self.model.models if CATALOG[m].file_bytes > budget]
        if too_big:
            raise ValueError(
                f"model.models: {', '.join(too_big)} does not fit memory.budget_mb ({self.memory.budget_mb}) "
                f"less memory.overhead_mb ({self.memory.overhead_mb})"
            )
        return self


def _builtin_dir() -> Path:
    return Path(str(resources.files("edgefleet.firmware_profiles")))


def builtin_profiles() -> dict[str, Path]:
    """Names of the shipped profiles and their files."""
    return {p.stem: p for p in sorted(_builtin_dir().glob("*.toml"))}


def load_profile_file(path: Path) -> FirmwareProfile:
    """Parse and validate one profile file; errors name the file and the field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ProfileError(f"profile file {path} does not exist") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"profile file {path} is not valid TOML: {e}") from e
    try:
        return FirmwareProfile.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        raise ProfileError(f"invalid profile {path}: {describe_validation_error(e)}") from e


def detect_profile_name(device_tree_model: Path = DEVICE_TREE_MODEL) -> str:
    """The shipped profile whose `match` names this board, else the default."""
    try:
        model = device_tree_model.read_bytes().rstrip(b"\x00").decode("utf-8", "replace")
    except OSError:
        return DEFAULT_PROFILE
    for name, path in builtin_profiles().items():
        for needle in load_profile_file(path).device.match:
            if needle and needle in model:
                return name
    return DEFAULT_PROFILE


def with_kv_type(profile: FirmwareProfile, kv_type: str | None) -> FirmwareProfile:
    """The profile with its context.kv_type replaced (EDGEFLEET_KV_TYPE, a fallback to f16); None: as is."""
    if not kv_type or kv_type == profile.context.kv_type:
        return profile
    data = profile.model_dump()
    data["context"]["kv_type"] = kv_type
    return FirmwareProfile.model_validate({**data, "source": profile.source})


def resolve_profile(choice: str | None, device_tree_model: Path = DEVICE_TREE_MODEL) -> FirmwareProfile:
    """A profile by name or path; None means auto-detect."""
    if not choice:
        choice = detect_profile_name(device_tree_model)
    builtin = builtin_profiles()
    if choice in builtin:
        return load_profile_file(builtin[choice])
    path = Path(choice)
    if path.suffix == ".toml" or path.exists():
        return load_profile_file(path)
    raise ProfileError(f"unknown profile {choice!r}; shipped profiles: {', '.join(builtin)}, or give a path")


def estimate_memory_bytes(
    profile: FirmwareProfile, model_file_bytes: int, kv_bytes_per_token_f16: int
) -> dict[str, int]:
    """Model file + KV cache for n_ctx x slots + the profile's overhead, in bytes. The KV figure is the
    f16 one (a GGUF header's, a manifest's), scaled to the profile's context.kv_type."""
    per_token = kv_bytes_per_token(kv_bytes_per_token_f16, profile.context.kv_type)
    kv = per_token * profile.context.n_ctx * profile.context.slots
    overhead = profile.memory.overhead_mb * MiB
    return {
        "model": model_file_bytes,
        "kv_cache": kv,
        "overhead": overhead,
        "total": model_file_bytes + kv + overhead,
        "budget": profile.memory.budget_mb * MiB,
    }
