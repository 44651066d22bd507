"""balena's API through balena-sdk: the fleet's devices in, device environment variables out.

The token is balena-sdk's own: BALENA_API_KEY, else the one `balena login` stored in balena's config
(~/.balena/balena.cfg). It is never logged or printed. 429 answers are retried with backoff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import balena
from balena import exceptions as balena_errors

from edgefleet.fleet.balena.plan import Device

T = TypeVar("T")
DEVICE_OPTIONS: dict[str, Any] = {
    "$select": ["id", "uuid", "device_name", "is_online", "os_version"],
    "$expand": {
        "is_of__device_type": {"$select": "slug"},
        "is_running__release": {"$select": "commit"},
        "device_tag": {"$select": ["tag_key", "value"]},
        "device_environment_variable": {"$select": ["name", "value"]},
    },
}


class BalenaSyncError(Exception):
    """A problem the operator can fix: no token, a refused token, an unknown fleet, an API failure."""


def make_sdk(api_url: str | None) -> balena.Balena:
    """The SDK with balena's own settings, or in memory pointed at `api_url` (openBalena, a stand-in)."""
    if not api_url:
        return balena.Balena()
    from balena.auth import Auth
    from balena.logs import Logs
    from balena.models import Models
    from balena.pine import PineClient

    sdk = balena.Balena({"data_directory": False})
    sdk.settings.set("api_endpoint", api_url.rstrip("/") + "/")
    # The SDK derives its endpoints at construction: build its parts again on the new one.
    sdk.pine = PineClient(sdk.settings, balena.__version__)
    sdk.logs = Logs(sdk.pine, sdk.settings)
    sdk.auth = Auth(sdk.pine, sdk.settings)
    sdk.models = Models(sdk.pine, sdk.settings)
    return sdk


class BalenaFleet:
    def __init__(self, sdk: balena.Balena, retries: int = 5, backoff_s: float = 0.5) -> None:
        self.sdk, self.retries, self.backoff_s = sdk, retries, backoff_s
        # BALENA_API_KEY is balena-sdk's own variable (the SDK reads it itself), not an edgefleet setting:
        # read here only to say early that there is no token, instead of a 401 on the first call.
        if not sdk.auth.get_token() and not os.environ.get("BALENA_API_KEY"):
            raise BalenaSyncError("no balena token: set BALENA_API_KEY to an API key (or run `balena login`)")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except balena_errors.RequestError as e:
                status = getattr(e, "status_code", None)
                if status == 429 and attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if status == 401:
                    raise BalenaSyncError(
                        f"balena refused the token while {what} (401): set BALENA_API_KEY to a valid API key"
                    ) from None
                if status == 429:
                    raise BalenaSyncError(
                        f"balena kept rate-limiting {what} (429) after {self.retries} retries"
                    ) from None
                raise BalenaSyncError(f"balena answered {status} while {what}") from None
            except balena_errors.ApplicationNotFound:
                raise BalenaSyncError(
                    f"no balena fleet {what.split()[-1]}: give its slug (org/name), uuid or id"
                ) from None
            except OSError as e:  # requests' ConnectionError is one
                raise BalenaSyncError(f"cannot reach balena's API while {what}: {type(e).__name__}") from None
        raise AssertionError("unreachable")

    def devices(self, fleet: str) -> list[Device]:
        rows = self._call(
            f"listing the devices of {fleet}",
            lambda: self.sdk.models.device.get_all_by_application(fleet, DEVICE_OPTIONS),
        )
        return [Device.from_pine(r) for r in rows]

    def set_env(self, device: Device, name: str, value: str) -> None:
        self._call(
            f"setting {name} on {device.name}", lambda: self.sdk.models.device.env_var.set(device.id, name, value)
        )
