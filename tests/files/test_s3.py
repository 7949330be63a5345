"""The ``objects`` placement on ``s3://``, against moto's S3 server on loopback."""

from __future__ import annotations

import boto3
import pytest

from tests.files.support import Deployment, image_bytes, multipart
from tests.support import register_and_login, share_login, unique

BUCKET = "statelab-test"


async def test_s3_objects_are_shared_by_replicas(
    deployment: Deployment, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    url = f"s3://{BUCKET}/uploads"
    r1 = await deployment.replica("r1", object_store_url=url, max_upload_bytes=8 * 1024 * 1024)
    r2 = await deployment.replica("r2", object_store_url=url)
    headers = await register_and_login(r1, unique("sam"))

    # Larger than one 5 MiB part: a real multipart upload.
    data = image_bytes("PNG") + bytes(range(256)) * (6 * 4096)
    form, body = multipart("big.png", [data[i : i + 65536] for i in range(0, len(data), 65536)])
    r = await r1.post("/api/files", content=body, headers={**headers, **form})
    assert r.status_code == 201, r.text
    file_id = r.json()["id"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("uploads/")
    assert s3.head_object(Bucket=BUCKET, Key=keys[0])["ContentLength"] == len(data)

    share_login(r1, r2)
    got = await r2.get(f"/api/files/{file_id}")
    assert got.status_code == 200 and got.content == data

    assert (await r2.delete(f"/api/files/{file_id}", headers=headers)).status_code == 204
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert (await r1.get(f"/api/files/{file_id}")).status_code == 404
