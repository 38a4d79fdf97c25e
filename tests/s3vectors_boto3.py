#!/usr/bin/env python3
"""The S3 Vectors API of `shoal serve --s3vectors`, driven by boto3's own
`s3vectors` client (pinned in localstack/s3-server.sh's venv).

Runs the same scenario once per store: a local directory, and each S3
test server that is up (moto at SHOAL_TEST_S3_ENDPOINT, SeaweedFS at
127.0.0.1:SHOAL_SEAWEED_PORT, LocalStack at 127.0.0.1:SHOAL_LOCALSTACK_PORT).
Each run starts its own `shoal serve` on a free loopback port and stops it
at the end.

    localstack/.venv/bin/python tests/s3vectors_boto3.py

(scripts/test.sh runs it with all three servers started.)
"""
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import boto3
import botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from support import free_port, shoal_binary  # noqa: E402

ACCESS, SECRET = "shoal-test", "s3cr3t-for-tests"
DIM = 8


class Server:
    """`shoal serve --s3vectors` on a free loopback port."""

    def __init__(self, binary, bucket, extra_env):
        self.port = free_port()
        env = dict(os.environ, SHOAL_S3V_CREDENTIALS=f"{ACCESS}:{SECRET}", **extra_env)
        env.pop("SHOAL_API_KEY", None)
        self.log = tempfile.NamedTemporaryFile(prefix="shoal-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary, "--bucket", bucket, "serve", "--s3vectors", "--listen", f"127.0.0.1:{self.port}",
             "--compact-every", "0"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"shoal serve exited:\n{self.output()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise SystemExit(f"shoal serve did not answer within 60 s:\n{self.output()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def client(url, secret=SECRET):
    return boto3.client(
        "s3vectors", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=ACCESS, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def error_code(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{call.__name__} succeeded but should have failed")


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def cosine_distance(a, b):
    return 1.0 - sum(x * y for x, y in zip(unit(a), unit(b)))


def euclidean(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def exact_top(vectors, q, k, dist, keep=lambda key: True):
    ranked = sorted((dist(v, q), key) for key, v in vectors.items() if keep(key))
    return [key for _, key in ranked[:k]]


def signed_post(url, operation, body):
    """A SigV4-signed POST botocore would send, for operations it does not know."""
    req = AWSRequest(method="POST", url=f"{url}/{operation}", data=json.dumps(body),
                     headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(ACCESS, SECRET), "s3vectors", "us-east-1").add_auth(req)
    r = urllib.request.Request(req.url, data=req.body, method="POST", headers=dict(req.headers))
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.headers, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"{}")


def scenario(url, label, local_dir=None, index_now=None):
    s3v = client(url)
    rng = random.Random(7)
    bucket = f"vb-{uuid.uuid4().hex[:10]}"

    # Buckets: create, duplicate, get, list with paging.
    arn = s3v.create_vector_bucket(vectorBucketName=bucket)["vectorBucketArn"]
    assert arn.endswith(f":bucket/{bucket}"), arn
    assert error_code(s3v.create_vector_bucket, vectorBucketName=bucket) == ("ConflictException", 409)
    got = s3v.get_vector_bucket(vectorBucketName=bucket)["vectorBucket"]
    assert got["vectorBucketName"] == bucket and got["vectorBucketArn"] == arn
    other = bucket + "-b"
    s3v.create_vector_bucket(vectorBucketName=other)
    seen, token = [], None
    while True:
        kw = {"maxResults": 1, "prefix": bucket}
        if token:
            kw["nextToken"] = token
        page = s3v.list_vector_buckets(**kw)
        assert len(page["vectorBuckets"]) <= 1
        seen += [b["vectorBucketName"] for b in page["vectorBuckets"]]
        token = page.get("nextToken")
        if not token:
            break
    assert seen == [bucket, other], seen
    assert error_code(s3v.get_vector_bucket, vectorBucketName="no-such-bucket") == ("NotFoundException", 404)

    # Indexes: cosine and euclidean, duplicate, get, list.
    s3v.create_index(vectorBucketName=bucket, indexName="docs", dataType="float32",
                     dimension=DIM, distanceMetric="cosine")
    s3v.create_index(vectorBucketName=bucket, indexName="points", dataType="float32",
                     dimension=DIM, distanceMetric="euclidean",
                     metadataConfiguration={"nonFilterableMetadataKeys": ["body"]})
    assert error_code(s3v.create_index, vectorBucketName=bucket, indexName="docs", dataType="float32",
                      dimension=DIM, distanceMetric="cosine") == ("ConflictException", 409)
    assert error_code(s3v.create_index, vectorBucketName=bucket, indexName="big", dataType="float32",
                      dimension=5000, distanceMetric="cosine")[0] == "ValidationException"
    index = s3v.get_index(vectorBucketName=bucket, indexName="points")["index"]
    assert (index["dimension"], index["distanceMetric"], index["dataType"]) == (DIM, "euclidean", "float32")
    assert index["metadataConfiguration"]["nonFilterableMetadataKeys"] == ["body"]
    by_arn = s3v.get_index(indexArn=index["indexArn"])["index"]
    assert by_arn["indexName"] == "points"
    names = [i["indexName"] for i in s3v.list_indexes(vectorBucketName=bucket)["indexes"]]
    assert names == ["docs", "points"], names

    # Put 300 vectors with metadata, in batches.
    genres = ["drama", "comedy", "documentary"]
    vectors, metas = {}, {}
    for i in range(300):
        key = f"doc-{i:04d}"
        vectors[key] = [rng.uniform(-1, 1) for _ in range(DIM)]
        metas[key] = {"genre": genres[i % 3], "year": 1990 + i % 30,
                      "tags": ["x", "y"] if i % 5 == 0 else ["y"], "domain": f"d{i % 2}",
                      "body": f"text of {key}"}
    items = [{"key": k, "data": {"float32": v}, "metadata": metas[k]} for k, v in vectors.items()]
    for name in ("docs", "points"):
        for start in range(0, len(items), 100):
            s3v.put_vectors(vectorBucketName=bucket, indexName=name, vectors=items[start:start + 100])

    # A wrong dimension: ValidationException, and nothing of the batch is written.
    bad = [{"key": "new-ok", "data": {"float32": [0.5] * DIM}},
           {"key": "new-bad", "data": {"float32": [0.5] * (DIM + 1)}}]
    assert error_code(s3v.put_vectors, vectorBucketName=bucket, indexName="docs",
                      vectors=bad)[0] == "ValidationException"
    assert s3v.get_vectors(vectorBucketName=bucket, indexName="docs", keys=["new-ok"])["vectors"] == []
    assert error_code(s3v.query_vectors, vectorBucketName=bucket, indexName="docs", topK=3,
                      queryVector={"float32": [1.0] * (DIM - 1)})[0] == "ValidationException"
    assert error_code(s3v.query_vectors, vectorBucketName=bucket, indexName="nope", topK=3,
                      queryVector={"float32": [1.0] * DIM}) == ("NotFoundException", 404)

    # Queries against exact search, with and without filters.
    queries = [[rng.uniform(-1, 1) for _ in range(DIM)] for _ in range(10)]
    checks = 0
    for name, dist in (("docs", cosine_distance), ("points", euclidean)):
        for q in queries:
            out = s3v.query_vectors(vectorBucketName=bucket, indexName=name, topK=10,
                                    queryVector={"float32": q}, returnDistance=True, returnMetadata=True)
            assert out["distanceMetric"] == ("cosine" if name == "docs" else "euclidean")
            keys = [v["key"] for v in out["vectors"]]
            assert keys == exact_top(vectors, q, 10, dist), (name, keys)
            for v in out["vectors"]:
                assert abs(v["distance"] - dist(vectors[v["key"]], q)) < 1e-4, v
                assert v["metadata"] == metas[v["key"]], (v["metadata"], metas[v["key"]])
            checks += 1
            flt = {"$and": [{"genre": {"$in": ["drama", "comedy"]}}, {"year": {"$gte": 2005}}, {"tags": "x"}]}
            keep = lambda k: (metas[k]["genre"] in ("drama", "comedy") and metas[k]["year"] >= 2005
                              and "x" in metas[k]["tags"])
            out = s3v.query_vectors(vectorBucketName=bucket, indexName=name, topK=5,
                                    queryVector={"float32": q}, filter=flt)
            want = exact_top(vectors, q, 5, dist, keep)
            assert want, "the filter must match something for this check to mean anything"
            assert [v["key"] for v in out["vectors"]] == want, (name, out["vectors"], want)
            assert all("distance" not in v and "metadata" not in v for v in out["vectors"])
            # A user key named `domain` filters like any other.
            out = s3v.query_vectors(vectorBucketName=bucket, indexName=name, topK=5,
                                    queryVector={"float32": q}, filter={"domain": "d1"})
            assert [v["key"] for v in out["vectors"]] == exact_top(
                vectors, q, 5, dist, lambda k: metas[k]["domain"] == "d1")
            checks += 2
    assert checks == 60
    assert error_code(s3v.query_vectors, vectorBucketName=bucket, indexName="points", topK=3,
                      queryVector={"float32": queries[0]}, filter={"body": "x"})[0] == "ValidationException"

    # Get: data and metadata as stored; missing keys are left out.
    got = s3v.get_vectors(vectorBucketName=bucket, indexName="points", keys=["doc-0001", "missing"],
                          returnData=True, returnMetadata=True)["vectors"]
    assert [v["key"] for v in got] == ["doc-0001"]
    assert all(abs(a - b) < 1e-6 for a, b in zip(got[0]["data"]["float32"], vectors["doc-0001"]))
    assert got[0]["metadata"] == metas["doc-0001"]

    # List: pages, and parallel segments that partition the keys.
    listed, token, pages = [], None, 0
    while True:
        kw = {"vectorBucketName": bucket, "indexName": "docs", "maxResults": 70}
        if token:
            kw["nextToken"] = token
        page = s3v.list_vectors(**kw)
        assert len(page["vectors"]) <= 70
        listed += [v["key"] for v in page["vectors"]]
        pages += 1
        token = page.get("nextToken")
        if not token:
            break
    assert sorted(listed) == sorted(vectors) and len(listed) == len(set(listed)), len(listed)
    assert pages >= 5, pages
    segments = []
    for i in range(3):
        page = s3v.list_vectors(vectorBucketName=bucket, indexName="docs", segmentCount=3,
                                segmentIndex=i, maxResults=1000, returnMetadata=True)
        assert "nextToken" not in page
        assert all(v["metadata"] == metas[v["key"]] for v in page["vectors"])
        segments.append({v["key"] for v in page["vectors"]})
    assert set.union(*segments) == set(vectors) and sum(map(len, segments)) == len(vectors)
    assert all(segments), "every segment holds some keys"

    # Delete vectors: gone from get, query and list.
    gone = [f"doc-{i:04d}" for i in range(0, 300, 3)]
    s3v.delete_vectors(vectorBucketName=bucket, indexName="docs", keys=gone)
    assert s3v.get_vectors(vectorBucketName=bucket, indexName="docs", keys=gone[:50])["vectors"] == []
    alive = {k: v for k, v in vectors.items() if k not in set(gone)}
    out = s3v.query_vectors(vectorBucketName=bucket, indexName="docs", topK=20,
                            queryVector={"float32": queries[0]})
    assert [v["key"] for v in out["vectors"]] == exact_top(alive, queries[0], 20, cosine_distance)
    page = s3v.list_vectors(vectorBucketName=bucket, indexName="docs", maxResults=1000)
    assert sorted(v["key"] for v in page["vectors"]) == sorted(alive)

    # Authentication: a wrong secret, and an unsigned request, are refused
    # and write nothing.
    intruder = client(url, secret="wrong")
    code = error_code(intruder.create_vector_bucket, vectorBucketName="intruder-bucket")
    assert code == ("InvalidSignatureException", 403), code
    req = urllib.request.Request(f"{url}/CreateVectorBucket", method="POST",
                                 data=b'{"vectorBucketName": "intruder-bucket"}',
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req)
        raise AssertionError("an unsigned request was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 403 and e.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    names = [b["vectorBucketName"] for b in s3v.list_vector_buckets()["vectorBuckets"]]
    assert "intruder-bucket" not in names, names

    # An operation S3 Vectors does not have: the AWS-shaped error.
    status, headers, body = signed_post(url, "FrobnicateVectors", {})
    assert status == 404 and body["__type"] == "UnknownOperationException", (status, body)
    assert headers.get("x-amzn-ErrorType") == "UnknownOperationException", headers

    text_search(s3v, bucket, index_now)

    # Delete: a bucket with indexes refuses; indexes go, then the bucket.
    assert error_code(s3v.delete_vector_bucket, vectorBucketName=bucket) == ("ConflictException", 409)
    for name in ("docs", "points"):
        s3v.delete_index(vectorBucketName=bucket, indexName=name)
    assert error_code(s3v.get_index, vectorBucketName=bucket, indexName="docs") == ("NotFoundException", 404)
    assert error_code(s3v.delete_index, vectorBucketName=bucket, indexName="docs") == ("NotFoundException", 404)
    assert s3v.list_indexes(vectorBucketName=bucket)["indexes"] == []
    if local_dir:
        # Only each deleted incarnation's tombstone config stays.
        top = os.path.join(local_dir, bucket)
        left = sorted(os.path.relpath(os.path.join(d, f), top) for d, _, fs in os.walk(top) for f in fs)
        assert [p.split("@")[0] for p in left] == ["docs", "points", "texts"], left
        assert all(p.endswith("/_brainy/config.json") for p in left), left
    # The name is free again, and the new index starts empty.
    s3v.create_index(vectorBucketName=bucket, indexName="docs", dataType="float32",
                     dimension=DIM, distanceMetric="cosine")
    assert s3v.list_vectors(vectorBucketName=bucket, indexName="docs")["vectors"] == []
    s3v.delete_index(vectorBucketName=bucket, indexName="docs")
    s3v.delete_vector_bucket(vectorBucketName=bucket)
    s3v.delete_vector_bucket(vectorBucketName=other)
    assert error_code(s3v.get_vector_bucket, vectorBucketName=bucket) == ("NotFoundException", 404)
    print(f"s3vectors boto3 scenario passed on {label}")


def text_search(s3v, bucket, index_now):
    """Full-text and hybrid search (issue 31) with boto3's own shapes:
    textSearchConfigurations, queryTexts, returnScores, hybrid RRF,
    UpdateMetadataConfiguration's backfill (BUILDING, then ACTIVE once
    `index_now` has run the indexer), index modes and $startsWith."""
    s3v.create_index(vectorBucketName=bucket, indexName="texts", dataType="float32", dimension=2,
                     distanceMetric="euclidean",
                     metadataConfiguration={"textSearchConfigurations": [
                         {"metadataKey": "body", "language": "en"}]})
    got = s3v.get_index(vectorBucketName=bucket, indexName="texts")["index"]
    assert got["indexMode"] == "ENHANCED", got
    assert got["metadataConfiguration"]["textSearchConfigurations"] == [
        {"metadataKey": "body", "language": "en", "status": "ACTIVE"}], got
    docs = [("ini", [1.0, 0.0], "Small INI library for Python 3", "python3-iniconfig"),
            ("toml", [0.9, 0.1], "TOML parsing library for Python", "python3-toml"),
            ("yaml", [0.0, 1.0], "YAML parser and emitter", "python3-yaml"),
            ("rust", [0.1, 0.9], "Rust compiler", "rustc")]
    s3v.put_vectors(vectorBucketName=bucket, indexName="texts", vectors=[
        {"key": k, "data": {"float32": v}, "metadata": {"body": b, "name": n}} for k, v, b, n in docs])
    out = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=3, returnScores=True,
                            queryTexts=[{"metadataKey": "body", "text": "python libraries"}])
    assert [v["key"] for v in out["vectors"]] == ["toml", "ini"], out["vectors"]
    bm25 = out["vectors"][0]["scores"]["bm25Scores"]
    assert bm25[0]["metadataKey"] == "body" and bm25[0]["score"] > 0, bm25
    assert "fused" not in out["vectors"][0]["scores"], out["vectors"][0]
    # nextToken pages through the same ranking.
    first = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=1,
                              queryTexts=[{"metadataKey": "body", "text": "python libraries"}])
    second = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=1,
                               nextToken=first["nextToken"],
                               queryTexts=[{"metadataKey": "body", "text": "python libraries"}])
    assert [first["vectors"][0]["key"], second["vectors"][0]["key"]] == ["toml", "ini"], (first, second)
    # name is not searchable yet; UpdateMetadataConfiguration makes it so.
    assert error_code(s3v.query_vectors, vectorBucketName=bucket, indexName="texts", topK=3,
                      queryTexts=[{"metadataKey": "name", "text": "python3-iniconfig"}]) == (
        "ValidationException", 400)
    # The rows go to index shards (the indexer, run as `shoal compact`),
    # so adding a key backfills: BUILDING until the indexer has rebuilt
    # them with its text index, answering all along.
    index_now(bucket, "texts")
    s3v.update_metadata_configuration(vectorBucketName=bucket, indexName="texts", add={
        "textSearchConfigurations": [{"metadataKey": "name"}]})

    def statuses():
        configs = s3v.get_index(vectorBucketName=bucket, indexName="texts")["index"][
            "metadataConfiguration"]["textSearchConfigurations"]
        return {c["metadataKey"]: c["status"] for c in configs}
    assert statuses() == {"body": "ACTIVE", "name": "BUILDING"}, statuses()
    by_name = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=2,
                                queryTexts=[{"metadataKey": "name", "text": "python3-iniconfig"}])
    assert [v["key"] for v in by_name["vectors"]][0] == "ini", by_name["vectors"]
    index_now(bucket, "texts")
    assert statuses() == {"body": "ACTIVE", "name": "ACTIVE"}, statuses()
    again = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=2,
                              queryTexts=[{"metadataKey": "name", "text": "python3-iniconfig"}])
    assert again["vectors"] == by_name["vectors"], (again["vectors"], by_name["vectors"])
    # Hybrid: the vector is nearest to yaml; the name query names ini.
    out = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=4, returnScores=True,
                            returnDistance=True, queryVector={"float32": [0.0, 1.0]},
                            queryTexts=[{"metadataKey": "name", "text": "python3-iniconfig"}])
    by_key = {v["key"]: v for v in out["vectors"]}
    fused = [v["scores"]["fused"] for v in out["vectors"]]
    assert fused == sorted(fused, reverse=True) and all(f > 0 for f in fused), out["vectors"]
    assert by_key["ini"]["scores"]["bm25Scores"][0]["metadataKey"] == "name", by_key["ini"]
    assert "vectorDistance" in by_key["yaml"]["scores"], by_key["yaml"]
    # $startsWith (ENHANCED indexes have it) narrows both lists.
    out = s3v.query_vectors(vectorBucketName=bucket, indexName="texts", topK=4,
                            queryVector={"float32": [0.0, 1.0]},
                            filter={"name": {"$startsWith": "python3-t"}})
    assert [v["key"] for v in out["vectors"]] == ["toml"], out["vectors"]
    s3v.update_index_mode(vectorBucketName=bucket, indexName="texts", indexMode="ENHANCED")
    assert error_code(s3v.update_index_mode, vectorBucketName=bucket, indexName="texts",
                      indexMode="CLASSIC") == ("ValidationException", 400)
    s3v.put_vector_bucket_default_index_mode(vectorBucketName=bucket, defaultIndexMode="ENHANCED")
    assert s3v.get_vector_bucket(vectorBucketName=bucket)["vectorBucket"]["defaultIndexMode"] == "ENHANCED"
    s3v.update_metadata_configuration(vectorBucketName=bucket, indexName="texts", delete={
        "textSearchConfigurations": [{"metadataKey": "name"}]})
    assert error_code(s3v.query_vectors, vectorBucketName=bucket, indexName="texts", topK=3,
                      queryTexts=[{"metadataKey": "name", "text": "rustc"}]) == ("ValidationException", 400)
    s3v.delete_index(vectorBucketName=bucket, indexName="texts")


def indexer(binary, root, env):
    """Runs the indexer (`shoal compact --force`) on the live incarnation of
    an index of the server at `root`: the one folder `<vector bucket>/
    <index>@<incarnation>` under it."""
    def index_now(vector_bucket, index):
        if root.startswith("s3://"):
            name, _, base = root[len("s3://"):].partition("/")
            s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
            listed = s3.list_objects_v2(Bucket=name, Prefix=f"{base}/{vector_bucket}/{index}@",
                                        Delimiter="/")
            found = [f"s3://{name}/{p['Prefix'].rstrip('/')}" for p in listed.get("CommonPrefixes", [])]
        else:
            found = [p for p in os.listdir(os.path.join(root, vector_bucket)) if p.startswith(index + "@")]
            found = [os.path.join(root, vector_bucket, p) for p in found]
        assert len(found) == 1, found
        out = subprocess.run([binary, "--bucket", found[0], "compact", "--force"],
                             env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    return index_now


def s3_bucket(endpoint):
    name = f"shoal-s3v-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket=name)
    return name


def main():
    binary = shoal_binary()
    runs = []
    local = tempfile.mkdtemp(prefix="shoal-s3v-")
    runs.append(("a local directory", local, {}, local))
    servers = []
    if os.environ.get("SHOAL_TEST_S3_ENDPOINT"):
        servers.append(("moto", os.environ["SHOAL_TEST_S3_ENDPOINT"]))
    if os.environ.get("SHOAL_SEAWEED_PORT"):
        servers.append(("SeaweedFS", f"http://127.0.0.1:{os.environ['SHOAL_SEAWEED_PORT']}"))
    if os.environ.get("SHOAL_LOCALSTACK_PORT"):
        servers.append(("LocalStack", f"http://127.0.0.1:{os.environ['SHOAL_LOCALSTACK_PORT']}"))
    if not servers and os.environ.get("CI"):
        raise SystemExit("no S3 test server configured "
                         "(SHOAL_TEST_S3_ENDPOINT / SHOAL_SEAWEED_PORT / SHOAL_LOCALSTACK_PORT)")
    for name, endpoint in servers:
        env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "SHOAL_S3_PATH_STYLE": "1"}
        runs.append((f"{name} ({endpoint})", f"s3://{s3_bucket(endpoint)}/vectors-root", env, None))
    try:
        for label, bucket, env, local_dir in runs:
            server = Server(binary, bucket, env)
            try:
                scenario(server.url, label, local_dir, indexer(binary, bucket, env))
            except BaseException:
                print(f"--- shoal serve output ({label}) ---\n{server.output()}", file=sys.stderr)
                raise
            finally:
                server.stop()
    finally:
        shutil.rmtree(local, ignore_errors=True)
    print(f"s3vectors boto3: {len(runs)} stores passed")


if __name__ == "__main__":
    main()
