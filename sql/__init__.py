"""Conveyor's SQL migrations, shipped as package data (conveyor.ops.migrations reads them)."""
