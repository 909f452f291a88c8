#!/usr/bin/env python3
"""check_manifests.py DIR: validates every Kubernetes manifest under DIR (deploy/kubernetes).

Run with the Python of deploy/local/deploy-tools' venv (kubernetes-validate, jsonschema,
PyYAML); tests/deploy/run does. Each YAML document is checked by its kind:

- built-in kinds (ConfigMap, Secret, Deployment, PodDisruptionBudget, ...): Kubernetes'
  own JSON schemas for KM_K8S_VERSION (default 1.37.0), strict: an unknown field is an
  error, and so is a kind the schemas do not know;
- keda.sh/v1alpha1 (ScaledObject, TriggerAuthentication): schemas/keda.sh-v1alpha1.json,
  plus the Kafka trigger's metadata (known parameters, booleans and numbers as strings);
- Kustomization: its resources exist, its patches are JSON patches whose targets are
  among its resources (kustomize itself is not run).

Then the rules that tie the manifests to the worker's settings (the properties file of
the ConfigMap, and KAFKA_MAILER_* variables of the Deployment's container):

- terminationGracePeriodSeconds >= shutdown.timeout.ms / 1000 + GRACE_MARGIN_S;
- a PodDisruptionBudget selects the Deployment's pods and lets at most one go;
- a ScaledObject targets the Deployment, never scales to zero nor above what it allows
  (allowIdleConsumers "false": replicas <= partitions), reads the worker's group, topic
  and brokers, and its lagThreshold is above inflight.max.

Prints one line per document; exit status 1 when anything is wrong.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
K8S_VERSION = os.environ.get("KM_K8S_VERSION", "1.37.0")
GRACE_MARGIN_S = 10

# The worker's defaults (docs/configuration.md) for the settings compared here.
DEFAULTS = {
    "kafka.group.id": "kafka-mailer",
    "topic.requests": "email.requests",
    "shutdown.timeout.ms": "30000",
    "inflight.max": "1000",
}

# KEDA's Kafka scaler (trigger type "kafka"): its metadata parameters, and those that
# take a boolean or an integer (as strings, like every metadata value).
KAFKA_TRIGGER_PARAMS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
    "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
    "version", "partitionLimitation", "sasl", "tls", "unsafeSsl", "saslType",
    "bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv",
}
KAFKA_TRIGGER_BOOLS = {"allowIdleConsumers", "scaleToZeroOnInvalidOffset",
                       "excludePersistentLag", "limitToPartitionsWithLag",
                       "ensureEvenDistributionOfPartitions", "unsafeSsl"}
KAFKA_TRIGGER_INTS = {"lagThreshold", "activationLagThreshold"}

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels",
                      "images", "configMapGenerator", "secretGenerator", "components"}


class Checker:
    def __init__(self, root: Path):
        self.root = root
        self.errors = 0
        self.docs: list[tuple[Path, dict]] = []
        with open(HERE / "schemas" / "keda.sh-v1alpha1.json") as f:
            self.keda_schema = json.load(f)

    def error(self, where: str, message: str) -> None:
        self.errors += 1
        print(f"FAIL {where}: {message}")

    def rel(self, path: Path) -> str:
        return os.path.relpath(path)

    # --- loading -------------------------------------------------------------------------
    def load(self) -> None:
        files = sorted(p for p in self.root.rglob("*") if p.suffix in (".yaml", ".yml"))
        if not files:
            self.error(str(self.root), "no YAML files")
        for path in files:
            try:
                with open(path) as f:
                    docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                self.error(self.rel(path), f"not YAML: {e}")
                continue
            if not docs:
                self.error(self.rel(path), "no document")
            for doc in docs:
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    self.error(self.rel(path), "a document without apiVersion and kind")
                    continue
                self.docs.append((path, doc))

    # --- one document --------------------------------------------------------------------
    def check_doc(self, path: Path, doc: dict) -> None:
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{self.rel(path)}: {doc['kind']}/{name}"
        before = self.errors
        if doc["kind"] == "Kustomization":
            where = f"{self.rel(path)}: Kustomization"
            self.check_kustomization(path, doc, where)
        elif str(doc["apiVersion"]).startswith("keda.sh/"):
            self.check_keda(doc, where)
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                self.error(where, f"no schema for {doc['apiVersion']} {doc['kind']} "
                           f"in Kubernetes {K8S_VERSION}")
            except kubernetes_validate.ValidationError as e:
                self.error(where, f"{'.'.join(str(p) for p in e.path) or '(top)'}: "
                           f"{e.message}")
        if self.errors == before:
            print(f"ok   {where}")

    def check_keda(self, doc: dict, where: str) -> None:
        if doc["apiVersion"] != "keda.sh/v1alpha1" or doc["kind"] not in self.keda_schema["$defs"]:
            self.error(where, f"no schema for {doc['apiVersion']} {doc['kind']} "
                       "(tests/deploy/schemas/keda.sh-v1alpha1.json)")
            return
        schema = dict(self.keda_schema, **{"$ref": f"#/$defs/{doc['kind']}"})
        for e in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            self.error(where, f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}")
        if doc["kind"] != "ScaledObject" or self.errors:
            return
        for i, trigger in enumerate(doc["spec"]["triggers"]):
            if trigger["type"] != "kafka":
                continue
            meta = trigger["metadata"]
            at = f"{where}: triggers.{i}.metadata"
            for key in sorted(set(meta) - KAFKA_TRIGGER_PARAMS):
                self.error(at, f"{key}: not a parameter of KEDA's Kafka scaler")
            for key in ("bootstrapServers", "consumerGroup"):
                if key not in meta and key + "FromEnv" not in meta:
                    self.error(at, f"{key} is required")
            for key in sorted(KAFKA_TRIGGER_BOOLS & set(meta)):
                if meta[key] not in ("true", "false"):
                    self.error(at, f"{key}: {meta[key]!r} is not \"true\" or \"false\"")
            for key in sorted(KAFKA_TRIGGER_INTS & set(meta)):
                if not meta[key].isdigit():
                    self.error(at, f"{key}: {meta[key]!r} is not a whole number")
            if meta.get("offsetResetPolicy", "latest") not in ("latest", "earliest"):
                self.error(at, "offsetResetPolicy: latest or earliest")

    def check_kustomization(self, path: Path, doc: dict, where: str) -> None:
        for key in sorted(set(doc) - KUSTOMIZATION_KEYS):
            self.error(where, f"{key}: not checked here (add it to KUSTOMIZATION_KEYS "
                       "with a check)")
        if doc["apiVersion"] != "kustomize.config.k8s.io/v1beta1":
            self.error(where, f"apiVersion {doc['apiVersion']}")
        if path.name != "kustomization.yaml":
            self.error(where, "kustomize reads only a file named kustomization.yaml")
        targets = set()
        for res in doc.get("resources") or []:
            target = (path.parent / res).resolve()
            if target.is_dir():
                if not (target / "kustomization.yaml").is_file():
                    self.error(where, f"resource {res}: a folder without kustomization.yaml")
                targets |= self.kustomized(target / "kustomization.yaml")
            elif target.is_file():
                targets |= {(d["kind"], d["metadata"]["name"]) for p, d in self.docs
                            if p.resolve() == target and "metadata" in d}
            else:
                self.error(where, f"resource {res}: no such file or folder")
        for i, patch in enumerate(doc.get("patches") or []):
            t = patch.get("target") or {}
            if (t.get("kind"), t.get("name")) not in targets:
                self.error(where, f"patches.{i}: target {t.get('kind')}/{t.get('name')} is "
                           "not among the resources")
            try:
                ops = yaml.safe_load(patch.get("patch", ""))
            except yaml.YAMLError as e:
                self.error(where, f"patches.{i}: not YAML: {e}")
                continue
            if not isinstance(ops, list) or not all(
                    isinstance(o, dict) and o.get("op") in
                    ("add", "remove", "replace", "move", "copy", "test") and
                    str(o.get("path", "")).startswith("/") for o in ops):
                self.error(where, f"patches.{i}: not a JSON patch (a list of op/path)")

    def kustomized(self, kfile: Path) -> set:
        """(kind, name) of the resources a kustomization.yaml lists, folders included."""
        out = set()
        for p, d in self.docs:
            if p.resolve() == kfile.resolve() and d["kind"] == "Kustomization":
                for res in d.get("resources") or []:
                    target = (kfile.parent / res).resolve()
                    if target.is_dir():
                        out |= self.kustomized(target / "kustomization.yaml")
                    out |= {(x["kind"], x["metadata"]["name"]) for q, x in self.docs
                            if q.resolve() == target and "metadata" in x}
        return out

    # --- rules across documents ----------------------------------------------------------
    def of_kind(self, kind: str) -> list[tuple[Path, dict]]:
        return [(p, d) for p, d in self.docs if d["kind"] == kind]

    def settings(self, deployment: dict) -> dict:
        """The worker's settings: defaults, the ConfigMap's properties file, then the
        container's KAFKA_MAILER_* variables (as the worker reads them)."""
        out = dict(DEFAULTS)
        for _, cm in self.of_kind("ConfigMap"):
            text = (cm.get("data") or {}).get("kafka-mailer.properties")
            for line in (text or "").splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    key, value = line.split("=", 1)
                    out[key.strip()] = value.strip()
        for c in deployment["spec"]["template"]["spec"]["containers"]:
            for env in c.get("env") or []:
                if env["name"].startswith("KAFKA_MAILER_") and "value" in env:
                    key = env["name"][len("KAFKA_MAILER_"):].lower().replace("_", ".")
                    out[key] = env["value"]
        return out

    def check_rules(self) -> None:
        deployments = self.of_kind("Deployment")
        if len(deployments) != 1:
            self.error(str(self.root), f"{len(deployments)} Deployments, expected one")
            return
        dpath, dep = deployments[0]
        dname = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        settings = self.settings(dep)

        where = f"{self.rel(dpath)}: Deployment/{dname}"
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        shutdown_s = int(settings["shutdown.timeout.ms"]) / 1000
        if grace < shutdown_s + GRACE_MARGIN_S:
            self.error(where, f"terminationGracePeriodSeconds {grace} < shutdown.timeout.ms "
                       f"{shutdown_s:g} s + {GRACE_MARGIN_S} s: SIGKILL may cut the drain")
        else:
            print(f"ok   {where}: terminationGracePeriodSeconds {grace} >= "
                  f"shutdown.timeout.ms {shutdown_s:g} s + {GRACE_MARGIN_S} s")

        labels = pod["metadata"].get("labels") or {}
        pdbs = self.of_kind("PodDisruptionBudget")
        if not pdbs:
            self.error(where, "no PodDisruptionBudget")
        for ppath, pdb in pdbs:
            pwhere = f"{self.rel(ppath)}: PodDisruptionBudget/{pdb['metadata']['name']}"
            match = (pdb["spec"].get("selector") or {}).get("matchLabels") or {}
            if not match or any(labels.get(k) != v for k, v in match.items()):
                self.error(pwhere, f"selector {match} does not select {dname}'s pods {labels}")
            if pdb["spec"].get("maxUnavailable") != 1:
                self.error(pwhere, "maxUnavailable should be 1: one worker drains at a time")

        for spath, so in self.of_kind("ScaledObject"):
            swhere = f"{self.rel(spath)}: ScaledObject/{so['metadata']['name']}"
            spec = so["spec"]
            ref = spec["scaleTargetRef"]
            if ref.get("kind", "Deployment") != "Deployment" or ref["name"] != dname:
                self.error(swhere, f"scaleTargetRef {ref} is not Deployment/{dname}")
            low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            if low < 1:
                self.error(swhere, "minReplicaCount < 1: retries waiting on the retry topic "
                           "would wait for the next request")
            if high < low:
                self.error(swhere, f"maxReplicaCount {high} < minReplicaCount {low}")
            for trigger in (t for t in spec["triggers"] if t["type"] == "kafka"):
                meta = trigger["metadata"]
                for param, key in (("consumerGroup", "kafka.group.id"),
                                   ("topic", "topic.requests"),
                                   ("bootstrapServers", "kafka.bootstrap.servers")):
                    if key in settings and meta.get(param) != settings[key]:
                        self.error(swhere, f"{param} {meta.get(param)!r} is not the worker's "
                                   f"{key} {settings[key]!r}")
                if meta.get("allowIdleConsumers", "false") != "false":
                    self.error(swhere, "allowIdleConsumers must stay \"false\": replicas "
                               "beyond the partition count sit idle")
                lag = meta.get("lagThreshold", "10")
                if lag.isdigit() and int(lag) <= int(settings["inflight.max"]):
                    self.error(swhere, f"lagThreshold {lag} <= inflight.max "
                               f"{settings['inflight.max']}: what a worker holds "
                               "uncommitted alone would scale it up")

    def run(self) -> int:
        self.load()
        for path, doc in self.docs:
            self.check_doc(path, doc)
        if not self.errors:
            self.check_rules()
        print(f"{len(self.docs)} documents checked, {self.errors} problems "
              f"(Kubernetes schemas {K8S_VERSION})")
        return 1 if self.errors else 0


def main() -> int:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: check_manifests.py DIR", file=sys.stderr)
        return 2
    return Checker(Path(sys.argv[1])).run()


if __name__ == "__main__":
    sys.exit(main())
