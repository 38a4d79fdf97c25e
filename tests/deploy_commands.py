#!/usr/bin/env python3
"""Runs the commands of the shipped deployment examples against the test S3
server, on a fresh bucket, with no manual step: what a container runtime
would run, short of the containers (no Docker engine here).

- examples/k8s/: the ConfigMap and Secret become the environment, each
  Deployment's `args` follow the image's ENTRYPOINT (the Dockerfile's).
  A reader started before any writer exits saying what to run (Kubernetes
  restarts it); the writer creates the config from SHOAL_DIMENSIONS /
  SHOAL_METRIC / SHOAL_PARTITIONS; the restarted reader then serves, and a
  record upserted through the writer is found through the reader.
- examples/docker-compose.yml: the shared environment of the `x-shoal`
  anchor, the `init` job's command, then the writer's and a reader's.

Only what cannot run here is replaced: the S3 endpoint (MinIO or AWS →
the test server at SHOAL_TEST_S3_ENDPOINT), the bucket (a fresh one), the
credentials and API key (test values), and `--listen 0.0.0.0:8080` (→ a
free 127.0.0.1 port: test servers bind loopback only).

    .tools-venv/bin/python tests/deploy_commands.py   (needs PyYAML; scripts/test.sh runs it)
"""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from support import free_port, shoal_binary  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

ENDPOINT = os.environ.get("SHOAL_TEST_S3_ENDPOINT")
API_KEY = "deploy-test-" + uuid.uuid4().hex


def entrypoint_args():
    """What the image runs before a container's args: the Dockerfile's ENTRYPOINT."""
    text = (ROOT / "Dockerfile").read_text()
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert m, "the Dockerfile has an exec-form ENTRYPOINT"
    entry = json.loads(m.group(1))
    assert entry[0].endswith("/shoal"), entry
    return entry[1:]


def fresh_bucket():
    name = f"shoal-deploy-{uuid.uuid4().hex[:12]}"
    urllib.request.urlopen(urllib.request.Request(f"{ENDPOINT}/{name}", method="PUT"))
    return name


def localize(env, bucket):
    """The example's environment, pointed at the test server and a fresh bucket."""
    env = {k: str(v) for k, v in env.items()}
    url = env["SHOAL_BUCKET"]
    assert url.startswith("s3://"), url
    prefix = url[len("s3://"):].partition("/")[2]
    env["SHOAL_BUCKET"] = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    env.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", SHOAL_API_KEY=API_KEY)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    return env


def loopback(args, port):
    """`--listen 0.0.0.0:8080` → a free loopback port (everything else as given)."""
    args = list(args)
    if "--listen" in args:
        i = args.index("--listen") + 1
        assert args[i].startswith("0.0.0.0:"), args
        args[i] = f"127.0.0.1:{port}"
    return args


class Process:
    def __init__(self, name, argv, env):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"deploy-{name}-", suffix=".log", delete=False)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "BRAINY_", "AWS_"))}
        self.proc = subprocess.Popen(argv, env={**base, **env}, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self):
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def wait_listening(self, timeout=90):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "listening on" in self.output():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name} did not start listening:\n{self.output()}")

    def wait_exit(self, timeout=90):
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


class Running:
    """Processes started inside a `with`: stopped at the end, their output
    printed if anything failed."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, env):
        p = Process(name, argv, env)
        self.procs.append(p)
        return p

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            for p in self.procs:
                print(f"--- {p.name} ---\n{p.output()}", file=sys.stderr)
        for p in self.procs:
            p.stop()
        return False


def call(port, path, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def write_then_find(writer_port, reader_port, dims):
    vector = [0.0] * dims
    vector[0] = 1.0
    call(writer_port, "/v1/upsert", {"records": [{"id": "first-record", "vector": vector}]})
    found = call(reader_port, "/v1/search", {"vector": vector, "k": 1, "consistency": "strong"})
    ids = [h["id"] for h in found["results"]]
    assert ids == ["first-record"], found
    # No key, no answer: the examples serve beyond loopback only with one.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{reader_port}/v1/status")
        raise AssertionError("a request without the API key was answered")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code


def kubernetes(binary):
    docs = {}
    for path in sorted((ROOT / "examples/k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(path.read_text()):
            docs[(d["kind"], d["metadata"]["name"])] = d
    env = dict(docs[("ConfigMap", "shoal")]["data"])
    env.update(docs[("Secret", "shoal-aws")]["stringData"])
    env = localize(env, fresh_bucket())
    containers = {}
    for role in ("writer", "reader"):
        c = docs[("Deployment", f"shoal-{role}")]["spec"]["template"]["spec"]["containers"][0]
        refs = [list(r.values())[0]["name"] for r in c.get("envFrom", [])]
        assert refs == ["shoal", "shoal-aws"], refs
        containers[role] = (c["args"], {e["name"]: str(e["value"]) for e in c.get("env", [])})
    dims = int(env["SHOAL_DIMENSIONS"])
    prefix = [binary] + entrypoint_args()

    # A reader scheduled before any writer: exits naming what to run.
    args, own = containers["reader"]
    early = Process("k8s-reader-early", prefix + loopback(args, free_port()), {**env, **own})
    try:
        code = early.wait_exit()
        out = early.output()
        assert code != 0, out
        assert "shoal" in out and "init --dimensions" in out and "readers never create it" in out, out
    finally:
        early.stop()

    with Running() as running:
        args, own = containers["writer"]
        wport = free_port()
        running.start("k8s-writer", prefix + loopback(args, wport), {**env, **own}).wait_listening()
        args, own = containers["reader"]
        rport = free_port()
        running.start("k8s-reader", prefix + loopback(args, rport), {**env, **own}).wait_listening()
        status = call(rport, "/v1/status")
        cfg = status["config"] if "config" in status else status
        text = json.dumps(cfg)
        assert f'"dimensions": {dims}' in text or f'"dimensions":{dims}' in text, text[:500]
        write_then_find(wport, rport, dims)
    print("deploy: the Kubernetes example's commands reach a working search on a fresh bucket")


def compose(binary):
    spec = yaml.safe_load((ROOT / "examples/docker-compose.yml").read_text())
    services = spec["services"]
    prefix = [binary] + entrypoint_args()
    env = {k: v for k, v in services["writer"]["environment"].items() if k != "BRAINY_ROLE"}
    env = localize(env, fresh_bucket())
    init = services["init"]
    assert init["environment"]["SHOAL_BUCKET"] == services["writer"]["environment"]["SHOAL_BUCKET"]
    run = Process("compose-init", prefix + init["command"], env)
    try:
        assert run.wait_exit() == 0, run.output()
    finally:
        run.stop()
    dims = int(init["command"][init["command"].index("--dimensions") + 1])
    with Running() as running:
        ports = {}
        for name in ("writer", "reader"):
            svc = services[name]
            ports[name] = free_port()
            own = {"BRAINY_ROLE": svc["environment"]["BRAINY_ROLE"]}
            argv = prefix + loopback(svc["command"], ports[name])
            running.start(f"compose-{name}", argv, {**env, **own}).wait_listening()
        write_then_find(ports["writer"], ports["reader"], dims)
    print("deploy: the docker compose example's commands reach a working search on a fresh bucket")


def main():
    if not ENDPOINT:
        raise SystemExit("SHOAL_TEST_S3_ENDPOINT is not set: start the S3 test server "
                         "(scripts/test.sh does) and export it")
    binary = shoal_binary()
    kubernetes(binary)
    compose(binary)


if __name__ == "__main__":
    main()
