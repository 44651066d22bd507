"""The orchestrator's front door: one address for the whole site.

```
gRPC (edgefleet.v1.Inference) ─┐
OpenAI HTTP (aiohttp)         ─┼─> dispatcher ─> admission (bounded buffer) ─> router (pure) ─> node gRPC
                               │        └─ failover before the first token, cooldowns, metrics
```
Everything here runs on one asyncio loop in its own thread (`server.FrontDoor`), beside the
orchestrator's MQTT threads; it reads the fleet view's immutable snapshots and nothing else.
"""
