#!/usr/bin/env python3
"""Static checks of deployment files that cannot run here (no Docker engine):
parses every YAML file and checks the properties the docs promise."""
import pathlib, sys
import yaml

root = pathlib.Path(__file__).resolve().parent.parent
failures = []

def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        failures.append(msg)

docs = {}
for p in sorted(list(root.glob("examples/**/*.yaml")) + list(root.glob("examples/**/*.yml")) + [root / "localstack/docker-compose.yml"]):
    try:
        docs[p.relative_to(root).as_posix()] = list(yaml.safe_load_all(p.read_text()))
        check(True, f"{p.relative_to(root)} parses")
    except yaml.YAMLError as e:
        check(False, f"{p.relative_to(root)} parses: {e}")

compose = docs["examples/docker-compose.yml"][0]["services"]
check({"minio", "bucket", "init", "writer", "reader", "gateway"} <= set(compose), "compose has minio, bucket init, writer, readers, gateway")
check(compose["reader"]["deploy"]["replicas"] == 3, "compose runs three readers")
check(compose["writer"]["environment"]["BRAINY_ROLE"] == "writer", "compose writer role")
for svc in ("writer", "reader"):
    env = compose[svc]["environment"]
    listen = compose[svc]["command"][compose[svc]["command"].index("--listen") + 1]
    check(not listen.startswith("127.") and "SHOAL_API_KEY" in env and "?" in str(env["SHOAL_API_KEY"]),
          f"compose {svc} serves beyond loopback only with a required SHOAL_API_KEY")

k8s = {d["kind"] + "/" + d["metadata"]["name"]: d for f, ds in docs.items() if f.startswith("examples/k8s/") for d in ds}
reader = k8s["Deployment/shoal-reader"]
check(reader["spec"]["replicas"] == 10, "k8s reader has 10 replicas")
c = reader["spec"]["template"]["spec"]["containers"][0]
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "k8s reader readiness on /readyz")
check({"configMapRef": {"name": "shoal"}} in c["envFrom"] and {"secretRef": {"name": "shoal-aws"}} in c["envFrom"], "k8s reader uses the ConfigMap and Secret")
check(all(k in k8s["ConfigMap/shoal"]["data"] for k in ("SHOAL_DIMENSIONS", "SHOAL_METRIC", "SHOAL_PARTITIONS")),
      "k8s ConfigMap carries the index settings, so the writer creates the config on a fresh bucket")
check("Deployment/shoal-writer" in k8s and "ConfigMap/shoal" in k8s and "Secret/shoal-aws" in k8s, "k8s writer, ConfigMap and Secret exist")
docker = (root / "Dockerfile").read_text()
check("USER 10001" in docker and "target-cpu" not in docker.replace("no target-cpu", ""), "Dockerfile runs as non-root and portable")
health = [l for l in docker.splitlines() if l.startswith("HEALTHCHECK")]
check(len(health) == 1 and "/healthz" in health[0] and "--help" not in health[0], "Dockerfile health check calls /healthz")
check("--insecure-no-auth" not in docker, "Dockerfile never turns authentication off")
# IAM review of the SAM template: what each role may do.
class CfnLoader(yaml.SafeLoader):
    pass
def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)
CfnLoader.add_multi_constructor("!", _tag)
tpl = yaml.load((root / "infra/template.yaml").read_text(), Loader=CfnLoader)
def statements(role):
    out = []
    for pol in tpl["Resources"][role]["Properties"]["Policies"]:
        out += pol["PolicyDocument"]["Statement"]
    return out
def grants(role, action, needle):
    for st in statements(role):
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if action in acts and any(needle in str(r) for r in res):
            return True
    return False
all_actions = [a for r in ("ReaderRole", "WriterRole") for st in statements(r) for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])]
check("s3:*" not in all_actions and "*" not in all_actions, "no role gets s3:* or *")
check(not grants("ReaderRole", "s3:PutObject", "vectors/"), "the reader cannot write vectors/")
check(not grants("ReaderRole", "s3:PutObject", "_brainy/*") and grants("ReaderRole", "s3:PutObject", "_brainy/instances/"), "the reader writes only instance records (and probe keys) under _brainy/")
check(grants("ReaderRole", "s3:GetObject", "vectors/"), "the reader reads vectors/")
check(grants("WriterRole", "s3:PutObject", "vectors/") and grants("WriterRole", "s3:PutObject", "_brainy/"), "the writer and compactor write vectors/ and _brainy/")
check(tpl["Resources"]["ReaderFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] == "AWS_IAM", "Function URLs use IAM auth")
bpab = tpl["Resources"]["Bucket"]["Properties"]["PublicAccessBlockConfiguration"]
check(all(bpab.values()), "the bucket blocks public access")
sys.exit(1 if failures else 0)
