"""Stores the suite runs against: a local directory and `memory://` always;
moto (`SHOAL_TEST_S3_ENDPOINT`) and SeaweedFS (`SHOAL_SEAWEED_PORT`) when
their servers are up (scripts/test.sh starts both). Without them the S3
cases skip, except under CI, where a missing server fails them (a suite
that can pass by skipping proves nothing)."""
from __future__ import annotations

import os
import uuid
from typing import Dict, Iterator, NamedTuple, Optional

import pytest


class Store(NamedTuple):
    name: str
    url: str
    #: Environment the engine (and child processes) need for this store.
    env: Dict[str, str]
    #: Whether another process sees the same objects.
    shared: bool


def _s3_endpoint(name: str) -> Optional[str]:
    if name == "moto":
        return os.environ.get("SHOAL_TEST_S3_ENDPOINT") or None
    port = os.environ.get("SHOAL_SEAWEED_PORT")
    return f"http://127.0.0.1:{port}" if port else None


def _s3_store(name: str) -> Store:
    endpoint = _s3_endpoint(name)
    if endpoint is None:
        what = "SHOAL_TEST_S3_ENDPOINT" if name == "moto" else "SHOAL_SEAWEED_PORT"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {what} is not: the {name} S3 tests cannot run")
        pytest.skip(f"{what} not set: no {name} S3 server (scripts/test.sh starts one)")
    import boto3

    bucket = f"shoal-py-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    env = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "SHOAL_S3_PATH_STYLE": "1",
    }
    return Store(name, f"s3://{bucket}/index", env, True)


@pytest.fixture(params=["local", "memory", "moto", "seaweedfs"])
def store(request: pytest.FixtureRequest, tmp_path: "os.PathLike[str]",
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    name = request.param
    if name == "local":
        s = Store(name, os.path.join(os.fspath(tmp_path), "index"), {}, True)
    elif name == "memory":
        s = Store(name, f"memory://py-{uuid.uuid4().hex[:12]}", {}, False)
    else:
        s = _s3_store(name)
    for k, v in s.env.items():
        monkeypatch.setenv(k, v)
    yield s
