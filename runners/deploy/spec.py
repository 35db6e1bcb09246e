"""The `deploy:` section of a job, parsed and checked before anything touches a cluster.

    deploy:
      namespace: shop
      deployment: web
      container: app              # optional when the pod template has a single container
      image: registry.example.com/shop/web:1f2e3d4c   # a tag or a digest, never a bare name
      strategy: rolling           # or blue-green
      service: web                # blue-green only: the Service whose selector picks the live colour
      smoke_test:
        url: http://web.shop.svc/healthz   # or command: ./smoke.sh
        timeout: 10s              # per attempt
        retries: 3                # attempts after the first
        interval: 2s              # pause between attempts
      rollout_timeout: 10m
      context: prod               # kubeconfig context; default: in-cluster config, else the current context

The runner expands `$VARIABLES` in the mapping before handing it here: this module sees final values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

COLOR_PLACEHOLDER = "{color}"

DEFAULT_ROLLOUT_TIMEOUT_S = 600.0
DEFAULT_SMOKE_TIMEOUT_S = 10.0
DEFAULT_SMOKE_RETRIES = 3
DEFAULT_SMOKE_INTERVAL_S = 2.0
# A Kubernetes client only accepts these; a longer wait is almost always a typo ("600m").
MAX_TIMEOUT_S = 24 * 3600.0
MAX_SMOKE_RETRIES = 100

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Service names are DNS-1035 labels: they must start with a letter.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")

# An image reference as the distribution/reference grammar spells it (without IPv6 registries).
_REGISTRY = r"(?:localhost(?::[0-9]+)?|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+)"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:{_REGISTRY}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


class Strategy(StrEnum):
    ROLLING = "rolling"
    BLUE_GREEN = "blue-green"


class DeploySpecError(ValueError):
    """A bad `deploy:` value. `key` is its path inside the section, e.g. "smoke_test:timeout"."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"deploy:{key}: {message}" if key else f"deploy: {message}")


@dataclass(frozen=True)
class SmokeTest:
    """One check of the new version: an HTTP GET that must answer 2xx, or a command that must exit 0.

    With blue-green, `{color}` in the URL or command is replaced by the colour under test (the idle
    one, before the switch), and commands also get it as $DEPLOY_COLOR."""

    url: str | None = None
    command: str | None = None
    timeout_s: float = DEFAULT_SMOKE_TIMEOUT_S
    retries: int = DEFAULT_SMOKE_RETRIES
    interval_s: float = DEFAULT_SMOKE_INTERVAL_S

    @property
    def attempts(self) -> int:
        return self.retries + 1


@dataclass(frozen=True)
class DeploySpec:
    namespace: str
    deployment: str
    image: str
    container: str | None = None
    strategy: Strategy = Strategy.ROLLING
    service: str | None = None
    smoke_test: SmokeTest | None = None
    rollout_timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S
    context: str | None = None


_KEYS = {
    "namespace",
    "deployment",
    "container",
    "image",
    "strategy",
    "service",
    "smoke_test",
    "rollout_timeout",
    "context",
}
_SMOKE_KEYS = {"url", "command", "timeout", "retries", "interval"}


def parse_deploy_spec(value: Any) -> DeploySpec:
    """The `deploy:` mapping as a DeploySpec, or a DeploySpecError naming the first bad key."""
    if not isinstance(value, Mapping):
        raise DeploySpecError("", f"must be a mapping of keys ({', '.join(sorted(_KEYS))}), got {_kind(value)}")
    _no_unknown_keys(value, _KEYS, prefix="")
    strategy_value = value.get("strategy", Strategy.ROLLING.value)
    if strategy_value not in {s.value for s in Strategy}:
        raise DeploySpecError("strategy", f"must be rolling or blue-green, got {strategy_value!r}")
    strategy = Strategy(strategy_value)
    spec = DeploySpec(
        namespace=_name(value, "namespace", _DNS_LABEL, 63, "a DNS label (lowercase letters, digits and '-')"),
        deployment=_name(
            value, "deployment", _DNS_SUBDOMAIN, 253, "a DNS subdomain (lowercase letters, digits, '-' and '.')"
        ),
        image=_image(value.get("image")),
        container=_name(
            value, "container", _DNS_LABEL, 63, "a DNS label (lowercase letters, digits and '-')", required=False
        ),
        strategy=strategy,
        service=_service(value, strategy),
        smoke_test=_smoke_test(value.get("smoke_test"), strategy) if value.get("smoke_test") is not None else None,
        rollout_timeout_s=_duration(
            value.get("rollout_timeout", DEFAULT_ROLLOUT_TIMEOUT_S), "rollout_timeout", allow_zero=False
        ),
        context=_optional_text(value, "context"),
    )
    return spec


def _no_unknown_keys(mapping: Mapping[str, Any], allowed: set[str], *, prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise DeploySpecError(f"{prefix}{key}", f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _name(
    mapping: Mapping[str, Any], key: str, pattern: re.Pattern[str], limit: int, shape: str, *, required: bool = True
) -> Any:
    value = mapping.get(key)
    if value is None:
        if required:
            raise DeploySpecError(key, "is required")
        return None
    if not isinstance(value, str) or not value:
        raise DeploySpecError(key, f"must be a non-empty string, got {_kind(value)}")
    if len(value) > limit or not pattern.match(value):
        raise DeploySpecError(key, f"{value!r} is not a valid name: it must be {shape}, at most {limit} characters")
    return value


def _image(value: Any) -> str:
    if value is None:
        raise DeploySpecError("image", "is required")
    if not isinstance(value, str) or not value:
        raise DeploySpecError("image", f"must be a non-empty string, got {_kind(value)}")
    match = _IMAGE.match(value)
    if match is None:
        raise DeploySpecError("image", f"{value!r} is not a valid image reference")
    if not match["tag"] and not match["digest"]:
        # Without one the cluster pulls whatever `latest` is at the time, and nothing can be
        # rolled back to, because nothing says what ran before.
        raise DeploySpecError(
            "image",
            f"{value!r} has no tag or digest: name the exact version (e.g. {value}:1.2.3 or {value}@sha256:...)",
        )
    return value


def _service(mapping: Mapping[str, Any], strategy: Strategy) -> str | None:
    if strategy is Strategy.ROLLING:
        if mapping.get("service") is not None:
            raise DeploySpecError("service", "only applies to strategy blue-green (a rolling update keeps its Service)")
        return None
    return _name(
        mapping,
        "service",
        _SERVICE_NAME,
        63,
        "a DNS-1035 label (a lowercase letter, then lowercase letters, digits and '-')",
    )


def _smoke_test(value: Any, strategy: Strategy) -> SmokeTest:
    if not isinstance(value, Mapping):
        raise DeploySpecError("smoke_test", f"must be a mapping with url or command, got {_kind(value)}")
    _no_unknown_keys(value, _SMOKE_KEYS, prefix="smoke_test:")
    url, command = value.get("url"), value.get("command")
    if (url is None) == (command is None):
        raise DeploySpecError("smoke_test", "needs exactly one of url or command")
    if url is not None:
        if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).netloc:
            raise DeploySpecError("smoke_test:url", f"must be an http:// or https:// URL, got {url!r}")
        if strategy is Strategy.BLUE_GREEN and COLOR_PLACEHOLDER not in url:
            # The smoke test runs before the switch: a URL that reaches the live Service would
            # test the old version and wave the new one through.
            raise DeploySpecError(
                "smoke_test:url",
                "must contain {color} with strategy blue-green: the test runs against the new colour before the "
                "Service switches (e.g. http://web-{color}.shop.svc/healthz)",
            )
        if strategy is Strategy.ROLLING and COLOR_PLACEHOLDER in url:
            raise DeploySpecError("smoke_test:url", "{color} only applies to blue-green (strategy: blue-green)")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise DeploySpecError("smoke_test:command", f"must be a non-empty string, got {_kind(command)}")
    retries = value.get("retries", DEFAULT_SMOKE_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_SMOKE_RETRIES:
        raise DeploySpecError(
            "smoke_test:retries", f"must be a whole number from 0 to {MAX_SMOKE_RETRIES}, got {retries!r}"
        )
    return SmokeTest(
        url=url,
        command=command,
        timeout_s=_duration(value.get("timeout", DEFAULT_SMOKE_TIMEOUT_S), "smoke_test:timeout", allow_zero=False),
        retries=retries,
        interval_s=_duration(value.get("interval", DEFAULT_SMOKE_INTERVAL_S), "smoke_test:interval", allow_zero=True),
    )


def _duration(value: Any, key: str, *, allow_zero: bool) -> float:
    """Seconds from a number (30, 0.5) or a string like "30", "90s", "5m" or "1h30m"."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if match is not None:
                seconds = sum(float(match[unit] or 0) * factor for unit, factor in (("h", 3600), ("m", 60), ("s", 1)))
    shape = 'like 30, "90s", "5m" or "1h30m"'
    if seconds is None or seconds != seconds:  # NaN is not a duration
        raise DeploySpecError(key, f"must be a duration ({shape}), got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise DeploySpecError(key, f"must be {'zero or more' if allow_zero else 'more than zero'}, got {value!r}")
    if seconds > MAX_TIMEOUT_S:
        raise DeploySpecError(key, f"must be at most 24h, got {value!r}")
    return seconds


def _optional_text(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DeploySpecError(key, f"must be a non-empty string, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return repr(value) if value else "an empty string"
    return f"{type(value).__name__} {value!r}"
