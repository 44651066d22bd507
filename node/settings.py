"""Node settings: the site section (plumbing/site_settings.py) and the node's own fields; every
field has a default, a doc line and an environment variable (EDGEFLEET_*)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from edgefleet.plumbing.actuator_settings import ActuatorSettings
from edgefleet.plumbing.listen_address import ANY_HOST, LOOPBACK_HOST, is_loopback, warn_exposed
from edgefleet.plumbing.site_settings import SiteSettings
from edgefleet.plumbing.transport_security import SecuritySettingsError
from edgefleet.proto.topics import check_name


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "edgefleet"


class NodeSettings(SiteSettings, ActuatorSettings):
    """Settings of one node process. Command-line flags override these."""

    default_mqtt_url: ClassVar[str] = ""  # no EDGEFLEET_MQTT_URL: no control plane, gRPC only

    node_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "node",
        description="This node's id in logs and the fleet (EDGEFLEET_NODE_ID)",
    )
    profile: str | None = Field(
        default=None, description="Firmware profile name or path; empty: auto-detect (EDGEFLEET_PROFILE)"
    )
    model: str | None = Field(
        default=None,
        description="Catalog model name or GGUF path; empty: the profile's preferred model (EDGEFLEET_MODEL)",
    )
    host: str = Field(
        default=ANY_HOST,
        description="gRPC (and metrics) listen address; unset with EDGEFLEET_INSECURE: 127.0.0.1 (EDGEFLEET_HOST)",
    )
    port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=50051, description="gRPC port; 0 picks a free one (EDGEFLEET_PORT)"
    )
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        default=0,
        description="Prometheus metrics on http://host:PORT/metrics; 0: off (the default on devices) "
        "(EDGEFLEET_METRICS_PORT, --metrics-port)",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the node keeps state: model hashes, later its SQLite stores (EDGEFLEET_DATA_DIR)",
    )
    operators_may_write_knowledge: bool = Field(
        default=True,
        description="Operators (role operator or admin) may Ingest/DeleteDocuments over gRPC; off: only the "
        "orchestrator may (EDGEFLEET_OPERATORS_MAY_WRITE_KNOWLEDGE)",
    )
    crl_cache_file: Path | None = Field(
        default=None,
        description="Where the node keeps the site CRL it receives over MQTT (checked against the site CA); "
        "empty: <data_dir>/crl.pem (EDGEFLEET_CRL_CACHE_FILE)",
    )
    max_message_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = Field(
        default=16 * 1024 * 1024,
        description="Largest gRPC message accepted: an Ingest of a manual's PDF bytes must fit "
        "(EDGEFLEET_MAX_MESSAGE_BYTES)",
    )
    default_max_tokens: Annotated[int, Field(ge=1)] = Field(
        default=128, description="max_tokens when a request names none (EDGEFLEET_DEFAULT_MAX_TOKENS)"
    )
    max_tokens_limit: Annotated[int, Field(ge=1)] = Field(
        default=2048, description="Largest max_tokens a request may ask for (EDGEFLEET_MAX_TOKENS_LIMIT)"
    )
    max_stop_strings: Annotated[int, Field(ge=0, le=64)] = Field(
        default=8, description="Most stop strings in one request (EDGEFLEET_MAX_STOP_STRINGS)"
    )
    max_embed_texts: Annotated[int, Field(ge=1)] = Field(
        default=64, description="Most texts in one Embed call (EDGEFLEET_MAX_EMBED_TEXTS)"
    )
    embed_n_ctx: Annotated[int, Field(ge=64)] = Field(
        default=512, description="Context of the embedding context; longer texts are refused (EDGEFLEET_EMBED_N_CTX)"
    )
    thermal_zone: str | None = Field(
        default=None,
        description="Temperature file (millidegrees C) overriding the profile's zone (EDGEFLEET_THERMAL_ZONE)",
    )
    drain_timeout_s: Annotated[float, Field(ge=0)] = Field(
        default=30.0, description="On SIGTERM, how long in-flight requests may finish (EDGEFLEET_DRAIN_TIMEOUT_S)"
    )
    failure_grace_s: Annotated[float, Field(ge=0, le=60)] = Field(
        default=1.0,
        description="When the engine fails: seconds the node stays up, NOT_SERVING, so failed streams and "
        "its health reach clients, before it exits with code 70 (EDGEFLEET_FAILURE_GRACE_S)",
    )
    stream_interval_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=0.0,
        description="Least time between two streamed chunks (tokens in between go together; the first "
        "and the last are never held); 0: as they come (EDGEFLEET_STREAM_INTERVAL_MS)",
    )
    kv_type: Literal["f16", "q8_0"] | None = Field(
        default=None,
        description="KV cache cells, f16 or q8_0 (flash attention on; f16 with a warning where the model "
        "cannot); empty: the profile's context.kv_type (EDGEFLEET_KV_TYPE)",
    )
    prefix_cache: bool = Field(
        default=True, description="Reuse a slot's KV cells for a shared prompt prefix (EDGEFLEET_PREFIX_CACHE)"
    )
    prefix_store_mb: Annotated[int, Field(ge=0, le=1024 * 1024)] = Field(
        default=256,
        description="Disk space for the KV cells of fixed prompt prefixes (chat preamble, template heads), "
        "kept across restarts in <data_dir>/prefix_kv, least recently used out; 0: off (EDGEFLEET_PREFIX_STORE_MB)",
    )
    speculation: bool = Field(
        default=False,
        description="Draftless speculative decoding: greedy answers that copy their prompt (RAG, extraction) "
        "verify prompt-lookup drafts in the batched step; same text, fewer steps. Off by default: on a CPU "
        "a drafted token costs nearly a step (measured 0.5-0.95), it pays where steps are cheap to widen "
        "(GPU) (EDGEFLEET_SPECULATION)",
    )
    speculation_draft: Annotated[int, Field(ge=1, le=32)] = Field(
        default=6, description="Draft tokens at most per sequence and step (EDGEFLEET_SPECULATION_DRAFT)"
    )
    speculation_max_active: Annotated[int, Field(ge=0, le=256)] = Field(
        default=2,
        description="Speculate only while at most this many sequences run; more fill the step by batching "
        "(EDGEFLEET_SPECULATION_MAX_ACTIVE)",
    )
    speculation_step_cost: Annotated[float, Field(ge=0.0, le=4.0)] = Field(
        default=0.5,
        description="Cost of one more token in a decode step, in single-token steps: a draft is as long as "
        "pays at the sequence's acceptance (EDGEFLEET_SPECULATION_STEP_COST)",
    )
    tool_format: Literal["native", "generic"] = Field(
        default="native",
        description="Tool calls in the model family's own format where its chat template has one (native), "
        "or always in edgefleet's generic one (EDGEFLEET_TOOL_FORMAT)",
    )
    adapter_quantum: Annotated[int, Field(ge=1, le=64)] = Field(
        default=4,
        description="Decode steps one adapter group may take in a row while another group waits "
        "(EDGEFLEET_ADAPTER_QUANTUM)",
    )
    threads: Annotated[int, Field(ge=0, le=256)] = Field(
        default=0,
        description="llama.cpp compute threads; 0: the profile's. ggml's threads spin at barriers, so "
        "when other processes need cores, fewer threads decode faster (EDGEFLEET_THREADS)",
    )
    adapt_threads: bool = Field(
        default=True,
        description="Use fewer compute threads while other processes hold cores, and more when they "
        "leave, by timing decode steps (EDGEFLEET_ADAPT_THREADS)",
    )
    groups: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Groups besides the profile's name, comma separated (EDGEFLEET_GROUPS)",
    )
    telemetry_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0, description="Seconds between telemetry messages (EDGEFLEET_TELEMETRY_INTERVAL_S)"
    )
    advertise_address: str | None = Field(
        default=None, description="gRPC address announced to the fleet; empty: host:port (EDGEFLEET_ADVERTISE_ADDRESS)"
    )
    adapters: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="LoRA adapters to load at start, name=path.gguf, comma separated (EDGEFLEET_ADAPTERS)",
    )
    site_public_key: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="The site's Ed25519 public key file(s) (PEM) that artifact manifests and desired state must be "
        "signed with; several files comma separated, or several PEM blocks in one file, during a key rotation; "
        "empty: ~/.config/edgefleet/<site>.pub if present, else every artifact is refused and desired state is "
        "not verified (EDGEFLEET_SITE_PUBLIC_KEY)",
    )
    artifact_window: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=16, description="Artifact chunks asked for at a time (EDGEFLEET_ARTIFACT_WINDOW)"
    )
    artifact_retry_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=10.0,
        description="Ask again for missing chunks when none came for this long (EDGEFLEET_ARTIFACT_RETRY_S)",
    )
    model_check_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=60.0,
        description="A model switch: how long the new model's check generation may take before the switch "
        "fails and the previous model serves again (EDGEFLEET_MODEL_CHECK_TIMEOUT_S)",
    )
    sensor_session_expiry_s: Annotated[int, Field(ge=60, le=2**32 - 1)] = Field(
        default=7 * 24 * 3600,
        description="How long the broker keeps this node's sensor messages while it is away "
        "(EDGEFLEET_SENSOR_SESSION_EXPIRY_S)",
    )
    sensor_inbox_limit: Annotated[int, Field(ge=1)] = Field(
        default=10000,
        description="Sensor messages accepted and not yet answered; beyond it new ones are left "
        "unacknowledged for the broker to keep (EDGEFLEET_SENSOR_INBOX_LIMIT)",
    )
    sensor_outbox_limit: Annotated[int, Field(ge=1)] = Field(
        default=10000,
        description="Answers waiting for the broker; at it no new work starts (EDGEFLEET_SENSOR_OUTBOX_LIMIT)",
    )
    sensor_max_in_flight: Annotated[int, Field(ge=0, le=256)] = Field(
        default=0,
        description="Sensor messages answered at once; 0: the profile's slots (EDGEFLEET_SENSOR_MAX_IN_FLIGHT)",
    )
    sensor_max_attempts: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3,
        description="Tries at answering one sensor message (a failure, a crash) before it is parked with an "
        "error result and an error report instead of tried again (EDGEFLEET_SENSOR_MAX_ATTEMPTS)",
    )
    disk_warn_mb: Annotated[int, Field(ge=0)] = Field(
        default=100,
        description="Below this much free space (MiB) in the data directory the node logs a warning and its "
        "telemetry and GetNodeInfo say disk_low; 0: never (EDGEFLEET_DISK_WARN_MB)",
    )
    handler_retry_s: Annotated[float, Field(gt=0, le=600)] = Field(
        default=1.0,
        description="First wait before an MQTT message whose handler failed (a full disk, a lost broker) is "
        "handled again; doubles up to 30 s (EDGEFLEET_HANDLER_RETRY_S)",
    )
    knowledge: bool = Field(
        default=True, description="Keep a local knowledge store for retrieval (RAG) (EDGEFLEET_KNOWLEDGE)"
    )
    embedder: Literal["wordllama", "minilm", "node", "gguf"] | None = Field(
        default=None,
        description="Knowledge embedder; empty: the profile's [knowledge] embedder (wordllama unless it says): "
        "wordllama (static, in its wheel; the lightest), minilm (all-MiniLM-L6-v2 "
        "from its wheel through llama.cpp; better retrieval, ~50x slower ingest), node (this node's model, mean "
        "pooling) or gguf (EDGEFLEET_EMBEDDER_MODEL); a change re-embeds in the background (EDGEFLEET_EMBEDDER)",
    )
    embedder_model: Path | None = Field(
        default=None, description="GGUF embedding model for EDGEFLEET_EMBEDDER=gguf (EDGEFLEET_EMBEDDER_MODEL)"
    )
    max_document_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = Field(
        default=4 * 1024 * 1024,
        description="Largest document text accepted by Ingest, after a PDF's or HTML page's text is taken "
        "out (a 500-page manual has about 1 MiB; EDGEFLEET_MAX_DOCUMENT_BYTES)",
    )
    response_cache: bool = Field(
        default=True,
        description="Answer a deterministic request (temperature 0) seen before from the cache "
        "(EDGEFLEET_RESPONSE_CACHE)",
    )
    response_cache_rows: Annotated[int, Field(ge=1)] = Field(
        default=1000,
        description="Answers kept in the response cache, least recently used out (EDGEFLEET_RESPONSE_CACHE_ROWS)",
    )
    retrieval_cache_rows: Annotated[int, Field(ge=1)] = Field(
        default=10000, description="Retrievals kept in the retrieval cache (EDGEFLEET_RETRIEVAL_CACHE_ROWS)"
    )
    grounding: bool = Field(
        default=True,
        description="Cite or abstain: a knowledge answer (a request with a collection, free text) is asked to quote "
        "and cite its numbered sources, checked against them after generation, and answered 'The documents do not "
        "cover this.' when they do not (EDGEFLEET_GROUNDING; off: sources only, no check)",
    )
    grounding_min_relevance: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.4,
        description="Below this share of the question's words found in the best source (or with an alarm code or "
        "part number of the question in no source) a knowledge answer abstains without asking the model, and "
        "an agent's knowledge_search answers that the documents do not cover it (EDGEFLEET_GROUNDING_MIN_RELEVANCE)",
    )
    grounding_extractive: bool = Field(
        default=True,
        description="When the model's answer is not supported by its sources, add the sources' own best sentence, "
        "quoted with its citation (off: abstain instead) (EDGEFLEET_GROUNDING_EXTRACTIVE)",
    )
    agents: bool = Field(
        default=True,
        description="Run the site agents (agent rules and tools) pushed in desired state (EDGEFLEET_AGENTS)",
    )
    agents_max_runs: Annotated[int, Field(ge=1, le=64)] = Field(
        default=2,
        description="Agent runs advancing at once; a run waiting for an operator holds none "
        "(EDGEFLEET_AGENTS_MAX_RUNS)",
    )
    update_lock_file: Path | None = Field(
        default=Path("/tmp/balena/updates.lock"),
        description="balena's update lock file, held while requests, sensor messages or artifact installs are "
        "under way; empty, or its directory absent: off (EDGEFLEET_UPDATE_LOCK_FILE)",
    )
    update_lock_max_s: Annotated[float, Field(gt=0, le=86400)] = Field(
        default=300.0,
        description="Longest one hold of the update lock, in seconds (EDGEFLEET_UPDATE_LOCK_MAX_S)",
    )

    def crl_file(self) -> Path:
        """The site CRL this node applies: the one received over MQTT (or EDGEFLEET_CRL_CACHE_FILE)."""
        return self.crl_cache_file or self.data_dir / "crl.pem"

    @field_validator("site_public_key", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if v is None:
            return []
        if isinstance(v, Path):
            return [v]
        if isinstance(v, str):
            return [Path(p.strip()) for p in v.split(",") if p.strip()]
        return v

    @field_validator("kv_type", mode="before")
    @classmethod
    def _empty_kv_type_is_the_profiles(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("update_lock_file", mode="before")
    @classmethod
    def _empty_lock_is_off(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("groups", "adapters", mode="before")
    @classmethod
    def _split_groups(cls, v: object) -> object:
        if isinstance(v, str):
            return [g.strip() for g in v.split(",") if g.strip()]
        return v

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, v: list[str]) -> list[str]:
        for g in v:
            check_name("group", g)
        return v

    @model_validator(mode="after")
    def _insecure_node_listens_on_loopback(self) -> NodeSettings:
        """Insecure (plaintext, no client certificates): gRPC and metrics on 127.0.0.1 unless a host is set."""
        if self.insecure and "host" not in self.model_fields_set and self.host == ANY_HOST:
            self.host = LOOPBACK_HOST
        return self

    def exposed_listeners(self) -> dict[str, str]:
        """Insecure listeners on an address that is not loopback (set explicitly): setting → host:port."""
        if not self.insecure or is_loopback(self.host):
            return {}
        exposed = {"EDGEFLEET_HOST (gRPC)": f"{self.host}:{self.port}"}
        if self.metrics_port:
            exposed["EDGEFLEET_HOST (metrics)"] = f"{self.host}:{self.metrics_port}"
        return exposed

    def warn_if_insecure(self, log: logging.Logger, part: str) -> None:
        super().warn_if_insecure(log, part)
        warn_exposed(log, part, self.exposed_listeners())

    def site_key_path(self) -> Path | None:
        """The first pinned public key file (see `site_key_paths`), or None."""
        paths = self.site_key_paths()
        return paths[0] if paths else None

    def site_key_paths(self) -> list[Path]:
        """The pinned public key files: EDGEFLEET_SITE_PUBLIC_KEY, else the default one if present."""
        if self.site_public_key:
            return list(self.site_public_key)
        default = Path.home() / ".config" / "edgefleet" / f"{self.site}.pub"
        return [default] if default.exists() else []

    def check_security(self) -> None:
        """Secure mode (the default): mutual TLS on gRPC, mqtts:// with a client certificate, and a
        pinned site key to verify desired state; a SecuritySettingsError says what is missing."""
        self.require_tls("the node's gRPC API")
        self.require_secure_mqtt()
        if not self.insecure and self.mqtt_url and not self.site_key_paths():
            raise SecuritySettingsError(
                "a node verifies desired state with the site's public key: set EDGEFLEET_SITE_PUBLIC_KEY "
                "(the bundle from `edgefleet fleet enroll-node` holds site.pub), or EDGEFLEET_INSECURE=1 "
                "for local development only"
            )
