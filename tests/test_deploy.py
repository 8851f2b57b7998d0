"""deploy/: what can be checked without a container engine or a Kubernetes cluster.

- compose.yaml, parsed: a 3-node NATS cluster with routes and JetStream storage, the one-shot
  provisioning service the workers wait for, healthchecks, restart policies, secrets as files
  that exist in secrets.example, and no secret in clear;
- the Helm chart, rendered by Helm's own template engine (helm-python-sdk binds Helm's Go SDK;
  the NATS dependency is not fetched here, so it is rendered without it);
- the Dockerfile: pinned multi-stage base, numeric user, HEALTHCHECK, constraints file;
- the runtime imports nothing from the simulators' `sim` extra.

Not run here (no container engine, no cluster, no network beyond package registries):
``docker build``, ``docker compose up``, ``helm dependency update``, ``helm install``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "pbxbridge"
WORKERS = ("poller", "commander", "recordings")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|NKEY|CREDS", re.I)


# ---------------------------------------------------------------------------------------------
# compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _secret_names(service: dict[str, Any]) -> list[str]:
    return [s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])]


def test_compose_nats_cluster(compose: dict[str, Any]) -> None:
    services, volumes = compose["services"], compose.get("volumes", {})
    conf = (DEPLOY / "nats" / "cluster.conf").read_text()
    routes = re.findall(r"nats-route://([\w-]+):6222", conf)
    assert sorted(routes) == list(NATS_NODES)
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
    assert "server_name: $NATS_SERVER_NAME" in conf
    for node in NATS_NODES:
        svc = services[node]
        assert "/etc/nats/cluster.conf" in svc["command"]
        assert _env(svc)["NATS_SERVER_NAME"] == node
        mounts = [m.split(":") for m in svc["volumes"]]
        data = [m for m in mounts if m[1] == "/data"]
        assert data and data[0][0] in volumes, f"{node}: JetStream storage must be a named volume"
        for host, *_ in mounts:
            if host.startswith("./"):
                assert (DEPLOY / host).is_file(), host
        targets = {s["target"] for s in svc["secrets"] if isinstance(s, dict)}
        assert "/etc/nats/passwords.conf" in targets  # bcrypt hashes, from a secret file
        assert svc["restart"] in ("always", "unless-stopped")
        assert "healthz" in " ".join(svc["healthcheck"]["test"])


def test_compose_provisioning_then_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prov = services["provision"]
    assert prov["command"] == ["provision"]
    assert prov.get("restart", "no") == "no"
    assert _env(prov)["PBX_NATS_USER"] == "admin"
    assert {n: d["condition"] for n, d in prov["depends_on"].items()} == dict.fromkeys(NATS_NODES, "service_healthy")
    for worker in WORKERS:
        svc = services[worker]
        env = _env(svc)
        assert svc["command"] == ["run", worker]
        assert svc["depends_on"]["provision"]["condition"] == "service_completed_successfully"
        assert svc["restart"] in ("always", "unless-stopped", "on-failure")
        assert svc["healthcheck"]["test"][:3] == ["CMD", "pbxbridge", "health"]
        assert env["PBX_NATS_USER"] == worker
        assert env["PBX_NATS_PASSWORD_FILE"] == f"/run/secrets/nats_{worker}_password"
        assert f"nats_{worker}_password" in _secret_names(svc)
        assert env["PBX_PROVISION"] == "verify"
        assert set(env["PBX_NATS_URL"].split(",")) == {f"nats://{n}:4222" for n in NATS_NODES}
        # every vendor secret the accounts file names is mounted
        accounts = (DEPLOY / "pbxbridge.toml").read_text()
        for name in re.findall(r'file = "/run/secrets/([\w.-]+)"', accounts):
            assert name in _secret_names(svc), (worker, name)


def test_compose_secrets_are_files_that_exist_in_the_example(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    used = {name for svc in compose["services"].values() for name in _secret_names(svc)}
    assert used <= set(declared)
    for name, spec in declared.items():
        assert set(spec) == {"file"}, f"secret {name} must come from a file"
        path = Path(spec["file"])
        assert path.parts[:2] == (".", "secrets") or path.parts[0] == "secrets", spec
        assert (DEPLOY / "secrets.example" / path.name).is_file(), f"secrets.example lacks {path.name}"
    # make-secrets.sh writes what compose expects
    script = (DEPLOY / "make-secrets.sh").read_text()
    for name, spec in declared.items():
        stem = Path(spec["file"]).name
        assert stem in script or re.sub(r"nats_(\w+)_password", "nats_${user}_password", stem) in script, stem


def test_compose_holds_no_secret_in_clear(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if SECRETISH.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} must name a file, not hold the secret"
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}: {key} has credentials in a URL"
    text = (DEPLOY / "compose.yaml").read_text()
    assert not re.search(r"\$2[abxy]\$", text), "a bcrypt hash belongs in deploy/secrets/"
    assert not re.search(r"(?<![\w-])(password|token)\s*:", text, re.I), "a password in clear"


def test_nats_config_holds_no_password() -> None:
    for conf in (DEPLOY / "nats").glob("*.conf"):
        for line in conf.read_text().splitlines():
            m = re.search(r"\b(password|pass|token)\s*[:=]\s*(\S+)", line.split("#", 1)[0])
            if m:
                assert m.group(2).startswith("$"), f"{conf.name}: {line.strip()}"


# ---------------------------------------------------------------------------------------------
# Dockerfile, constraints, .dockerignore


def _dockerfile() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile() -> None:
    lines = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", "\n".join(lines), re.M))
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"base image {image} must be pinned to a full version"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]) and not users[-1].startswith("0"), users
    health = [line for line in lines if line.startswith("HEALTHCHECK ")]
    assert health and '"pbxbridge", "health"' in health[0]
    installs = [line for line in lines if "pip install" in line]
    assert any("-r deploy/constraints.txt" in line for line in installs)
    assert all("constraints.txt" in line for line in installs), "every install goes through the constraints"
    # the base image's Python is the one the constraints were generated with
    generated = re.search(r"Generated with Python (\d+\.\d+)", (DEPLOY / "constraints.txt").read_text()).group(1)
    assert re.match(rf"python:{re.escape(generated)}\.", args["PYTHON_IMAGE"]), (args, generated)
    ignore = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert ignore[0] == "**" and "!deploy/constraints.txt" in ignore and "!pbxbridge/" in ignore


def _pins() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_pin_the_runtime_and_nothing_from_sim_or_test() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt (python deploy/constraints.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
    extras = project["optional-dependencies"]
    for line in extras["sim"] + [r for r in extras["test"] if not r.startswith("pbxbridge")]:
        name = canonicalize_name(Requirement(line).name)
        assert name not in pins or name in {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}, (
            f"{name} (sim/test) must not reach the image"
        )


def test_runtime_imports_nothing_from_the_sim_extra() -> None:
    """The workers and `pbxbridge run` with numpy and every simulator module refused."""
    probe = textwrap.dedent(
        """
        import importlib, importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if (name.split(".")[0] == "numpy" or name.endswith(".simulator")
                        or name == "pbxbridge.vendors.sim_audio"):
                    raise ImportError(f"sim-only module imported: {name}")
        sys.meta_path.insert(0, Refuse())
        import pbxbridge.cli, pbxbridge.bus, pbxbridge.service, pbxbridge.sdk, pbxbridge.telemetry
        from pbxbridge import vendors
        for vendor in vendors.vendor_names():
            vendors.load(vendor)
            for part in ("feeds", "neutral", "recordings"):
                vendors.optional_module(vendor, part)
        for service in ("poller", "commander", "recordings"):
            importlib.import_module(f"services.{service}.worker")
            importlib.import_module(f"services.{service}")
        from typer.testing import CliRunner
        result = CliRunner().invoke(pbxbridge.cli.app, ["run", "--help"])
        assert result.exit_code == 0, result.output
        print("clean")
        """
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().endswith("clean"), run.stdout + run.stderr


def test_simulators_still_load_on_demand() -> None:
    from pbxbridge.vendors import load, vendor_names

    for vendor in vendor_names():
        assert load(vendor).Simulator.__name__.endswith("Simulator")


# ---------------------------------------------------------------------------------------------
# Helm


def test_chart_declares_the_nats_dependency_and_its_values() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    (dep,) = [d for d in chart["dependencies"] if d["name"] == "nats"]
    assert dep["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert dep["condition"] == "nats.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nats = values["nats"]["config"]
    assert nats["cluster"]["enabled"] and nats["cluster"]["replicas"] == 3
    assert nats["jetstream"]["enabled"] and nats["jetstream"]["fileStore"]["pvc"]["size"]
    assert any(k.endswith("$include") for k in nats["merge"])
    assert values["settings"]["PBX_REPLICAS"] == str(nats["cluster"]["replicas"])
    assert set(values["workers"]) == set(WORKERS)
    # the chart ships the same NATS users and permissions as deploy/nats/
    for name in ("accounts.conf", "permissions.conf"):
        assert (CHART / "files" / "nats" / name).read_text() == (DEPLOY / "nats" / name).read_text(), (
            f"copy deploy/nats/{name} to {CHART.relative_to(ROOT)}/files/nats/"
        )


def _render(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    helm_python = pytest.importorskip(
        "helm_python", reason="helm-python-sdk (Helm's engine) has wheels for x86_64 Linux only: templates not rendered"
    )
    chart_dir = tmp_path / "pbxbridge"
    shutil.copytree(CHART, chart_dir)
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    meta.pop("dependencies")  # the NATS chart is not fetched here (`helm dependency update`)
    (chart_dir / "Chart.yaml").write_text(yaml.safe_dump(meta))
    with helm_python.Chart.load(chart_dir) as chart:
        rendered = chart.render(values, name="pbx", namespace="telephony")
    docs = []
    for path, text in rendered.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_renders_the_workers(tmp_path: Path) -> None:
    docs = _render(tmp_path, {"workers": {"commander": {"replicas": 4}}})
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in _kind(docs, "Deployment")}
    assert set(deployments) == set(WORKERS)
    assert deployments["commander"]["spec"]["replicas"] == 4
    config_maps = {c["metadata"]["name"]: c for c in _kind(docs, "ConfigMap")}
    assert "[[accounts]]" in config_maps["pbx-pbxbridge"]["data"]["pbxbridge.toml"]
    assert config_maps["pbxbridge-nats-auth"]["data"]["permissions.conf"].strip() == (
        (DEPLOY / "nats" / "permissions.conf").read_text().strip()
    )
    for worker, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["run", worker]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e for e in container["env"]}
        assert env["PBX_NATS_USER"]["value"] == worker
        assert env["PBX_PROVISION"]["value"] == "verify"
        assert env["PBX_NATS_URL"]["value"] == "nats://pbx-nats:4222"
        for name, e in env.items():
            if SECRETISH.search(name):
                assert name.endswith("_FILE"), f"{worker}: {name} must name a file"
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        password = volumes["nats-password"]["secret"]
        assert password["items"] == [{"key": f"nats_{worker}_password", "path": "password"}]
        assert f"{mounts['nats-password']}/password" == env["PBX_NATS_PASSWORD_FILE"]["value"]
        assert volumes["vendor-secrets"]["secret"]["secretName"] and mounts["vendor-secrets"] == "/run/secrets"
        assert mounts["config"] == "/etc/pbxbridge"
    (service,) = _kind(docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    assert _kind(docs, "ServiceMonitor") == []


def test_chart_renders_the_provisioning_hook_and_service_monitor(tmp_path: Path) -> None:
    docs = _render(tmp_path, {"metrics": {"serviceMonitor": {"enabled": True}}})
    (job,) = _kind(docs, "Job")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "post-install" in hooks and "pre-upgrade" in hooks
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["provision"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PBX_NATS_USER"] == "admin" and "PBX_PROVISION" not in env
    (volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "nats-password"]
    assert volume["secret"]["items"] == [{"key": "nats_admin_password", "path": "password"}]
    (monitor,) = _kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_chart_with_an_external_nats(tmp_path: Path) -> None:
    docs = _render(tmp_path, {"nats": {"enabled": False}, "natsUrl": "tls://nats.example:4222", "provision": {"enabled": False}})
    assert _kind(docs, "Job") == []
    assert "pbxbridge-nats-auth" not in {c["metadata"]["name"] for c in _kind(docs, "ConfigMap")}
    for dep in _kind(docs, "Deployment"):
        env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["PBX_NATS_URL"] == "tls://nats.example:4222"
