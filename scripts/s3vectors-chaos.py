#!/usr/bin/env python3
"""Chaos run of the S3 Vectors index lifecycle (issue 28): two `shoal serve
--s3vectors` instances over one root on an S3-compatible server, clients
putting, querying and getting vectors while indexes of the same few names
are deleted and re-created (alternating metric), and each instance killed
with SIGKILL at random moments and restarted.

What it checks:
- no acknowledged vector of a live incarnation is lost: a put is counted
  when its request started and finished while no create or delete of its
  index was in flight and the index was live; before every deletion of
  that incarnation (and at the end) each counted vector must be found by
  `GetVectors` (strongly consistent);
- nothing comes back: vectors of earlier incarnations of a name are never
  found in a later one;
- no answer is a 500 from a running instance;
- at the end every index is usable (put, get, query), `shoal verify` is
  clean on every live incarnation, every index and the vector bucket can
  be deleted, and what is left under the root is only the catalog and one
  tombstone config per deleted incarnation.

    localstack/.venv/bin/python scripts/s3vectors-chaos.py --minutes 10 \\
        --endpoint http://127.0.0.1:5599

(start the S3 server first: `bash localstack/s3-server.sh start moto`;
`SHOAL_S3_PORT=5611` before it picks another port).
Prints the figures docs/reliability.md quotes; exits non-zero on any
violation.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support import free_port, shoal_binary  # noqa: E402

ACCESS, SECRET = "chaos", "chaos-secret"
DIM = 8
NAMES = ["alpha", "beta", "gamma"]
VBUCKET = "chaos-vb"


class Instance:
    """One `shoal serve --s3vectors` on a fixed loopback port, restartable."""

    def __init__(self, binary, root, env, label):
        self.binary, self.root, self.env, self.label = binary, root, env, label
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"shoal-chaos-{label}-", suffix=".log", delete=False)
        self.proc = None
        self.kills = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        # Both instances take writes (left to itself, the second instance
        # of an index may pick the reader role).
        env = dict(os.environ, SHOAL_S3V_CREDENTIALS=f"{ACCESS}:{SECRET}", BRAINY_ROLE="both", **self.env)
        env.pop("SHOAL_API_KEY", None)
        self.proc = subprocess.Popen(
            [self.binary, "--bucket", self.root, "serve", "--s3vectors",
             "--listen", f"127.0.0.1:{self.port}", "--partitions", "8",
             "--compact-every", "5"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited:\n{self.output()}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)
                return
            except Exception:
                time.sleep(0.1)
        raise SystemExit(f"{self.label} did not answer within 60 s")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(url):
    return boto3.client(
        "s3vectors", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=300))


class Name:
    """What the clients know of one index name."""

    def __init__(self):
        self.lock = threading.Lock()  # one create/delete at a time
        self.epoch = 0                # odd while a create or delete is in flight
        self.live = False
        self.acked = {}               # epoch -> keys whose put counts
        self.metric = "cosine"


class Chaos:
    def __init__(self, instances, seed):
        self.instances = instances
        self.rng = random.Random(seed)
        self.names = {n: Name() for n in NAMES}
        self.stop = threading.Event()
        self.stats = {"puts_acked": 0, "puts_counted": 0, "vectors_counted": 0, "puts_failed": 0,
                      "queries_ok": 0, "gets_ok": 0, "creates": 0, "deletes": 0,
                      "checked": 0, "lost": 0, "resurrected": 0, "server_errors": 0,
                      "unavailable": 0}
        self.errors = []
        self.mu = threading.Lock()

    def bump(self, key, n=1):
        with self.mu:
            self.stats[key] += n

    def fail(self, msg):
        with self.mu:
            self.errors.append(msg)
        print("VIOLATION:", msg, flush=True)

    def any_client(self):
        return client(self.rng.choice(self.instances).url)

    def note_error(self, e, what):
        """A 500 from a running instance is a violation; connection errors
        (an instance just killed), 4xx answers and 503s (the store was
        unavailable: retry) are expected."""
        if isinstance(e, ClientError):
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            if status == 503:
                self.bump("unavailable")
            elif status >= 500:
                self.bump("server_errors")
                self.fail(f"{what}: {status} {e.response['Error'].get('Message', '')[:300]}")

    def retrying(self, call, what, timeout=600):
        """`call(client)` on any instance until it answers (instances come
        back after a kill); returns its answer or raises its ClientError."""
        deadline = time.time() + timeout
        while True:
            try:
                return call(self.any_client())
            except ClientError as e:
                status = e.response["ResponseMetadata"]["HTTPStatusCode"]
                if status < 500 or time.time() > deadline:
                    raise
                self.note_error(e, what)
                time.sleep(0.5)
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    # --- the workload ---------------------------------------------------

    def writer(self, wid):
        rng = random.Random(wid)
        while not self.stop.is_set():
            name = rng.choice(NAMES)
            st = self.names[name]
            epoch, live = st.epoch, st.live
            keys = [f"{name}-{uuid.uuid4().hex[:16]}" for _ in range(rng.randint(1, 20))]
            vectors = [{"key": k, "data": {"float32": [rng.uniform(-1, 1) for _ in range(DIM)]},
                        "metadata": {"w": wid}} for k in keys]
            try:
                client(rng.choice(self.instances).url).put_vectors(
                    vectorBucketName=VBUCKET, indexName=name, vectors=vectors)
            except Exception as e:
                self.note_error(e, f"PutVectors {name}")
                self.bump("puts_failed")
                time.sleep(0.05)
                continue
            self.bump("puts_acked")
            if st.epoch == epoch and epoch % 2 == 0 and live:
                with self.mu:
                    st.acked.setdefault(epoch, []).extend(keys)
                    self.stats["puts_counted"] += 1
                    self.stats["vectors_counted"] += len(keys)

    def reader(self, rid):
        rng = random.Random(1000 + rid)
        while not self.stop.is_set():
            name = rng.choice(NAMES)
            c = client(rng.choice(self.instances).url)
            try:
                if rng.random() < 0.5:
                    c.query_vectors(vectorBucketName=VBUCKET, indexName=name, topK=5,
                                    queryVector={"float32": [rng.uniform(-1, 1) for _ in range(DIM)]})
                    self.bump("queries_ok")
                else:
                    c.list_vectors(vectorBucketName=VBUCKET, indexName=name, maxResults=50)
                    self.bump("gets_ok")
            except Exception as e:
                self.note_error(e, f"read {name}")
                time.sleep(0.05)

    def killer(self):
        rng = random.Random(7)
        while not self.stop.wait(rng.uniform(3, 12)):
            inst = rng.choice(self.instances)
            inst.kill()
            time.sleep(rng.uniform(0.2, 2.0))
            while True:
                try:
                    inst.start()
                    break
                except BaseException as e:  # noqa: BLE001 - keep killing, keep restarting
                    print(f"restarting {inst.label} failed ({e}); again", flush=True)
                    time.sleep(1)

    def lifecycle(self):
        rng = random.Random(11)
        while not self.stop.wait(rng.uniform(2, 8)):
            name = rng.choice(NAMES)
            st = self.names[name]
            with st.lock:
                try:
                    if st.live:
                        self.check(name)
                        self.transition(name, "delete")
                    if rng.random() < 0.8:
                        self.transition(name, "create")
                except Exception as e:  # noqa: BLE001 - the run goes on; the state is re-read
                    print(f"lifecycle of {name}: {e!r}; re-reading its state", flush=True)
                    self.resync(name)

    def resync(self, name):
        """After a create or delete whose outcome is unknown: whether the
        index is live now (a new epoch: nothing counted before is checked
        against it)."""
        st = self.names[name]
        st.epoch += 2 - st.epoch % 2
        try:
            self.retrying(lambda c: c.get_index(vectorBucketName=VBUCKET, indexName=name),
                          f"GetIndex {name}")
            st.live = True
        except ClientError:
            st.live = False

    def transition(self, name, what):
        """Create or delete `name`, retried until it takes (an instance
        killed mid-call leaves the work for the next call to finish)."""
        st = self.names[name]
        st.epoch += 1
        try:
            if what == "delete":
                try:
                    self.retrying(lambda c: c.delete_index(vectorBucketName=VBUCKET, indexName=name),
                                  f"DeleteIndex {name}")
                except ClientError as e:
                    if e.response["Error"]["Code"] != "NotFoundException":
                        raise
                st.live = False
                self.bump("deletes")
            else:
                st.metric = "euclidean" if st.metric == "cosine" else "cosine"
                try:
                    self.retrying(lambda c: c.create_index(
                        vectorBucketName=VBUCKET, indexName=name, dataType="float32",
                        dimension=DIM, distanceMetric=st.metric), f"CreateIndex {name}")
                except ClientError as e:
                    # A retry of a create whose answer was lost finds it made.
                    if e.response["Error"]["Code"] != "ConflictException":
                        raise
                got = self.retrying(lambda c: c.get_index(vectorBucketName=VBUCKET, indexName=name),
                                    f"GetIndex {name}")
                st.metric = got["index"]["distanceMetric"]
                st.live = True
                self.bump("creates")
        finally:
            st.epoch += 1

    def check(self, name):
        """Every counted vector of the live incarnation is found; no vector
        of an earlier incarnation is."""
        st = self.names[name]
        with self.mu:
            keys = list(st.acked.get(st.epoch, []))
            older = [k for e, ks in st.acked.items() if e < st.epoch for k in ks]
        found = set()
        for i in range(0, len(keys), 100):
            batch = keys[i:i + 100]
            got = self.retrying(lambda c: c.get_vectors(vectorBucketName=VBUCKET, indexName=name, keys=batch),
                                f"GetVectors {name}")
            found.update(v["key"] for v in got["vectors"])
        lost = [k for k in keys if k not in found]
        self.bump("checked", len(keys))
        if lost:
            self.bump("lost", len(lost))
            self.fail(f"{name} epoch {st.epoch}: {len(lost)} of {len(keys)} acknowledged vectors lost, e.g. {lost[:3]}")
        sample = random.sample(older, min(100, len(older)))
        if sample:
            got = self.retrying(lambda c: c.get_vectors(vectorBucketName=VBUCKET, indexName=name, keys=sample),
                                f"GetVectors {name} (old)")
            back = [v["key"] for v in got["vectors"]]
            if back:
                self.bump("resurrected", len(back))
                self.fail(f"{name} epoch {st.epoch}: vectors of a deleted incarnation came back: {back[:3]}")


def catalog(s3, bucket, prefix):
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/_s3vectors/catalog.json")["Body"].read()
    return json.loads(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--endpoint", default=os.environ.get("SHOAL_TEST_S3_ENDPOINT", "http://127.0.0.1:5599"))
    ap.add_argument("--binary", help="shoal binary (default: build the dev profile)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    binary = args.binary or shoal_binary()
    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket = f"shoal-chaos-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/root"
    env = {"AWS_ENDPOINT_URL_S3": args.endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "SHOAL_S3_PATH_STYLE": "1"}
    instances = [Instance(binary, root, env, "a"), Instance(binary, root, env, "b")]
    for i in instances:
        i.start()
    chaos = Chaos(instances, args.seed)
    client(instances[0].url).create_vector_bucket(vectorBucketName=VBUCKET)
    threads = [threading.Thread(target=chaos.writer, args=(w,), daemon=True) for w in range(4)]
    threads += [threading.Thread(target=chaos.reader, args=(r,), daemon=True) for r in range(2)]
    threads += [threading.Thread(target=chaos.killer, daemon=True),
                threading.Thread(target=chaos.lifecycle, daemon=True)]
    started = time.time()
    for t in threads:
        t.start()
    try:
        while time.time() - started < args.minutes * 60:
            time.sleep(10)
            print(f"[{time.time() - started:5.0f} s] {json.dumps(chaos.stats)}", flush=True)
        chaos.stop.set()
        for t in threads:
            t.join(timeout=120)
        for i in instances:
            if i.proc.poll() is not None:
                i.start()
        final = finish(chaos, s3, bucket, binary, env)
    finally:
        for i in instances:
            i.stop()
    stats = dict(chaos.stats, kills=sum(i.kills for i in instances),
                 minutes=round((time.time() - started) / 60, 1), **final)
    print("RESULT " + json.dumps(stats), flush=True)
    if chaos.errors:
        print(f"{len(chaos.errors)} violations", file=sys.stderr)
        for i in instances:
            print(f"--- {i.label} log tail ---\n{i.output()[-4000:]}", file=sys.stderr)
        sys.exit(1)


def finish(chaos, s3, bucket, binary, env):
    """The end state: every index usable and verified, everything deletable."""
    out = {}
    for name in NAMES:
        st = chaos.names[name]
        if st.epoch % 2:
            chaos.resync(name)
        if st.live:
            chaos.check(name)
        else:
            chaos.transition(name, "create")
        key = f"{name}-final"
        chaos.retrying(lambda c: c.put_vectors(vectorBucketName=VBUCKET, indexName=name, vectors=[
            {"key": key, "data": {"float32": [0.5] * DIM}}]), f"final put {name}")
        got = chaos.retrying(lambda c: c.get_vectors(vectorBucketName=VBUCKET, indexName=name, keys=[key]),
                             f"final get {name}")
        if [v["key"] for v in got["vectors"]] != [key]:
            chaos.fail(f"{name}: the final put is not found")
        q = chaos.retrying(lambda c: c.query_vectors(vectorBucketName=VBUCKET, indexName=name, topK=3,
                                                     queryVector={"float32": [0.5] * DIM}), f"final query {name}")
        if not q["vectors"]:
            chaos.fail(f"{name}: the final query found nothing")
    # `shoal verify` on each live incarnation.
    cat = catalog(s3, bucket, "root")
    verified = 0
    for name, e in cat["buckets"][VBUCKET]["indexes"].items():
        prefix = f"{VBUCKET}/{name}@{e['incarnation']}" if e.get("incarnation") else f"{VBUCKET}/{name}"
        r = subprocess.run([binary, "--bucket", f"s3://{bucket}/root/{prefix}", "verify"],
                           env=dict(os.environ, **env), capture_output=True, text=True)
        if r.returncode != 0:
            chaos.fail(f"verify {prefix}: {r.stdout[-1000:]} {r.stderr[-1000:]}")
        verified += 1
    out["verified_incarnations"] = verified
    for name in NAMES:
        chaos.transition(name, "delete")
    chaos.retrying(lambda c: c.delete_vector_bucket(vectorBucketName=VBUCKET), "DeleteVectorBucket")
    # Any request an instance serves makes it let go of deleted indexes'
    # handles (their heartbeats stop and their records go); without one it
    # does so at its next sweep or config check, within a minute.
    for inst in chaos.instances:
        client(inst.url).list_vector_buckets()
    left = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="root/"):
        left += [o["Key"] for o in page.get("Contents", [])]
    strays = [k for k in left if not (k.endswith("/_brainy/config.json") or k.endswith("catalog.json"))]
    out["tombstones_left"] = len(left) - len(strays)
    out["stray_objects_left"] = len(strays)
    if strays:
        print(f"objects left besides tombstones (not a violation, see docs/reliability.md Limits): "
              f"{strays[:10]}", flush=True)
    return out


if __name__ == "__main__":
    main()
