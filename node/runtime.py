"""Assembles a node: settings → profile → model → memory check → engine → services.

The model: the one node.db says to switch to or has committed (node/model_switch.py), else the
node's own (EDGEFLEET_MODEL, else the profile's)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from edgefleet.node.adapter_manager import AdapterManager
from edgefleet.node.agents.runner import AgentRunner
from edgefleet.node.control.agent import ControlAgent
from edgefleet.node.control.base_models import BaseModels, ModelSlot
from edgefleet.node.control.desired_store import DesiredStateStore, open_node_db
from edgefleet.node.control.faults import NodeFaults
from edgefleet.node.engine.engine import Engine, EngineConfig
from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.speculation import SpeculationPolicy
from edgefleet.node.errors import EdgefleetError, InvalidRequest, ModelError, OverBudget
from edgefleet.node.knowledge.errors import KnowledgeError
from edgefleet.node.knowledge.service import EmbedderChoice, KnowledgeService
from edgefleet.node.model_catalog import ModelFile, resolve_model
from edgefleet.node.model_switch import check_generation, choose_and_build
from edgefleet.node.profiles import FirmwareProfile, MiB, estimate_memory_bytes, resolve_profile, with_kv_type
from edgefleet.node.sensors.plane import SensorPlane
from edgefleet.node.service import NodeService
from edgefleet.node.service_types import Embed
from edgefleet.node.settings import NodeSettings
from edgefleet.node.thermal import ThermalGovernor
from edgefleet.proto.artifacts import load_public_key
from edgefleet.proto.signing import KeyRing, load_public_keys
from edgefleet.proto.topics import Topics

log = logging.getLogger("edgefleet.node")


@dataclass
class Node:
    service: NodeService
    engine: Engine
    model: LoadedModel
    agent: ControlAgent | None = None
    models: BaseModels | None = None  # the base-model slots in node.db (a node on a site)
    switching: ModelSlot | None = None  # loaded and checked; committed once the node serves
    restart_reason: str = ""  # set: stop, drain and execute again (a model switch)
    signalled: bool = False  # SIGTERM/SIGINT: the supervisor stops the node; no restart then
    on_restart: list[Callable[[], None]] = field(default_factory=list)
    _restart_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_control_plane(self) -> None:
        if self.agent is not None:
            self.agent.start()

    def commit_model(self) -> None:
        """The switched-to model serves and is healthy: record it, before anything reports it."""
        if self.models is not None and self.switching is not None:
            self.models.commit(self.switching)
            log.info("model switch committed", extra={"model": self.switching.label})
            self.switching = None

    def request_restart(self, reason: str) -> None:
        """From any thread: drain and execute the node again (`serve` does it); the first reason wins."""
        with self._restart_lock:
            if self.restart_reason:
                return
            self.restart_reason = reason
        log.info("restart requested", extra={"reason": reason})
        for callback in self.on_restart:
            callback()

    def close(self, failure: str = "") -> None:
        """Stop every part; `failure` (the engine's reason) makes the last status `failed`, not `offline`."""
        if self.agent is not None:
            self.agent.stop(failure, self.restart_reason)  # the last status before the engine goes away
        self.engine.stop()
        if self.service.knowledge is not None:
            self.service.knowledge.close()
        self.model.close()


KNOWLEDGE_DB = "knowledge.db"


def open_knowledge(
    settings: NodeSettings, node_embed: Embed, n_embd: int, sha256: str, profile: FirmwareProfile
) -> KnowledgeService:
    return KnowledgeService(
        settings.data_dir / KNOWLEDGE_DB,
        # the embedder's compute threads follow the node's (EDGEFLEET_THREADS, else the profile's)
        EmbedderChoice(
            settings.embedder or profile.knowledge.embedder,
            settings.embedder_model,
            max(1, settings.threads or profile.compute.threads),
        ),
        node_embed,
        n_embd,
        sha256,
        settings.retrieval_cache_rows,
        settings.response_cache_rows,
        settings.max_document_bytes,
    )


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"


def build_node(settings: NodeSettings) -> Node:
    """Load everything a node serves with; raises typed errors naming what is wrong."""
    profile = with_kv_type(resolve_profile(settings.profile), settings.kv_type)  # EDGEFLEET_KV_TYPE, else its own
    db = open_node_db(settings.data_dir / "node.db") if settings.mqtt_url else None
    models = BaseModels(db) if db is not None else None

    def own() -> ModelFile:
        return resolve_model(settings.model or profile.model.preferred, settings.data_dir)

    def build(model_file: ModelFile, check: bool) -> Node:
        return _build(settings, profile, model_file, check, db, models)

    node, switching = choose_and_build(models, own, build)
    node.models, node.switching = models, switching
    if node.agent is not None:
        node.agent.request_switch = node.request_restart
    return node


def _build(
    settings: NodeSettings,
    profile: FirmwareProfile,
    model_file: ModelFile,
    check: bool,
    db: sqlite_utils.Database | None,
    models: BaseModels | None,
) -> Node:
    model = LoadedModel(model_file.path, profile.compute.gpu_layers)
    try:
        memory = estimate_memory_bytes(profile, model_file.size, model.meta.kv_bytes_per_token())
        log.info(
            "model loaded",
            extra={
                "model": model_file.name,
                "path": str(model_file.path),
                "quantization": model.meta.quantization,
                "architecture": model.meta.architecture,
                "size_bytes": model_file.size,
                "sha256": model_file.sha256,
            },
        )
        log.info(
            "memory estimate",
            extra={
                "profile": profile.name,
                "model": _mib(memory["model"]),
                "kv_cache": _mib(memory["kv_cache"]),
                "kv_type": profile.context.kv_type,
                "overhead": _mib(memory["overhead"]),
                "total": _mib(memory["total"]),
                "budget": _mib(memory["budget"]),
            },
        )
        if memory["total"] > memory["budget"]:
            raise OverBudget(
                f"profile {profile.name} allows {_mib(memory['budget'])} but this node needs "
                f"{_mib(memory['total'])}: model {_mib(memory['model'])} + KV cache {_mib(memory['kv_cache'])} "
                f"({profile.context.slots} slots x {profile.context.n_ctx} tokens) + overhead "
                f"{_mib(memory['overhead'])}; use fewer slots, a shorter context or a smaller model"
            )
        ctx = profile.context
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        wanted = settings.threads or profile.compute.threads
        threads = min(wanted, cores)
        if threads < wanted:  # more threads than cores: llama.cpp's spinning threads thrash
            log.warning("fewer cores than threads asked for", extra={"threads": threads, "asked": wanted})
        log.info("compute threads", extra={"threads": threads, "cores": cores})
        engine = Engine(
            model,
            EngineConfig(
                n_ctx_slot=ctx.n_ctx,
                slots=ctx.slots,
                n_batch=ctx.n_batch,
                queue_limit=ctx.queue_length,
                threads=threads,
                embed_n_ctx=settings.embed_n_ctx,
                prefix_cache=settings.prefix_cache,
                adapter_quantum=settings.adapter_quantum,
                adapt_threads=settings.adapt_threads,
                kv_type=ctx.kv_type,
                prefix_store_dir=settings.data_dir / "prefix_kv" if settings.prefix_store_mb else None,
                prefix_store_bytes=settings.prefix_store_mb * MiB,
                model_sha256=model_file.sha256,
            ),
            speculation=SpeculationPolicy(
                k=settings.speculation_draft,
                max_active=settings.speculation_max_active,
                step_cost=settings.speculation_step_cost,
            )
            if settings.speculation
            else None,
        )
        engine.start()
        if engine.kv_type != ctx.kv_type:  # llama.cpp refused q8_0: the estimate and status say f16
            profile = with_kv_type(profile, engine.kv_type)
            memory = estimate_memory_bytes(profile, model_file.size, model.meta.kv_bytes_per_token())
            log.warning(
                "KV cache type not available for this model: serving with f16",
                extra={"asked": ctx.kv_type, "kv_type": engine.kv_type, "kv_cache": _mib(memory["kv_cache"])},
            )
            if memory["total"] > memory["budget"]:
                engine.stop()
                raise OverBudget(
                    f"profile {profile.name} allows {_mib(memory['budget'])} but with an f16 KV cache (q8_0 "
                    f"is not available for this model) this node needs {_mib(memory['total'])}; use fewer "
                    "slots, a shorter context or a smaller model"
                )
        if check:
            try:
                answer = check_generation(engine, model, settings.model_check_timeout_s)
            except BaseException:
                engine.stop()
                raise
            log.info("model check passed", extra={"model": model_file.name, "answer": answer})
    except BaseException:
        model.close()
        raise
    zone = Path(settings.thermal_zone or profile.thermal.zone)
    thermal = ThermalGovernor(profile.thermal, zone)

    def stop_engine() -> None:
        engine.stop()
        model.close()

    adapter_manager = AdapterManager(engine, model_file.path, memory)
    for item in settings.adapters:
        name, sep, path = item.partition("=")
        if not sep:
            stop_engine()
            raise InvalidRequest(f"EDGEFLEET_ADAPTERS entry {item!r} must be name=path.gguf")
        try:
            adapter_manager.install(name.strip(), "local", Path(path.strip()))
        except (EdgefleetError, OSError) as e:
            stop_engine()
            raise ModelError(f"adapter {item!r} cannot be loaded: {e}") from e

    def knowledge(embed: Embed) -> KnowledgeService:
        return open_knowledge(settings, embed, model.meta.n_embd, model_file.sha256, profile)

    try:
        service = NodeService(
            settings,
            profile,
            model_file,
            model,
            engine,
            thermal,
            memory,
            adapter_manager=adapter_manager,
            open_knowledge=knowledge if settings.knowledge else None,
        )
    except (KnowledgeError, OSError) as e:
        stop_engine()
        raise ModelError(f"knowledge store {settings.data_dir / KNOWLEDGE_DB}: {e}") from e
    service.apply_thermal(thermal.poll())
    agent = None
    if settings.mqtt_url:
        key_path = settings.site_key_path()
        try:
            site_key = load_public_key(key_path) if key_path is not None else None
        except (OSError, ValueError) as e:
            Node(service, engine, model).close()
            raise ModelError(f"site public key {key_path} cannot be read: {e}") from e
        if site_key is None:
            log.warning("no site public key pinned: artifacts (adapters, knowledge) will be refused")
        assert db is not None
        store = DesiredStateStore(db)
        topics = Topics.for_site(settings.site, settings.topic_root)
        faults = NodeFaults(
            settings.node_id,
            topics.errors(settings.node_id),
            settings.data_dir,
            settings.disk_warn_mb * 1024 * 1024,
            settings.handler_retry_s,
        )
        sensors = SensorPlane(settings, service, topics, faults)
        keys = KeyRing(load_public_keys(settings.site_key_paths()))
        agents = AgentRunner(settings, service, topics, faults, keys) if settings.agents else None
        agent = ControlAgent(settings, service, store, site_key, sensors, faults, keys, agents, models)
    return Node(service, engine, model, agent)
