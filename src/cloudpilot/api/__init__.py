"""The REST API (FastAPI), one router module per resource."""
