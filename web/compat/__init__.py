"""Adapters for the clients of the backends Conveyor replaces (/work/shared/seeds): each answers
at the documented paths in the documented shapes and calls the same domain code as Conveyor's own
API. Seed 002's token exchange is `web/identity.py`."""
