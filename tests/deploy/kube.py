#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes, run by tests/deploy.rs.

CI reaches package registries and nothing else, so nothing here talks to a cluster:

- `render`: a small kustomize, exactly the subset the manifests use (resources, JSON 6902
  patches, images, configMapGenerator with stable names). Any other kustomization field is an
  error rather than something silently skipped. Where `kubectl` is installed, its own
  `kubectl kustomize` must render the same objects.
- `schemas`: every object of the base and of each overlay, validated strictly (unknown fields
  are errors) against the Kubernetes OpenAPI schemas that the `kubernetes-validate` package
  ships, for the oldest version the native sidecar form needs and a recent one.
- `consistency`: what no schema sees: the drain numbers against the grace period and the
  preStop hooks, probes and Service against the ports proxy.toml listens on, Secret mounts
  against the files proxy.toml names, selectors against pod labels, the security context.
- `config OVERLAY`: prints the proxy.toml an overlay deploys, for `streamguard check`.
- `prestop OVERLAY`: prints the app container's preStop command (JSON), to run against a proxy.

Exit status 0 when everything holds; otherwise 1, with one line per problem.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import kubernetes_validate
import yaml

# The oldest Kubernetes the native sidecar form runs on (restartPolicy on init containers is
# on by default from 1.29), and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")
# What a kustomization here may say; anything else would be rendered wrong, so it is refused.
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "configMapGenerator"}
# Seconds the grace period must leave after the drain for the app's own shutdown.
SHUTDOWN_MARGIN = 10
PROXY_CONTAINER = "streamguard"
CONFIG_KEY = "proxy.toml"


class Problem(Exception):
    pass


# --- rendering -------------------------------------------------------------------------------


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def kustomization_file(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise Problem(f"{directory}: no kustomization.yaml")


def render(directory):
    """The objects `kubectl kustomize directory` would print, for the supported subset."""
    path = kustomization_file(directory)
    (spec,) = load_docs(path)
    unknown = set(spec) - KUSTOMIZATION_KEYS
    if unknown:
        raise Problem(f"{path}: fields this renderer does not implement: {sorted(unknown)}")
    if spec.get("kind") != "Kustomization":
        raise Problem(f"{path}: kind must be Kustomization")
    objects = []
    for resource in spec.get("resources", []):
        target = os.path.normpath(os.path.join(directory, resource))
        objects.extend(render(target) if os.path.isdir(target) else load_docs(target))
    for generator in spec.get("configMapGenerator", []):
        objects.append(config_map(directory, path, generator))
    for patch in spec.get("patches", []):
        apply_patch(directory, path, patch, objects)
    for image in spec.get("images", []):
        for obj in objects:
            set_image(obj, image)
    seen = set()
    for obj in objects:
        key = identity(obj)
        if key in seen:
            raise Problem(f"{path}: {key} is defined twice")
        seen.add(key)
    return objects


def identity(obj):
    return (obj.get("apiVersion"), obj.get("kind"), obj.get("metadata", {}).get("name"))


def config_map(directory, path, generator):
    unknown = set(generator) - {"name", "files", "options"}
    if unknown:
        raise Problem(f"{path}: configMapGenerator fields not implemented: {sorted(unknown)}")
    if generator.get("options", {}) != {"disableNameSuffixHash": True}:
        raise Problem(
            f"{path}: configMapGenerator {generator['name']} needs options.disableNameSuffixHash:"
            " true (a hashed name rolls the pods on every change instead of reloading)"
        )
    data = {}
    for entry in generator.get("files", []):
        key, _, file = entry.rpartition("=")
        file_path = os.path.join(directory, file)
        with open(file_path, encoding="utf-8") as f:
            data[key or os.path.basename(file)] = f.read()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
            "data": data}


def apply_patch(directory, path, patch, objects):
    if set(patch) != {"path", "target"} or set(patch["target"]) - {"kind", "name"}:
        raise Problem(f"{path}: only `patches: [{{path, target: {{kind, name}}}}]` is implemented")
    (operations,) = load_docs(os.path.join(directory, patch["path"]))
    if not isinstance(operations, list):
        raise Problem(f"{path}: {patch['path']} must be a JSON 6902 patch (a list of operations)")
    target = patch["target"]
    matched = [
        i for i, obj in enumerate(objects)
        if obj["kind"] == target.get("kind", obj["kind"])
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
    ]
    if not matched:
        raise Problem(f"{path}: patch {patch['path']} matches no object")
    for i in matched:
        doc = copy.deepcopy(objects[i])
        for op in operations:
            doc = json_patch(doc, op, f"{path}: {patch['path']}")
        objects[i] = doc


def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise Problem(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def walk(doc, parts, where):
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise Problem(f"{where}: no {part!r} on the way")
    return doc


def json_patch(doc, op, where):
    """One RFC 6902 operation."""
    kind = op["op"]
    where = f"{where}: {kind} {op.get('path')}"
    if kind == "test":
        found = walk(doc, pointer(op["path"]), where)
        if found != op["value"]:
            raise Problem(f"{where}: found {found!r}, the patch expects {op['value']!r}")
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(walk(doc, pointer(op["from"]), where))
        if kind == "move":
            doc = json_patch(doc, {"op": "remove", "path": op["from"]}, where)
        return json_patch(doc, {"op": "add", "path": op["path"], "value": value}, where)
    parts = pointer(op["path"])
    parent = walk(doc, parts[:-1], where)
    last = parts[-1]
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind == "replace":
        key = int(last) if isinstance(parent, list) else last
        if isinstance(parent, dict) and key not in parent:
            raise Problem(f"{where}: nothing to replace")
        parent[key] = copy.deepcopy(op["value"])
    elif kind == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if index > len(parent):
                raise Problem(f"{where}: index past the end")
            parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise Problem(f"{where}: unknown operation")
    return doc


def pod_spec(obj):
    return obj.get("spec", {}).get("template", {}).get("spec")


def split_image(image):
    name, digest = image.split("@", 1) if "@" in image else (image, None)
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:], digest
    return name, None, digest


def set_image(obj, image):
    spec = pod_spec(obj)
    if spec is None:
        return
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        name, tag, digest = split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = image.get("newTag", tag)
        digest = image.get("digest", digest)
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def kustomizations(root):
    """The base and every overlay, as (label, directory)."""
    found = [("base", os.path.join(root, "base"))]
    overlays = os.path.join(root, "overlays")
    for name in sorted(os.listdir(overlays)):
        found.append((f"overlays/{name}", os.path.join(overlays, name)))
    return found


def by_identity(objects):
    return {identity(obj): obj for obj in objects}


def compare_with_kubectl(label, directory, objects):
    """Where kubectl is installed, its kustomize must agree with ours object for object."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return f"{label}: kubectl not installed, its kustomize not compared"
    out = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise Problem(f"{label}: kubectl kustomize failed: {out.stderr.strip()}")
    theirs = by_identity(doc for doc in yaml.safe_load_all(out.stdout) if doc)
    ours = by_identity(objects)
    if theirs != ours:
        differing = sorted(str(k) for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise Problem(f"{label}: kubectl kustomize renders differently: {differing}")
    return f"{label}: kubectl kustomize renders the same {len(ours)} objects"


# --- schemas ---------------------------------------------------------------------------------


def check_schemas(root):
    problems, notes = [], []
    for label, directory in kustomizations(root):
        objects = render(directory)
        notes.append(compare_with_kubectl(label, directory, objects))
        for obj in objects:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.absolute_path)
                    problems.append(f"{label}: {obj['kind']} {obj['metadata']['name']} "
                                    f"(Kubernetes {version}) at {where}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problems.append(f"{label}: {e.message}")
        notes.append(f"{label}: {len(objects)} objects against Kubernetes "
                     f"{', '.join(KUBERNETES_VERSIONS)}")
    return problems, notes


# --- consistency -----------------------------------------------------------------------------


def seconds(text):
    """A proxy.toml duration ("5s", "1m30s", "250ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or re.sub(r"\s", "", text) != "".join(n + u for n, u in parts):
        raise Problem(f"duration {text!r} is not understood")
    return sum(int(n) * units[u] for n, u in parts)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def find(objects, kind, name=None):
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def proxy_config(objects, deployment):
    """(ConfigMap name, parsed proxy.toml, path the container reads it from)."""
    spec = pod_spec(deployment)
    proxy = proxy_container(spec)
    args = proxy.get("args", [])
    config_path = args[args.index("-c") + 1]
    mount = mount_holding(proxy, config_path)
    volume = volume_named(spec, mount["name"])
    name = volume["configMap"]["name"]
    (config_map_obj,) = find(objects, "ConfigMap", name)
    text = config_map_obj["data"][os.path.relpath(config_path, mount["mountPath"])]
    return name, tomllib.loads(text), text


def proxy_container(spec):
    containers = [c for c in spec.get("containers", []) + spec.get("initContainers", [])
                  if c["name"] == PROXY_CONTAINER]
    if len(containers) != 1:
        raise Problem(f"expected one container named {PROXY_CONTAINER}, found {len(containers)}")
    return containers[0]


def mount_holding(container, path):
    for mount in container.get("volumeMounts", []):
        if os.path.dirname(path) == mount["mountPath"]:
            return mount
    raise Problem(f"{container['name']}: no volume mounted at {os.path.dirname(path)} for {path}")


def volume_named(spec, name):
    (volume,) = [v for v in spec["volumes"] if v["name"] == name]
    return volume


def named_port(container, name):
    for port in container.get("ports", []):
        if port["name"] == name:
            return port["containerPort"]
    raise Problem(f"{container['name']} has no port named {name!r}")


def resolve_port(container, port):
    return named_port(container, port) if isinstance(port, str) else port


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def prestop_command(container):
    return container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")


def check_overlay(label, objects):
    problems = []

    def expect(condition, message):
        if not condition:
            problems.append(f"{label}: {message}")

    deployments = [d for d in find(objects, "Deployment")
                   if any(c["name"] == PROXY_CONTAINER
                          for c in pod_spec(d).get("containers", []) +
                          pod_spec(d).get("initContainers", []))]
    if len(deployments) != 1:
        return [f"{label}: expected one Deployment running {PROXY_CONTAINER}"]
    (deployment,) = deployments
    spec = pod_spec(deployment)
    proxy = proxy_container(spec)
    apps = [c for c in spec["containers"] if c["name"] != PROXY_CONTAINER]
    _, config, _ = proxy_config(objects, deployment)
    server = config.get("server", {})

    # The drain against the grace period and the app's preStop.
    delay = seconds(server["drain_delay"])
    window = seconds(server["drain_window"])
    timeout = seconds(server["drain_timeout"])
    grace = spec.get("terminationGracePeriodSeconds", 30)
    expect(timeout >= delay + window,
           f"drain_timeout {timeout}s < drain_delay + drain_window = {delay + window}s")
    expect(grace >= timeout + SHUTDOWN_MARGIN,
           f"terminationGracePeriodSeconds {grace} < drain_timeout {timeout} + {SHUTDOWN_MARGIN}")
    expect(server.get("watch_config") is True,
           "[server] watch_config must be true, or ConfigMap and Secret updates never apply")
    native = proxy in spec.get("initContainers", [])
    expect(native == (label.endswith("native-sidecar")),
           f"{PROXY_CONTAINER} is {'an init' if native else 'a main'} container")
    admin_port = port_of(config["admin"]["address"])
    for app in apps:
        command = prestop_command(app)
        expect(command is not None, f"container {app['name']} has no exec preStop")
        if command is None:
            continue
        script = " ".join(command)
        if native:
            expect(proxy.get("restartPolicy") == "Always",
                   "a native sidecar needs restartPolicy: Always")
            drain = f"http://127.0.0.1:{admin_port}/drain?wait=1"
            expect(f"curl -fsS -X POST '{drain}'" in script,
                   f"{app['name']}'s preStop must POST {drain} (the app stops before the proxy)")
            expect(grace >= timeout + SHUTDOWN_MARGIN,
                   "the grace period must cover the preStop's wait for the drain")
        else:
            sleeps = [int(s) for s in re.findall(r"\bsleep\s+(\d+)", script)]
            expect(len(sleeps) == 1 and sleeps[0] >= delay + window,
                   f"{app['name']}'s preStop must sleep at least drain_delay + drain_window "
                   f"({delay + window}s) so it serves the streams being drained; it runs {script!r}")
            expect(all(s + SHUTDOWN_MARGIN <= grace for s in sleeps),
                   f"{app['name']}'s preStop sleep leaves no {SHUTDOWN_MARGIN}s of the grace "
                   f"period ({grace}s) for its shutdown")
    expect(prestop_command(proxy) is None,
           f"{PROXY_CONTAINER} needs no preStop: SIGTERM (or POST /drain) starts its drain")

    # Ports: probes on the admin listener, the Service on the public one only.
    listen_port = port_of(config["listen"]["address"])
    expect(named_port(proxy, "admin") == admin_port,
           f"port 'admin' is not [admin] address's port {admin_port}")
    expect(named_port(proxy, "http") == listen_port,
           f"port 'http' is not [listen] address's port {listen_port}")
    expect(config["admin"]["address"].startswith("0.0.0.0:"),
           "[admin] must listen on the pod IP for the kubelet's probes")
    expect(config["upstream"]["address"].startswith("127.0.0.1:"),
           "[upstream] must be the app on loopback")
    probes = {
        "startupProbe": "/livez",
        "readinessProbe": "/readyz",
        "livenessProbe": "/livez",
    }
    for probe, path in probes.items():
        get = proxy.get(probe, {}).get("httpGet")
        expect(get is not None and get["path"] == path and
               resolve_port(proxy, get["port"]) == admin_port,
               f"{probe} must GET {path} on the admin port {admin_port}")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [s for s in find(objects, "Service") if matches(s["spec"]["selector"], labels)]
    expect(len(services) == 1, "expected one Service selecting the proxy's pods")
    for service in services:
        targets = [resolve_port(proxy, p["targetPort"]) for p in service["spec"]["ports"]]
        expect(targets == [listen_port],
               f"Service {service['metadata']['name']} must target only port {listen_port}, "
               f"not {targets}")
    expect(matches(deployment["spec"]["selector"]["matchLabels"], labels),
           "the Deployment's selector does not match its pods")
    pdbs = [p for p in find(objects, "PodDisruptionBudget")
            if matches(p["spec"]["selector"]["matchLabels"], labels)]
    expect(len(pdbs) == 1, "expected one PodDisruptionBudget for the proxy's pods")

    # Files proxy.toml names come from mounted Secrets, as whole directories.
    named = [config["auth"].get("secret_file"),
             config.get("limits", {}).get("store", {}).get("password_file")]
    for path in filter(None, named):
        mount = mount_holding(proxy, path)
        volume = volume_named(spec, mount["name"])
        expect("secret" in volume, f"{path} must come from a Secret")
        items = volume.get("secret", {}).get("items")
        expect(items is None or os.path.basename(path) in [i["path"] for i in items],
               f"{path}: the Secret volume {volume['name']} has no item at that path")
    for mount in proxy.get("volumeMounts", []):
        expect("subPath" not in mount,
               f"mount {mount['name']} uses subPath, which never sees updates (no reload)")
        expect(mount.get("readOnly") is True, f"mount {mount['name']} must be read-only")

    # The shared store: the Redis Service proxy.toml names, with the password it reads.
    store = config.get("limits", {}).get("store", {})
    if store.get("kind") == "redis":
        match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", store["url"])
        expect(match is not None, f"store url {store['url']!r}: expected redis://SERVICE:PORT/DB")
        if match:
            redis_services = find(objects, "Service", match.group(1))
            expect(len(redis_services) == 1, f"no Service {match.group(1)} for the store")
            for service in redis_services:
                expect(int(match.group(2)) in [p["port"] for p in service["spec"]["ports"]],
                       f"Service {match.group(1)} has no port {match.group(2)}")
                redis_pods = [d for d in find(objects, "Deployment")
                              if matches(service["spec"]["selector"],
                                         d["spec"]["template"]["metadata"]["labels"])]
                proxy_secret = volume_named(spec, mount_holding(
                    proxy, store["password_file"])["name"])["secret"]["secretName"]
                for redis in redis_pods:
                    secrets = [v["secret"]["secretName"] for v in pod_spec(redis)["volumes"]
                               if "secret" in v]
                    expect(secrets == [proxy_secret],
                           f"Redis reads its password from {secrets}, the proxy from {proxy_secret}")
                policies = [p for p in find(objects, "NetworkPolicy")
                            if matches(p["spec"]["podSelector"]["matchLabels"],
                                       redis_pods[0]["spec"]["template"]["metadata"]["labels"])]
                expect(len(policies) == 1 and all(
                    matches(peer["podSelector"]["matchLabels"], labels)
                    for rule in policies[0]["spec"]["ingress"] for peer in rule["from"]),
                       "Redis must have a NetworkPolicy admitting the proxy's pods only")

    # Hardening of the proxy's container and pod.
    security = proxy.get("securityContext", {})
    for key, value in {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                       "allowPrivilegeEscalation": False}.items():
        expect(security.get(key) is value, f"{PROXY_CONTAINER} securityContext.{key} must be {value}")
    expect("ALL" in security.get("capabilities", {}).get("drop", []),
           f"{PROXY_CONTAINER} must drop ALL capabilities")
    expect(spec.get("automountServiceAccountToken") is False,
           "the pod needs no service account token")
    limits = proxy.get("resources", {}).get("limits", {})
    expect("memory" in limits and "memory" in proxy.get("resources", {}).get("requests", {}),
           f"{PROXY_CONTAINER} needs a memory request and limit")
    return problems


def check_consistency(root):
    problems, notes = [], []
    for label, directory in kustomizations(root)[1:]:
        found = check_overlay(label, render(directory))
        problems.extend(found)
        if not found:
            notes.append(f"{label}: consistent")
    return problems, notes


def main(argv):
    command, root = argv[1], argv[2]
    try:
        if command in ("config", "prestop"):
            objects = render(root)
            (deployment,) = [d for d in find(objects, "Deployment")
                             if any(c["name"] == PROXY_CONTAINER
                                    for c in pod_spec(d).get("containers", []) +
                                    pod_spec(d).get("initContainers", []))]
            if command == "config":
                print(proxy_config(objects, deployment)[2], end="")
            else:
                (app,) = [c for c in pod_spec(deployment)["containers"]
                          if c["name"] != PROXY_CONTAINER]
                print(json.dumps(prestop_command(app)))
            return 0
        check = {"schemas": check_schemas, "consistency": check_consistency}[command]
        problems, notes = check(root)
    except Problem as e:
        problems, notes = [str(e)], []
    for note in notes:
        print(note)
    for problem in problems:
        print(f"PROBLEM {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
