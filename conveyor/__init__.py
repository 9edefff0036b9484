"""Conveyor's domain: settings, database, runs, agents, events, auth, CLI. No Flask, no Celery."""
