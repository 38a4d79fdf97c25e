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
roles = ("ReaderRole", "WriterRole", "CompactorRole")
def actions(st):
    return st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
def resources(st):
    return [str(r) for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])]
all_actions = [a for r in roles for st in statements(r) for a in actions(st)]
check("s3:*" not in all_actions and "*" not in all_actions, "no role gets s3:* or *")
check(all(st["Effect"] == "Allow" and all(not r.endswith("/*/*") for r in resources(st)) for r in roles for st in statements(r)),
      "role statements allow only, on named prefixes")
# Who deletes what.
def deletes(role):
    return [r for st in statements(role) if "s3:DeleteObject" in actions(st) for r in resources(st)]
gc_targets = ("vectors/*.seg", "index/shards/*", "index/dv/*", "_brainy/instances/*", "_brainy/probe/*")
check(sorted(r.split("}/", 1)[-1].split("/", 1)[-1] for r in deletes("CompactorRole")) == sorted(gc_targets),
      "only the compactor deletes data: segments, shards, deletion vectors, instance records, probe keys")
check(all("/_brainy/instances/${AWS::StackName}-" in r or "/_brainy/probe/" in r for role in ("ReaderRole", "WriterRole") for r in deletes(role)),
      "the reader and writer delete only their own instance records and probe keys")
def puts(role):
    return [r for st in statements(role) if "s3:PutObject" in actions(st) for r in resources(st)]
check(all("/_brainy/instances/${AWS::StackName}-reader-" in r or "/_brainy/probe/" in r for r in puts("ReaderRole")),
      "the reader writes only its function's instance records and probe keys")
check(any(r.endswith("/vectors/*") for r in puts("WriterRole")) and any(r.endswith("/_brainy/manifests/*") for r in puts("WriterRole"))
      and all(r.endswith("/index/manifest.json") for r in puts("WriterRole") if "/index/" in r),
      "the writer writes segments and manifests (of an older index, the index manifest's moved marker), not index shards")
check(all(any(r.endswith(p) for r in [x for st in statements(role) if "s3:GetObject" in actions(st) for x in resources(st)])
          for role in roles for p in ("/vectors/*", "/index/*", "/_brainy/*")),
      "every role reads vectors/, index/ (shards) and _brainy/")
fns = tpl["Resources"]
check(fns["CompactorFunction"]["Properties"]["Role"] == "CompactorRole.Arn"
      and fns["WriterFunction"]["Properties"]["Role"] == "WriterRole.Arn"
      and fns["ReaderFunction"]["Properties"]["Role"] == "ReaderRole.Arn",
      "reader, writer and compactor each have their own role")
check("ReservedConcurrentExecutions" in fns["WriterFunction"]["Properties"], "the writer function has a concurrency limit")
for fn, role in (("ReaderFunction", "reader"), ("WriterFunction", "writer")):
    prefix = fns[fn]["Properties"]["Environment"]["Variables"].get("BRAINY_INSTANCE_PREFIX", "")
    check(prefix == "${AWS::StackName}-" + role, f"{fn} names its instance records as its role may write them")
# The bucket: versioning, TLS only, manifests and config never deleted,
# written only conditionally.
bucket = fns["Bucket"]["Properties"]
check(bucket["VersioningConfiguration"]["Status"] == "Enabled", "bucket versioning is on")
check(any("NoncurrentVersionExpiration" in r for r in bucket["LifecycleConfiguration"]["Rules"]), "old versions expire (storage stays bounded)")
policy = fns["BucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
def denies(pred):
    return [st for st in policy if st["Effect"] == "Deny" and st["Principal"] == "*" and pred(st)]
check(denies(lambda st: st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false" and actions(st) == ["s3:*"]),
      "the bucket policy denies plain HTTP")
protected = ("/_brainy/manifests/*", "/vectors/*/manifest.json", "/index/manifest.json", "/_brainy/config.json")
check(denies(lambda st: "s3:DeleteObject" in actions(st) and all(any(r.endswith(p) for r in resources(st)) for p in protected) and "Condition" not in st),
      "nobody may delete a manifest or the config")
check(denies(lambda st: actions(st) == ["s3:PutObject"] and all(any(r.endswith(p) for r in resources(st)) for p in protected)
             and st.get("Condition", {}).get("Null") == {"s3:if-none-match": "true", "s3:if-match": "true"}),
      "manifests and the config are written only with If-None-Match or If-Match")
check(tpl["Resources"]["ReaderFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] == "AWS_IAM", "Function URLs use IAM auth")
bpab = tpl["Resources"]["Bucket"]["Properties"]["PublicAccessBlockConfiguration"]
check(all(bpab.values()), "the bucket blocks public access")
sys.exit(1 if failures else 0)
