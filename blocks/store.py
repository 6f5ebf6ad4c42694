"""The `HelixflowStore` block: where artifacts and results live, and how to reach it."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from pydantic import Field

from helixflow.settings import default_store_url
from helixflow.store import Store, s3_storage_options_from_env


class HelixflowStore(Block):
    """A helixflow store: a local folder or an S3 (or S3-compatible) prefix.

    Credentials come from the nested prefect-aws `AwsCredentials` block (secrets are
    `SecretStr` there and unwrapped only when the client is built); with none, from the
    standard AWS environment. `endpoint_url` selects an S3-compatible service.

    Example:
        ```python
        from prefect_aws import AwsCredentials
        from helixflow.blocks.store import HelixflowStore

        HelixflowStore(
            url="s3://genomics/helixflow",
            credentials=AwsCredentials.load("genomics-aws"),
            endpoint_url="http://127.0.0.1:5000",
        ).save("default")
        store = HelixflowStore.load("default").get_store()
        ```
    """

    _block_type_name = "helixflow store"
    _block_type_slug = "helixflow-store"
    _description = "Where helixflow publishes artifacts, lineage and task results."

    url: str = Field(
        default_factory=default_store_url,
        title="Store URL",
        description="file:///path, a local path, or s3://bucket/prefix.",
    )
    credentials: AwsCredentials | None = Field(
        default=None,
        title="AWS credentials",
        description="prefect-aws credentials for s3:// stores; default: the AWS environment.",
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description="S3-compatible endpoint (MinIO, moto, Ceph); overrides the credentials' one.",
    )

    def storage_options(self) -> dict[str, Any]:
        """s3fs options built from the block; secrets are unwrapped here only."""
        if not self.url.startswith("s3://"):
            return {}
        options = s3_storage_options_from_env()
        creds = self.credentials
        if creds is not None:
            if creds.aws_access_key_id:
                options["key"] = creds.aws_access_key_id
            if creds.aws_secret_access_key is not None:
                options["secret"] = creds.aws_secret_access_key.get_secret_value()
            if creds.aws_session_token:
                options["token"] = creds.aws_session_token
            if creds.region_name:
                options.setdefault("client_kwargs", {})["region_name"] = creds.region_name
            endpoint = creds.aws_client_parameters.endpoint_url
            if endpoint:
                options["endpoint_url"] = endpoint
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        return options

    def get_store(self) -> Store:
        return Store(self.url, self.storage_options())


def resolve_store(url: str | None = None, block: str | None = None) -> Store:
    """The store named by a saved block, else by URL, else the default local store; an
    S3 store whose bucket is missing or denied fails here, naming it, before any work."""
    if block:
        loaded = HelixflowStore.load(block)
        if url and url != loaded.url:
            loaded = loaded.model_copy(update={"url": url})
        store = loaded.get_store()
    else:
        store = Store(url or default_store_url())
    store.check_access()
    return store


def result_storage(store: Store) -> Any:
    """Where Prefect persists task results: inside the store.

    Results (and so cache entries) then live with the artifacts they describe and
    survive a worker crash or a new machine pointed at the same store. Prefect wants
    flow result storage saved server-side: a local store is given as a path; an S3 one
    as an `S3Bucket` block saved under a name derived from the store URL.
    """
    if store.scheme == "file":
        from pathlib import Path

        from helixflow.uris import local_path

        return Path(local_path(store.join("prefect-results")))
    if store.scheme == "s3":
        from prefect_aws import AwsClientParameters, S3Bucket

        bucket, _, prefix = store.url.removeprefix("s3://").partition("/")
        opts = store.storage_options
        creds = AwsCredentials(
            aws_access_key_id=opts.get("key"),
            aws_secret_access_key=opts.get("secret"),
            aws_session_token=opts.get("token"),
            region_name=opts.get("client_kwargs", {}).get("region_name"),
            aws_client_parameters=AwsClientParameters(endpoint_url=opts.get("endpoint_url")),
        )
        folder = f"{prefix}/prefect-results" if prefix else "prefect-results"
        block = S3Bucket(bucket_name=bucket, bucket_folder=folder, credentials=creds)
        name = "helixflow-results-" + hashlib.sha256(store.url.encode()).hexdigest()[:12]
        block.save(name, overwrite=True)
        return block
    raise ValueError(f"no Prefect result storage for {store.url}")
