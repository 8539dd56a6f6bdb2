"""Static checks of the deployment files: images, compose cluster, KubeRay manifests, guide.

No Docker engine or Kubernetes runs here, so these tests read the files the way those tools
would and check what can be checked without them: every YAML parses; every file, command, CLI
option and config key the files name exists; ports, volumes, health checks and GPU requests are
consistent across compose, Kubernetes and the guide; the images install the versions pinned in
pyproject.toml, dependencies before source, as a non-root user.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from motorsearch.cli import COMMANDS, build_parser
from motorsearch.config import check_path

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
DASHBOARD, GCS, CLIENT, MLFLOW, AGENT = 8265, 6379, 10001, 5000, 52365
SEARCH_SPACE = "search_spaces/byu.yaml"
IMAGES = ("Dockerfile", "Dockerfile.cpu")

sys.path.insert(0, str(DOCKER))
from requirements_from_pyproject import requirement_name, runtime_requirements  # noqa: E402


class ComposeLoader(yaml.SafeLoader):
    """safe_load plus Compose's merge tags (``!reset``, ``!override``) used by override files."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)
ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node, deep=True)
                              if not isinstance(node, yaml.ScalarNode) else loader.construct_scalar(node))

_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` with the given environment (defaults when unset or empty)."""
    env = env or {}
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def load_compose(name: str = "compose.yaml") -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=ComposeLoader)


def k8s_objects() -> list[dict]:
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return objects


def k8s_object(kind: str, name: str | None = None) -> dict:
    found = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def guide_text() -> str:
    """docker/README.md's "Scaling out" section; "" without one."""
    readme = (DOCKER / "README.md").read_text()
    match = re.search(r"^## Scaling out\n.*?(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    return match.group(0) if match else ""


def pyproject_dependencies() -> dict[str, str]:
    with open(REPO / "pyproject.toml", "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    return {requirement_name(dep): dep for dep in deps}


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{name}: dangling line continuation"
    return instructions


def build_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def shell_commands(text: str) -> list[list[str]]:
    """A shell line split into simple commands at ``&&``, ``||``, ``;`` and ``|`` (quotes respected)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def pip_installs(instructions: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """(instruction index, argv) of every ``pip install`` in RUN instructions, ARGs expanded."""
    args = build_args(instructions)
    found = []
    for index, (keyword, rest) in enumerate(instructions):
        if keyword != "RUN":
            continue
        for words in shell_commands(expand(rest, args)):
            if words[:2] == ["pip", "install"]:
                found.append((index, words[2:]))
    return found


def first_index(instructions: list[tuple[str, str]], predicate) -> int:
    return next(i for i, instruction in enumerate(instructions) if predicate(*instruction))


@pytest.mark.parametrize("name", IMAGES)
def test_image_pins_torch_from_the_pytorch_index_to_pyprojects_version(name):
    instructions = dockerfile_instructions(name)
    torch_pin = pyproject_dependencies()["torch"]
    assert torch_pin.startswith("torch==")
    torch_installs = [argv for _, argv in pip_installs(instructions) if any(a.startswith("torch") for a in argv)]
    assert len(torch_installs) == 1, torch_installs
    argv = torch_installs[0]
    assert torch_pin in argv, argv
    index = argv[argv.index("--index-url") + 1]
    assert index.startswith("https://download.pytorch.org/whl/"), index
    base = expand(next(rest for keyword, rest in instructions if keyword == "FROM"), build_args(instructions))
    if name == "Dockerfile":
        match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu[\d.]+", base)
        assert match, f"GPU image must start FROM a CUDA runtime image, got {base!r}"
        assert index.endswith(f"/cu{match.group(1)}{match.group(2)}"), (base, index)  # same CUDA version
    else:
        assert base == "python:3.11-slim" and index.endswith("/whl/cpu"), (base, index)


def test_dockerfile_from_line_resolves_its_arg():
    instructions = dockerfile_instructions("Dockerfile")
    assert instructions[0][0] == "ARG" and instructions[1] == ("FROM", "${CUDA_IMAGE}")


@pytest.mark.parametrize("name", IMAGES)
def test_image_installs_pyprojects_dependencies_before_the_source(name):
    instructions = dockerfile_instructions(name)
    installs = pip_installs(instructions)
    script = "docker/requirements_from_pyproject.py"
    copies_script = first_index(instructions, lambda k, r: k == "COPY" and script in r.split())
    deps_run = first_index(instructions, lambda k, r: k == "RUN" and "requirements_from_pyproject.py" in r)
    run_text = instructions[deps_run][1]
    assert "pyproject.toml --exclude torch" in run_text and "> /tmp/build/requirements.txt" in run_text
    assert any(i == deps_run and argv == ["-r", "/tmp/build/requirements.txt"] for i, argv in installs), installs
    source_copy = first_index(instructions, lambda k, r: k == "COPY" and r.split()[0] == "motorsearch")
    project_install = [i for i, argv in installs if argv == ["--no-deps", "."]]
    assert copies_script < deps_run < source_copy < project_install[0], "dependency layers must precede the source"
    torch_run = next(i for i, argv in installs if any(a.startswith("torch==") for a in argv))
    assert torch_run < deps_run  # the biggest, least changing layer first
    # The dependency layers see nothing of the repository but pyproject.toml and the script.
    for keyword, rest in instructions[:deps_run]:
        if keyword == "COPY":
            assert set(rest.split()[:-1]) <= {"pyproject.toml", script}, rest


def test_requirements_script_lists_every_runtime_dependency_but_torch():
    deps = pyproject_dependencies()
    printed = subprocess.run([sys.executable, str(DOCKER / "requirements_from_pyproject.py"),
                              str(REPO / "pyproject.toml"), "--exclude", "torch"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert printed == [dep for name, dep in deps.items() if name != "torch"]
    assert any(line.startswith("ray[") and "default" in line for line in printed)  # the dashboard
    assert {"monai", "optuna", "mlflow", "ray"} <= {requirement_name(line) for line in printed}


@pytest.mark.parametrize(("requirement", "name"), [
    ("ray[default,tune]==2.60.0", "ray"),
    ("Pillow>=10", "pillow"),
    ("zope.interface", "zope-interface"),
    ("typing_extensions ; python_version<'3.12'", "typing-extensions"),
    ("mlflow>=3.17,<3.19", "mlflow"),
])
def test_requirement_name(requirement, name):
    assert requirement_name(requirement) == name


def test_requirements_script_refuses_a_pyproject_without_dependencies(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\n')
    with pytest.raises(ValueError, match=r"\[project\]\.dependencies"):
        runtime_requirements(bad)
    bad.write_text('[project]\ndependencies = ["torch==2.13.0", "Numpy>=2"]\n')
    assert runtime_requirements(bad, exclude=("TORCH",)) == ["Numpy>=2"]


@pytest.mark.parametrize("name", [*IMAGES, "Dockerfile.mlflow"])
def test_images_run_as_a_non_root_user(name):
    users = [rest for keyword, rest in dockerfile_instructions(name) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users


@pytest.mark.parametrize("name", [*IMAGES, "Dockerfile.mlflow"])
def test_every_copied_path_exists_and_is_not_dockerignored(name):
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for keyword, rest in dockerfile_instructions(name):
        if keyword != "COPY":
            continue
        sources = [word for word in rest.split()[:-1] if not word.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"{name}: COPY {source}: no such file in the repository"
            assert source not in ignored and source.split("/")[0] not in ignored, f"{name}: {source} is dockerignored"


def test_dockerignore_keeps_caches_data_and_secrets_out_of_the_context():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", ".motorsearch", "mlflow.db", "docker/.env"} <= ignored


@pytest.mark.parametrize("name", IMAGES)
def test_image_entrypoint_is_the_repositorys_script(name):
    instructions = dockerfile_instructions(name)
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"]
    installed = {words[-1]: words[0] for words in copies}
    entrypoint = next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT")
    program = yaml.safe_load(entrypoint)[-1]  # JSON form: ["tini", "--", "/usr/local/bin/..."]
    target = next(t for t in installed if t.endswith("/" + program) or t == program)
    assert installed[target] == "docker/entrypoint.sh"


def test_mlflow_image_installs_pyprojects_mlflow_range():
    installs = [argv for _, argv in pip_installs(dockerfile_instructions("Dockerfile.mlflow"))]
    assert installs and pyproject_dependencies()["mlflow"] in installs[0]
    assert any(a.startswith("psycopg2") for a in installs[0])  # the Postgres backend store


# --- entrypoint -------------------------------------------------------------------------------


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), *args], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=10)


def test_entrypoint_is_valid_bash_and_runs_other_commands_as_given():
    assert subprocess.run(["bash", "-n", str(DOCKER / "entrypoint.sh")]).returncode == 0
    done = entrypoint("echo", "hello", "world", env={})
    assert (done.returncode, done.stdout) == (0, "hello world\n")


def test_entrypoint_refuses_token_mode_without_a_token():
    done = entrypoint("worker", env={"RAY_AUTH_MODE": "token"})
    assert done.returncode == 2
    assert "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH" in done.stderr


def test_entrypoint_roles_match_the_compose_commands():
    text = (DOCKER / "entrypoint.sh").read_text()
    services = load_compose()["services"]
    for service in ("ray-head", "ray-worker"):
        role = services[service]["command"][0]
        assert re.search(rf"^\s+{role}\)$", text, re.MULTILINE), f"entrypoint.sh has no `{role})` case"
    assert f'RAY_GCS_PORT:-{GCS}' in text and f'RAY_DASHBOARD_PORT:-{DASHBOARD}' in text
    assert f'RAY_CLIENT_PORT:-{CLIENT}' in text and f'RAY_AGENT_PORT:-{AGENT}' in text
    assert 'RAY_HEAD_NUM_CPUS:-0' in text and "--disable-usage-stats" in text


# --- compose ----------------------------------------------------------------------------------


def test_compose_files_parse_and_the_cpu_override_names_existing_services():
    base, cpu = load_compose(), load_compose("compose.cpu.yaml")
    assert set(base["services"]) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    assert set(cpu["services"]) <= set(base["services"])
    for service in cpu["services"].values():
        if "build" in service:
            assert service["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "deploy" in cpu["services"]["ray-worker"] and cpu["services"]["ray-worker"]["deploy"] is None  # !reset


@pytest.mark.parametrize("name", ["compose.yaml", "compose.cpu.yaml"])
def test_compose_builds_from_existing_dockerfiles(name):
    for service in load_compose(name)["services"].values():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == REPO
            assert (context / service["build"]["dockerfile"]).is_file()


def test_every_compose_service_has_a_healthcheck_on_its_own_port():
    expected = {"ray-head": DASHBOARD, "ray-worker": AGENT, "mlflow": MLFLOW}
    for name, service in load_compose()["services"].items():
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        if name in expected:
            assert f"http://127.0.0.1:{expected[name]}/" in " ".join(test), name
    assert "pg_isready" in " ".join(load_compose()["services"]["postgres"]["healthcheck"]["test"])


def test_services_start_in_order_of_health():
    services = load_compose()["services"]
    chain = {"mlflow": "postgres", "ray-head": "mlflow", "ray-worker": "ray-head"}
    for service, dependency in chain.items():
        assert services[service]["depends_on"] == {dependency: {"condition": "service_healthy"}}


def test_published_ports_bind_127_0_0_1_unless_opted_in():
    published = {}
    for name, service in load_compose()["services"].items():
        for entry in service.get("ports", []):
            host_ip, host_port, container_port = interpolate(entry).rsplit(":", 2)
            assert host_ip == "127.0.0.1", (name, entry)
            assert interpolate(entry, {"MOTORSEARCH_BIND": "0.0.0.0"}).startswith("0.0.0.0:")
            assert host_port == container_port
            published[int(container_port)] = name
    assert published == {DASHBOARD: "ray-head", GCS: "ray-head", CLIENT: "ray-head", MLFLOW: "mlflow"}


def test_ray_nodes_share_the_storage_volume_at_the_same_path():
    compose = load_compose()
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert head["volumes"] == worker["volumes"]
    mounts = dict(v.split(":")[:2] for v in head["volumes"])
    assert mounts["shared"] == "/shared" and mounts["cache"] == "/workspace/.motorsearch"
    named = {source for source in mounts if not source.startswith(("$", ".", "/"))}
    assert named <= set(compose["volumes"])
    token_path = head["environment"]["RAY_AUTH_TOKEN_PATH"]
    assert token_path.startswith(mounts["shared"] + "/")  # the workers read the head's token


def test_gpu_worker_reserves_nvidia_gpus_and_can_be_scaled():
    worker = load_compose()["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
    assert interpolate(str(devices[0]["count"])) == "all"
    assert "container_name" not in worker and "ports" not in worker  # --scale ray-worker=N needs neither


def test_ray_environment_points_at_services_that_exist():
    compose = load_compose()
    services = compose["services"]
    for name in ("ray-head", "ray-worker"):
        env = {k: interpolate(str(v)) for k, v in services[name]["environment"].items()}
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_HEAD_ADDRESS"] == f"ray-head:{GCS}" and services["ray-head"]["hostname"] == "ray-head"
        assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{MLFLOW}"
    assert services["ray-head"]["environment"]["RAY_HEAD_NUM_CPUS"] == "0"


def test_mlflow_service_uses_postgres_and_proxied_artifacts_on_a_volume():
    services = load_compose()["services"]
    command = [interpolate(str(part)) for part in services["mlflow"]["command"]]
    assert command[:2] == ["mlflow", "server"]
    options = dict(part.split("=", 1) if "=" in part else (part, "") for part in command[2:])
    assert options["--port"] == str(MLFLOW) and options["--host"] == "0.0.0.0"
    assert "--serve-artifacts" in options
    backend = options["--backend-store-uri"]
    assert re.fullmatch(r"postgresql://mlflow:[^@]+@postgres:5432/mlflow", backend), backend
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "mlflow"
    mounts = dict(v.split(":")[:2] for v in services["mlflow"]["volumes"])
    assert mounts["mlartifacts"] == options["--artifacts-destination"] == "/mlartifacts"
    assert "mlflow:*" in options["--allowed-hosts"].split(",")  # Ray nodes send Host: mlflow:5000


# --- Kubernetes -------------------------------------------------------------------------------


def test_k8s_manifests_parse_with_kinds_and_names():
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in k8s_objects())
    assert ("RayCluster", "motorsearch") in kinds and ("RayJob", "motorsearch-byu") in kinds
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("Service", "postgres"),
            ("StatefulSet", "postgres"), ("PersistentVolumeClaim", "mlflow-artifacts")} <= set(kinds)
    assert all("apiVersion" in o for o in k8s_objects())


def test_raycluster_version_auth_and_head_without_trials():
    cluster = k8s_object("RayCluster")
    ray_pin = pyproject_dependencies()["ray"]
    assert ray_pin.endswith("==" + cluster["spec"]["rayVersion"])
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"gcs-server": GCS, "dashboard": DASHBOARD, "client": CLIENT}


def _pod_mounts(pod_spec: dict) -> dict[str, tuple[str, str | None]]:
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {}
    for mount in pod_spec["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume.get("persistentVolumeClaim", {}).get("claimName") or mount["name"]
        mounts[mount["mountPath"]] = (source, mount.get("subPath"))
    return mounts


def test_raycluster_gpu_workers_and_shared_storage_at_the_same_path():
    cluster = k8s_object("RayCluster")
    head_pod = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    head_mounts = _pod_mounts(head_pod)
    for group in groups:
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert pod["containers"][0]["image"] == head_pod["containers"][0]["image"]
        assert _pod_mounts(pod) == head_mounts
    claim = head_mounts["/shared"][0]
    pvc = k8s_object("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert head_mounts["/workspace/.motorsearch"][0] == claim  # the cache on the same shared volume


def test_raycluster_gpu_workers_fit_as_many_byu_trials_by_cpu_as_by_gpu():
    # a worker with too few CPUs leaves part of each card idle (8 CPUs ran two 0.25-GPU trials, not four)
    resources = yaml.safe_load((REPO / "search_spaces" / "byu.yaml").read_text())["resources"]
    for group in k8s_object("RayCluster")["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "num-cpus" not in group["rayStartParams"] and "num-gpus" not in group["rayStartParams"]
        by_gpu = int(limits["nvidia.com/gpu"]) / resources["gpu"]
        by_cpu = int(limits["cpu"]) // resources["cpu"]
        assert (by_cpu, by_gpu) == (4, 4), (group["groupName"], limits, resources)


def test_gpu_image_checks_the_cuda_of_its_torch_and_names_the_driver_it_needs():
    text = (DOCKER / "Dockerfile").read_text()
    assert "torch.version.cuda" in text and "${TORCH_INDEX##*/cu}" in text
    assert "R580" in text and "R580" in (REPO / "README.md").read_text() and "R580" in (DOCKER / "README.md").read_text()
    index = build_args(dockerfile_instructions("Dockerfile"))["TORCH_INDEX"]
    assert index.rsplit("/cu", 1)[1] == "130"  # what the shell expansion compares torch.version.cuda with


def mlflow_service_url() -> str:
    service = k8s_object("Service", "mlflow")
    return f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"


def test_ray_pods_and_the_job_log_to_the_mlflow_service():
    url = mlflow_service_url()
    assert url == f"http://mlflow:{MLFLOW}"
    cluster = k8s_object("RayCluster")
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster["spec"]["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
        assert env["MLFLOW_TRACKING_URI"] == url
    job = k8s_object("RayJob")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"] == url
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


def test_k8s_mlflow_deployment_serves_artifacts_from_its_volume_and_uses_postgres():
    deployment = k8s_object("Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    service = k8s_object("Service", "mlflow")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == MLFLOW
    command = pod["containers"][0]["command"]
    options = dict(part.split("=", 1) if "=" in part else (part, "") for part in command[2:])
    assert command[:2] == ["mlflow", "server"] and options["--port"] == str(MLFLOW)
    assert "--serve-artifacts" in options
    mounts = _pod_mounts(pod)
    assert mounts[options["--artifacts-destination"]][0] == "mlflow-artifacts"
    host, port = re.search(r"@([\w.-]+):(\d+)/", options["--backend-store-uri"]).groups()
    postgres = k8s_object("Service", host)
    assert int(port) == postgres["spec"]["ports"][0]["port"] == 5432
    statefulset = k8s_object("StatefulSet", "postgres")
    assert postgres["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    probe = pod["containers"][0]["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/health", MLFLOW)


# --- the search commands in the files and the guide ------------------------------------------


def documented_commands() -> dict[str, list[str]]:
    """Every ``python -m motorsearch ...`` the deployment files and the guide tell users to run."""
    sources = {
        "rayjob.yaml": k8s_object("RayJob")["spec"]["entrypoint"],
        "compose.yaml": re.sub(r"\\\n#\s*", " ", (DOCKER / "compose.yaml").read_text()),
        "guide": guide_text(),
    }
    commands = {}
    for source, text in sources.items():
        for number, match in enumerate(re.finditer(r"python -m motorsearch [^\n`&|]*", text)):
            argv = shlex.split(match.group(0))[3:]
            commands[f"{source}#{number}"] = [word for word in argv if not word.startswith("#")]
    return commands


def test_the_guide_and_files_document_a_search_command():
    commands = documented_commands()
    assert any(k.startswith("rayjob.yaml") for k in commands)
    assert any(k.startswith("compose.yaml") for k in commands)
    assert any(k.startswith("guide") for k in commands), "docker/README.md 'Scaling out' must show how to run a search"


@pytest.mark.parametrize("where", sorted(documented_commands()))
def test_documented_commands_parse_with_the_real_cli(where):
    argv = documented_commands()[where]
    assert argv and argv[0] in COMMANDS, f"{where}: unknown command {argv[:1]}"
    if argv[0] != "run":
        return
    options = run_option_strings()
    for word in argv:  # exact names: argparse would also accept a prefix such as --storage
        if word.startswith("--"):
            assert word.split("=", 1)[0] in options, f"{where}: `run` has no option {word}"
    args = build_parser().parse_args(argv)  # an unknown option exits here (SystemExit 2)
    assert args.space == SEARCH_SPACE, where
    assert (REPO / args.space).is_file(), f"{where}: {args.space} does not exist"
    assert args.address == "auto", where
    for override in args.overrides:
        check_path(override.split("=", 1)[0], where=f"{where}: --set {override}")
    if args.storage_path is not None:
        assert args.storage_path.startswith("/shared/"), where  # on the volume every node mounts
        # More than one node: the search refuses a storage path not declared shared.
        space_file = yaml.safe_load((REPO / args.space).read_text())
        assert getattr(args, "storage_shared", False) or space_file.get("storage_shared") is True, where


def run_option_strings() -> set[str]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices["run"]._option_string_actions)


def test_rayjob_runs_the_byu_search_from_the_image_workdir():
    entrypoint = k8s_object("RayJob")["spec"]["entrypoint"]
    assert entrypoint.startswith("cd /workspace && ")
    workdirs = [rest for keyword, rest in dockerfile_instructions("Dockerfile") if keyword == "WORKDIR"]
    assert workdirs == ["/workspace"]
    assert f"python -m motorsearch run {SEARCH_SPACE} --address auto" in " ".join(entrypoint.split())


def test_the_guide_covers_ports_auth_storage_nodes_and_the_dashboard():
    text = guide_text()
    assert text, "docker/README.md needs its 'Scaling out' section"
    for port in (DASHBOARD, GCS, CLIENT, MLFLOW):
        assert f"| {port} |" in text, port
    assert "docker compose -f docker/compose.yaml up -d --build --wait" in text
    assert "docker compose -f docker/compose.yaml exec ray-head python -m motorsearch run" in text
    assert "ray get-auth-token" in text and "RAY_AUTH_TOKEN" in text
    for heading in ("### Shared storage", "### The MLflow server", "### Adding nodes", "### What to watch"):
        assert heading in text
