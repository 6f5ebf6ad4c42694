"""Deployment definitions and helpers (see prefect.yaml at the repository root)."""
