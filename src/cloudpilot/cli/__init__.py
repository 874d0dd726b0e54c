"""The ``cloudpilot`` command."""
