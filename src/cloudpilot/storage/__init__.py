"""Sandboxes and job outputs behind a small interface."""
