"""The Python SDK over the REST API: ``CloudpilotClient``, its errors, and reading job files."""

from cloudpilot.client.client import CloudpilotClient
from cloudpilot.client.errors import (
    ClientError,
    ConflictError,
    Forbidden,
    InvalidRequest,
    JobFileError,
    NotFound,
    ServerUnavailable,
    TooLarge,
    Unauthenticated,
    UnsafeArchive,
    WaitTimedOut,
)
from cloudpilot.client.jobfile import load_job_file

__all__ = [
    "ClientError",
    "CloudpilotClient",
    "ConflictError",
    "Forbidden",
    "InvalidRequest",
    "JobFileError",
    "NotFound",
    "ServerUnavailable",
    "TooLarge",
    "Unauthenticated",
    "UnsafeArchive",
    "WaitTimedOut",
    "load_job_file",
]
