"""Conveyor on several hosts: web, two workers and beat in separate network namespaces."""
