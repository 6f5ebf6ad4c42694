"""The application shell: the `helixflow` CLI, run launch and stop handling, the local
Prefect server, deployments, the S3-upload watcher and the demo data.

The top layer: it may import the core, blocks, tasks and flows; nothing imports it
(`tests/test_layers.py`).
"""
