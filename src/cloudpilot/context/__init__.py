"""Contextualization: the user-data that configures a VM and starts its pilot, and reading it back.

``build_user_data`` writes it, ``parse_cloud_config`` reads it (the ``local`` driver boots from it), and
``redact`` hides the pilot token in text that leaves the process. See ``docs/contextualization.md``.
"""

from cloudpilot.context.errors import ContextError, InvalidContext, InvalidUserData, UserDataTooLarge
from cloudpilot.context.parse import parse_cloud_config
from cloudpilot.context.redact import redact
from cloudpilot.context.userdata import (
    CA_FILE,
    CONFIG_FILE,
    ENV_FILE,
    MAX_USER_DATA_BYTES,
    PILOT_WORKDIR,
    PILOT_ZIPAPP,
    PILOT_ZIPAPP_ROUTE,
    TOKEN_FILE,
    VM_ROOT_VAR,
    PilotContext,
    UserDataPart,
    build_user_data,
    cloud_config_of,
)

__all__ = [
    "CA_FILE",
    "CONFIG_FILE",
    "ENV_FILE",
    "MAX_USER_DATA_BYTES",
    "PILOT_WORKDIR",
    "PILOT_ZIPAPP",
    "PILOT_ZIPAPP_ROUTE",
    "TOKEN_FILE",
    "VM_ROOT_VAR",
    "ContextError",
    "InvalidContext",
    "InvalidUserData",
    "PilotContext",
    "UserDataPart",
    "UserDataTooLarge",
    "build_user_data",
    "cloud_config_of",
    "parse_cloud_config",
    "redact",
]
