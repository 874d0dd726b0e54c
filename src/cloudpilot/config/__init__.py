"""The YAML configuration, validated by pydantic models (every option is documented in docs/configuration.md)."""

from cloudpilot.config.models import (
    ConfigError,
    FairShareConfig,
    JobsConfig,
    LeaseConfig,
    MatcherConfig,
    ServerConfig,
    StorageConfig,
    VOConfig,
    load_config,
)

__all__ = [
    "ConfigError",
    "FairShareConfig",
    "JobsConfig",
    "LeaseConfig",
    "MatcherConfig",
    "ServerConfig",
    "StorageConfig",
    "VOConfig",
    "load_config",
]
