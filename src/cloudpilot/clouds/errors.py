"""Errors of cloud drivers. Provider SDK errors are translated at the driver's boundary (``raise … from``).

    CloudError
    ├── Retryable                  try again later (the provisioner backs the cloud off)
    │   ├── CloudUnavailable       the API did not answer, answered 5xx, or rate-limited us
    │   └── QuotaExceeded          the cloud refuses more instances, cores or memory now
    └── Fatal                      retrying will not help until someone changes something
        ├── CloudAuthFailed        credentials refused
        ├── BootFailed             the instance was created but will never run (error state)
        └── CloudConfigError       unknown flavor, image, network… named in the message

Messages never contain user-data or credentials.
"""


class CloudError(Exception):
    def __init__(self, cloud: str, message: str) -> None:
        super().__init__(f"cloud {cloud}: {message}")
        self.cloud = cloud


class Retryable(CloudError):
    pass


class Fatal(CloudError):
    pass


class CloudUnavailable(Retryable):
    pass


class QuotaExceeded(Retryable):
    pass


class CloudAuthFailed(Fatal):
    pass


class BootFailed(Fatal):
    pass


class CloudConfigError(Fatal):
    pass
