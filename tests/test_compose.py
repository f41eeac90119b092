"""The docker-compose demo, checked without a Docker engine (none runs where the tests run).

What can be checked here is checked against the real thing: the Compose Specification's own JSON schema
(tests/data/compose-spec.md says where it comes from), the real CLI parser, the real config loader and
the source code that reads the environment. What needs an engine (images pulled and built, containers
talking to each other) is not: docs/docker-compose.md says which is which.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lambda_pipeline.cli.parser import build_parser
from lambda_pipeline.core.config_loader import ENVIRONMENT_VARIABLES, load_settings
from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.locations import Locations, local_path
from lambda_pipeline.deploy.project import read_project
from lambda_pipeline.pipelines.registry import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
APP_IMAGE = "lambda-pipeline:local"
# The packages whose code the containers run: where an environment variable must actually be read.
SOURCE_DIRS = ("lambda_pipeline", "batch_layer", "speed_layer", "serving_layer", "pipelines")

# Variables set for the application's containers that the project does not read itself: each one is read
# by a documented third-party program, named here with the reason.
THIRD_PARTY_VARIABLES = {
    "JAVA_HOME": "Spark's launch scripts and lambda_pipeline.core.java.check_java find Java through it",
    "PYSPARK_PYTHON": "PySpark: the Python that executors on the Spark worker start for Python code",
    "PYTHONUNBUFFERED": "CPython: progress lines reach 'docker compose logs' at once",
    "PYTHONPATH": "CPython: /project, the mounted user project, is on the path: the loader imports its modules",
    "PIP_NO_CACHE_DIR": "pip, at build time only: no wheel cache left in the image",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, at build time only: no network check for a newer pip",
}
# The official apache/kafka image reads KAFKA_<property> as broker properties, and CLUSTER_ID for the KRaft
# storage format (its docker/examples/README.md).
KAFKA_IMAGE_VARIABLES = re.compile(r"^(KAFKA_[A-Z0-9_]+|CLUSTER_ID)$")
EXPECTED_VERBS = {"kafka", "generate", "ingest", "batch", "maintain", "query", "serve"}


# The host's variables the file interpolates on purpose: the address published ports bind to, the query
# server's token (a secret: from the host's environment, never from the file), the user's project folder and
# pipeline, and the question of the 'query' service.
INTERPOLATED = {
    "LAMBDA_PIPELINE_PUBLISH_ADDRESS",
    "LAMBDA_PIPELINE_SERVE_TOKEN",
    "LAMBDA_PIPELINE_PROJECT",
    "LAMBDA_PIPELINE_PIPELINE",
    "LAMBDA_PIPELINE_QUERY_SQL",
}
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(text: str, environ: dict[str, str]) -> str:
    """Compose's interpolation of ``${NAME}``, ``${NAME:-default}`` (default when unset or empty) and ``$$``."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environ.get(match.group(1)) or (match.group(2) or "")

    return INTERPOLATION.sub(value, text)


def _compose(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as compose reads it with the host's ``environ`` (default: none of the variables set)."""
    return yaml.safe_load(_interpolate(COMPOSE_FILE.read_text(encoding="utf-8"), environ or {}))


def _app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == APP_IMAGE}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the "NAME=value" form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _argv(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else shlex.split(value or "")


def _lambda_pipeline_calls(service: dict[str, Any]) -> Iterator[list[str]]:
    """The argument lists of every ``lambda-pipeline`` call in a service's entrypoint + command, including
    the simple commands of a ``sh -c`` script."""
    argv = _argv(service.get("entrypoint")) + _argv(service.get("command"))
    if argv[:2] in (["sh", "-c"], ["bash", "-c"], ["/bin/sh", "-c"]):
        script = argv[2].replace("\\\n", " ").replace("\n", " ; ")  # a newline ends a command too
        lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words = [*list(lexer), ";"]
        simple: list[str] = []
        for word in words:
            if word in (";", "&&", "||", "|", "&") or word.endswith(";"):
                if simple and simple[0] in ("do", "then", "else"):
                    simple = simple[1:]
                if simple and simple[0] == "lambda-pipeline":
                    yield simple[1:]
                simple = []
            else:
                simple.append(word)
    elif argv and argv[0] == "lambda-pipeline":
        yield argv[1:]


# ---- the compose file ------------------------------------------------------------------------------------


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    compose = _compose()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    assert "version" not in compose, "the top-level 'version' key is obsolete in the Compose Specification"
    # The schema does bite: the same file with a wrong depends_on condition is refused.
    broken = json.loads(json.dumps(compose))
    broken["services"]["batch"]["depends_on"]["ingest"]["condition"] = "service_ready"
    assert any("service_ready" in e.message for e in validator.iter_errors(broken))


PUBLISH_ADDRESS = "${LAMBDA_PIPELINE_PUBLISH_ADDRESS:-127.0.0.1}"


def test_compose_file_has_no_interpolation_by_accident() -> None:
    """Compose replaces ``$NAME`` with the host's environment: a '$' meant for a container would vanish.
    Only the variables of INTERPOLATED are interpolated, each on purpose."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(0) != "$$"}
    assert used == INTERPOLATED
    assert re.findall(r"\$", INTERPOLATION.sub("", text)) == []


def test_published_ports_bind_to_loopback_unless_overridden() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    published = [(name, port) for name, svc in raw["services"].items() for port in svc.get("ports", [])]
    assert published, "the compose file publishes the Kafka and Spark UI ports"
    for name, port in published:
        assert isinstance(port, str) and port.startswith(PUBLISH_ADDRESS + ":"), (name, port)


def test_every_lambda_pipeline_command_parses_with_the_real_cli() -> None:
    parser = build_parser()
    verbs = set()
    for name, service in _compose()["services"].items():
        for args in _lambda_pipeline_calls(service):
            try:
                parsed = parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"service {name}: 'lambda-pipeline {shlex.join(args)}' does not parse")
            verbs.add(parsed.verb)
    assert verbs == EXPECTED_VERBS


def test_the_query_service_reads_views_and_tables_that_exist() -> None:
    settings = load_settings(ROOT / "conf" / "docker.yaml", environ={})
    pipeline = load_pipeline(settings.pipeline, origin="conf/docker.yaml")
    known = {f"{layer}.{v.name}" for layer in ("serving", "batch", "speed") for v in pipeline.views}
    known |= {f"master.{settings.tables.master}", f"master.{settings.tables.quarantine}"}
    (call,) = list(_lambda_pipeline_calls(_compose()["services"]["query"]))
    args = build_parser().parse_args(call)
    named = set(re.findall(r"\b(?:serving|batch|speed|master)\.\w+", args.sql))
    assert named and named <= known


def test_a_user_project_mounted_at_project_runs_in_every_service(tmp_path: Path) -> None:
    """With the host's LAMBDA_PIPELINE_PROJECT and _PIPELINE set, every application container mounts the folder
    read-only at /project and loads the user's pipeline from there: each service's lambda-pipeline calls run
    here, in a process standing in for the container (/project mapped to the folder, another working
    directory), up to the loaded pipeline."""
    from tests.user_pipeline import write_module

    default = _compose()  # without the variables: the folder ./project, which exists, and the demo's pipeline
    assert all("./project:/project:ro" in s["volumes"] for s in _app_services(default).values())
    assert (ROOT / "project" / "README.md").is_file() and _docker_ignored("project")  # mounted, never baked in
    assert {_environment(s)["LAMBDA_PIPELINE_PIPELINE"] for s in _app_services(default).values()} == {"clickstream"}

    project = tmp_path / "payments"
    write_module(project, "pipeline.py")
    host = {
        "LAMBDA_PIPELINE_PROJECT": str(project),
        "LAMBDA_PIPELINE_PIPELINE": "pipeline.py:PIPELINE",
        "LAMBDA_PIPELINE_QUERY_SQL": "SELECT merchant_id, payments FROM serving.merchant_all_time ORDER BY 2 DESC",
    }
    compose = _compose(host)
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    assert [e.message for e in validator.iter_errors(compose)] == []
    assert all(f"{project}:/project:ro" in s["volumes"] for s in _app_services(compose).values()), (
        "the jobs and the Spark worker (its Python workers) see the same modules"
    )
    (query,) = list(_lambda_pipeline_calls(compose["services"]["query"]))
    assert query[1] == host["LAMBDA_PIPELINE_QUERY_SQL"]

    code = """import json, sys
from lambda_pipeline.cli.context import pipeline_of
from lambda_pipeline.cli.parser import build_parser
from lambda_pipeline.core.config_loader import load_settings
for argv in json.loads(sys.argv[1]):
    args = build_parser().parse_args(argv)
    pipeline = pipeline_of(args, load_settings(args.config, args.overrides))
    print(argv[0], pipeline.name, [v.name for v in pipeline.views], sys.modules["pipeline"].__file__)
"""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    loaded = 0
    for name, service in _app_services(compose).items():
        calls = [c for c in _lambda_pipeline_calls(service) if c[0] != "kafka"]
        if not calls:
            continue
        env = _environment(service)
        assert (
            env["PYTHONPATH"].split(":") == ["/project"] and env["LAMBDA_PIPELINE_PIPELINE"] == "pipeline.py:PIPELINE"
        )
        env |= {"PYTHONPATH": str(project), "LAMBDA_PIPELINE_CONFIG": str(ROOT / "conf" / "docker.yaml")}
        result = subprocess.run(
            [sys.executable, "-c", code, json.dumps(calls)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=elsewhere,
            env={k: v for k, v in os.environ.items() if not k.startswith(("LAMBDA_PIPELINE_", "PYTHON"))} | env,
        )
        assert result.returncode == 0, f"{name}: {result.stderr}"
        for line, call in zip(result.stdout.splitlines(), calls, strict=True):
            views = "['failed_hourly', 'country_hopping', 'merchant_all_time', 'everything']"
            assert line == f"{call[0]} payments {views} {project / 'pipeline.py'}", name
            loaded += 1
    assert loaded >= 5  # generate, ingest, batch, maintain, query, serve


def test_jobs_start_after_kafka_is_healthy_and_the_topic_exists() -> None:
    services = _compose()["services"]
    assert "healthcheck" in services["kafka"]
    init = services["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert list(_lambda_pipeline_calls(init)) == [["kafka", "create-topic"]]
    for name in ("generator", "ingest"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "speed" not in services  # ingest writes the speed partials itself (the one hop)
    for name in ("batch", "maintain", "query", "serve"):
        assert services[name]["depends_on"]["ingest"]["condition"] == "service_healthy"
    for name in ("ingest", "batch"):
        assert services[name]["depends_on"]["spark-worker"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"


def test_kafka_is_one_kraft_node_that_the_jobs_can_reach() -> None:
    import base64

    kafka = _compose()["services"]["kafka"]
    env = _environment(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) == set(protocols)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"] and voter == f"{kafka['hostname']}{listeners[controller]}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    assert f"{kafka['hostname']}:9092" in _advertised(kafka)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # kafka-init creates the topic, with its partitions
    cluster_id = base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")  # KRaft wants a base64 UUID
    assert len(cluster_id) == 16 and len(env["CLUSTER_ID"]) == 22
    assert kafka["volumes"] == ["kafka-data:/var/lib/kafka/data"] and env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


def test_the_ingest_healthcheck_looks_where_ingest_writes_the_master_table() -> None:
    services = _compose()["services"]
    env = _environment(services["ingest"])
    settings = load_settings(None, environ=env | {"LAMBDA_PIPELINE_CONFIG": str(ROOT / "conf" / "docker.yaml")})
    test = services["ingest"]["healthcheck"]["test"]
    assert test == ["CMD", "test", "-d", f"{local_path(Locations.create(settings).master)}/_delta_log"]


def test_the_config_the_containers_read_loads_and_matches_the_services() -> None:
    compose = _compose()
    services = compose["services"]
    workdir = _image_workdir()
    for name, service in _app_services(compose).items():
        env = _environment(service)
        config = env["LAMBDA_PIPELINE_CONFIG"]
        assert config.startswith(f"{workdir}/"), f"{name}: the config must be inside the image's {workdir}"
        local = ROOT / config.removeprefix(f"{workdir}/")
        assert local.is_file() and not _docker_ignored(local.relative_to(ROOT).as_posix())
        # The file and the service's own overrides load together, as the job will load them.
        settings = load_settings(None, environ=env | {"LAMBDA_PIPELINE_CONFIG": str(local)})
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert str(local_path(settings.workdir)) in mounts, f"{name}: the work directory must be on the shared volume"
        assert settings.ingest.source == "kafka"
        assert settings.ingest.kafka.bootstrap_servers in _advertised(services["kafka"])
        if name not in {"query", "serve", "maintain"}:  # these run in local mode on purpose
            assert settings.spark.master == _master_url(services["spark-master"]), name
    assert services["spark-worker"]["command"][-1] == _master_url(services["spark-master"])


def _image_workdir() -> str:
    (workdir,) = [args for op, args in _dockerfile() if op == "WORKDIR"]
    return workdir


def _advertised(kafka: dict[str, Any]) -> set[str]:
    listeners = _environment(kafka)["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return {listener.split("://", 1)[1] for listener in listeners}


def _master_url(master: dict[str, Any]) -> str:
    command = master["command"]
    assert command[:2] == ["spark-class", "org.apache.spark.deploy.master.Master"]
    option = dict(zip(command[2::2], command[3::2], strict=True))
    assert master["hostname"] == option["--host"]
    return f"spark://{option['--host']}:{option['--port']}"


def test_spark_runs_from_the_pyspark_package() -> None:
    """The standalone master and worker start with the 'spark-class' that pyspark from PyPI ships."""
    import pyspark

    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").is_file()
    services = _compose()["services"]
    assert services["spark-master"]["image"] == services["spark-worker"]["image"] == APP_IMAGE
    assert services["spark-worker"]["command"][:2] == ["spark-class", "org.apache.spark.deploy.worker.Worker"]


# ---- environment variables ------------------------------------------------------------------------------


def _sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py")))


def _read_in_code(name: str, sources: str) -> bool:
    """Whether the code reads ``name`` from the environment (os.environ[...], .get(...), a Mapping param)."""
    return re.search(rf"environ(?:\.get\(|\[)\s*[\"']{re.escape(name)}[\"']", sources) is not None


def test_every_variable_of_the_project_is_read_by_the_code() -> None:
    sources = _sources()
    assert set(ENVIRONMENT_VARIABLES) >= {"LAMBDA_PIPELINE_CONFIG", "LAMBDA_PIPELINE_WORKDIR", "LAMBDA_PIPELINE_SET"}
    assert [name for name in ENVIRONMENT_VARIABLES if not _read_in_code(name, sources)] == []
    # and the other way round: every LAMBDA_PIPELINE_* the code reads is declared
    read = set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](LAMBDA_PIPELINE_[A-Z_]+)[\"']", sources))
    assert read <= set(ENVIRONMENT_VARIABLES)


def test_every_variable_set_for_the_containers_is_read_by_someone() -> None:
    sources = _sources()
    compose = _compose()
    app_vars = {name for s in _app_services(compose).values() for name in _environment(s)}
    app_vars |= {name for op, args in _dockerfile() if op == "ENV" for name in _env_names(args)}
    assert app_vars >= {"LAMBDA_PIPELINE_CONFIG", "LAMBDA_PIPELINE_WORKDIR", "LAMBDA_PIPELINE_SET"}
    unexplained = [
        name
        for name in sorted(app_vars)
        if not (name in ENVIRONMENT_VARIABLES and _read_in_code(name, sources)) and name not in THIRD_PARTY_VARIABLES
    ]
    assert unexplained == []
    kafka_vars = _environment(compose["services"]["kafka"])
    assert [name for name in kafka_vars if not KAFKA_IMAGE_VARIABLES.match(name)] == []


def test_what_the_compose_comments_point_at_exists() -> None:
    """A comment naming a file that moved, or a name that left it, sends the reader nowhere."""
    lines = COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
    comments = "\n".join(line.split("#", 1)[1] for line in lines if "#" in line)
    named = set(re.findall(r"[\w.-]+(?:/[\w.-]+)+\.(?:py|ya?ml|md)\b", comments))
    assert {"docs/docker-compose.md", "conf/docker.yaml"} <= named
    assert sorted(path for path in named if not (ROOT / path).is_file()) == []
    defined_in = re.findall(r"\b([A-Z][A-Z0-9_]+) in ([\w/.-]+\.py)\b", comments)
    assert defined_in, "the header says where the environment variables are declared"
    for name, path in defined_in:
        assert re.search(rf"^{name}\b", (ROOT / path).read_text(encoding="utf-8"), re.MULTILINE), (name, path)


def _env_names(args: str) -> list[str]:
    return [word.split("=", 1)[0] for word in shlex.split(args) if "=" in word]


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("ingest:\n  trigger: 4 seconds\n", encoding="utf-8")
    environ = {
        "LAMBDA_PIPELINE_CONFIG": str(config),
        "LAMBDA_PIPELINE_WORKDIR": str(tmp_path / "work"),
        "LAMBDA_PIPELINE_SET": "spark.master=spark://spark-master:7077 batch.interval='90 seconds' "
        "spark.conf.spark.cores.max=1 ingest.kafka.partitions=3",
    }
    settings = load_settings(None, environ=environ)
    assert settings.ingest.trigger == "4 seconds"  # from the file the variable names
    assert settings.workdir == str(tmp_path / "work")
    assert settings.spark.master == "spark://spark-master:7077"
    assert settings.batch.interval == "90 seconds"
    assert settings.spark.conf["spark.cores.max"] == "1"
    assert settings.ingest.kafka.partitions == 3  # typed like --set: YAML 3 is an int
    # The command line wins: an explicit config file and --set beat the environment.
    explicit = load_settings(ROOT / "conf" / "local.yaml", ["batch.interval=1 minute"], environ=environ)
    assert explicit.ingest.trigger == "1 second"
    assert explicit.batch.interval == "1 minute"
    assert load_settings(None, environ={}).workdir == "lambda-work"


def test_the_cli_takes_its_defaults_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_pipeline.cli.context import Context

    monkeypatch.setenv("LAMBDA_PIPELINE_CONFIG", str(ROOT / "conf" / "docker.yaml"))
    monkeypatch.setenv("LAMBDA_PIPELINE_WORKDIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("LAMBDA_PIPELINE_SET", "spark.master=local[1]")
    ctx = Context.from_args(build_parser().parse_args(["batch"]))
    assert ctx.settings.ingest.source == "kafka"
    assert ctx.settings.spark.master == "local[1]"
    assert ctx.locations.workdir == str(tmp_path / "from-env")
    ctx = Context.from_args(build_parser().parse_args(["batch", "--workdir", str(tmp_path / "flag")]))
    assert ctx.locations.workdir == str(tmp_path / "flag")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LAMBDA_PIPELINE_SET": "ingest.trigger=fast"}, r"LAMBDA_PIPELINE_SET.*'ingest\.trigger'.*'fast'"),
        ({"LAMBDA_PIPELINE_SET": "speed.nope=1"}, r"LAMBDA_PIPELINE_SET.*'speed\.nope': unknown key"),
        ({"LAMBDA_PIPELINE_SET": "spark.master"}, r"LAMBDA_PIPELINE_SET: key 'spark\.master': expected KEY=VALUE"),
        ({"LAMBDA_PIPELINE_SET": "ingest.trigger='2 seconds"}, r"LAMBDA_PIPELINE_SET: not valid shell-style"),
        ({"LAMBDA_PIPELINE_SET": "ingest.kafka.topic=null"}, r"LAMBDA_PIPELINE_SET.*exactly one of"),
        ({"LAMBDA_PIPELINE_WORKDIR": "/w", "LAMBDA_PIPELINE_SET": "workdir=[1]"}, r"LAMBDA_PIPELINE_SET.*'workdir'"),
        ({"LAMBDA_PIPELINE_CONFIG": "/nowhere/site.yaml"}, r"/nowhere/site\.yaml \(from environment variable "),
    ],
)
def test_a_bad_environment_names_the_variable(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(None, environ=environ)


def test_a_bad_value_in_the_file_still_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("ingest:\n  trigger: soon\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(config, environ={"LAMBDA_PIPELINE_SET": "batch.interval='1 minute'"})
    assert err.value.source == str(config)


# ---- the Dockerfile -------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue  # comments, also between continuation lines
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            op, _, args = current.strip().partition(" ")
            lines.append((op.upper(), args.strip()))
        current = ""
    return lines


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: Go's filepath.Match plus '**' for any number of folders."""
    out = ""
    for i, part in enumerate(re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))):
        if i % 2 == 0:
            out += re.escape(part)
        else:
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}[part]
    return re.compile(out)


def _docker_ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (relative, posix) out of the build context: a pattern that
    matches the path or one of its folders excludes it, a later '!' pattern brings it back."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        regex = _pattern(line.removeprefix("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not line.startswith("!")
    return ignored


def test_the_dockerfile_builds_from_official_images_and_existing_files() -> None:
    instructions = _dockerfile()
    (base,) = [args for op, args in instructions if op == "FROM"]
    name, _, tag = base.partition(":")
    assert "/" not in name and name == "python", "an official Docker library image"
    assert tag.startswith("3.11-slim"), tag
    copies = [shlex.split(args) for op, args in instructions if op == "COPY"]
    assert copies
    for words in copies:
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for source in sources:
            if source == ".":
                continue
            assert (ROOT / source).exists(), source
            assert not _docker_ignored(source.rstrip("/")), f"{source} is in .dockerignore"
    # pip install . needs pyproject.toml, the README it names, every package it lists, and the configs.
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml", project["project"]["readme"], "conf/docker.yaml"]
    info = read_project(ROOT)
    needed += [(info.folder(ROOT, package) / "__init__.py").relative_to(ROOT).as_posix() for package in info.packages]
    assert [path for path in needed if not (ROOT / path).is_file() or _docker_ignored(path)] == []
    assert _docker_ignored(".venv") and _docker_ignored("lambda-work") and _docker_ignored("pipelines/__pycache__")


def test_the_jar_prefetch_calls_the_session_factory_that_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build resolves the JVM packages through lambda_pipeline.core.session: a rename must break this test,
    not the image build on someone else's machine. And it must resolve what the jobs ask for, or every
    container would resolve again at start."""
    runs = [args for op, args in _dockerfile() if op == "RUN" and "python -c" in args and "get_spark" in args]
    assert len(runs) == 1
    code = shlex.split(runs[0])[2]
    tree = ast.parse(code)
    imported = [
        (node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
    ]
    assert ("lambda_pipeline.core.session", "get_spark") in imported
    for module, name in imported:
        assert hasattr(importlib.import_module(str(module)), name), f"{module}.{name}"
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "get_spark"]
    (packages,) = [k.value for k in call.keywords if k.arg == "packages"]
    assert isinstance(packages, ast.Tuple)
    source = {name: str(module) for module, name in imported}
    prefetched = tuple(
        getattr(importlib.import_module(source[element.id]), element.id)
        for element in packages.elts
        if isinstance(element, ast.Name)
    )

    from lambda_pipeline.cli.context import Context

    for name, value in _environment(_compose()["services"]["ingest"]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LAMBDA_PIPELINE_CONFIG", str(ROOT / "conf" / "docker.yaml"))
    for verb in (["ingest"], ["speed"], ["batch"], ["query", "SELECT 1"]):
        assert Context.from_args(build_parser().parse_args(verb)).jvm_packages == prefetched, verb


def test_the_images_are_the_official_ones() -> None:
    compose = _compose()
    images = {name: s.get("image") for name, s in compose["services"].items()}
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", images["kafka"]), images["kafka"]
    others = {name: image for name, image in images.items() if name != "kafka"}
    assert set(others.values()) == {APP_IMAGE}
    assert all(compose["services"][name].get("build") == "." for name in others), "built from this Dockerfile"
