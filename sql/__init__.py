"""Conveyor's SQL migrations, shipped as package data (conveyor.migrate reads them)."""
