"""cloudpilot: scientific batch workloads on clouds without a batch system."""

__version__ = "0.1.0"
