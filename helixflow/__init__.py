"""helixflow: an orchestrated genomics data platform (Prefect 3 + Ray)."""

__version__ = "0.1.0"
