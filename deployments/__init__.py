"""Deployment assets run from the checkout, not installed: the local Slurm cluster and
PostgreSQL scripts (and `deployments.postgres.LocalPostgres` for tests and benches).
Prefect deployments themselves are in prefect.yaml and `helixflow.app.deploy`."""
