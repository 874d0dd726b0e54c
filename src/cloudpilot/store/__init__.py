"""Persistence: SQLAlchemy Core tables behind small repositories, on SQLite (WAL) or PostgreSQL."""
