"""Use cases and long-running loops. Each loop has ``tick(now)``; the server schedules it, tests call it."""
