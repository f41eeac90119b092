"""Resolve JVM artifacts with the user's Maven into the project's cache, once per machine.

The Kafka broker (and anything else the project runs on the JVM outside Spark) needs
its jars on a fresh machine that has only Java, Maven and access to Maven Central. Maven
already knows mirrors, proxies and ``~/.m2``; we only hand it a throw-away pom. After a
successful run a manifest lists the jars, so later calls never start Maven again.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from lambda_pipeline.core.cache import cache_dir
from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.locks import file_lock

__all__ = ["resolve"]

# Pinned so that Maven never has to guess a plugin version (and warn about it).
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
MVN_TIMEOUT_SECONDS = 1800.0
LOCK_TIMEOUT_SECONDS = MVN_TIMEOUT_SECONDS + 60.0
MANIFEST = "manifest.txt"


def _parse(coordinate: str) -> tuple[str, str, str, str | None]:
    """``group:artifact:version`` or ``group:artifact:version:classifier`` -> parts."""
    parts = coordinate.strip().split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise EnvironmentProblem(
            f"Maven coordinate {coordinate!r} is not of the form group:artifact:version[:classifier]"
        )
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else None


def _pom(coordinates: Sequence[str], cache_name: str) -> str:
    deps = []
    for coordinate in coordinates:
        group, artifact, version, classifier = _parse(coordinate)
        extra = f"\n      <classifier>{escape(classifier)}</classifier>" if classifier else ""
        deps.append(
            "    <dependency>\n"
            f"      <groupId>{escape(group)}</groupId>\n"
            f"      <artifactId>{escape(artifact)}</artifactId>\n"
            f"      <version>{escape(version)}</version>{extra}\n"
            "    </dependency>"
        )
    artifact_id = "".join(c if c.isalnum() or c in "-_." else "-" for c in cache_name) or "jars"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by lambda-pipeline (local_services/maven.py) only to fetch jars; safe to delete. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lambda-pipeline.cache</groupId>
  <artifactId>{escape(artifact_id)}</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
{chr(10).join(deps)}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def _fingerprint(coordinates: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(coordinates).encode()).hexdigest()[:16]


def _read_manifest(directory: Path, fingerprint: str) -> list[Path] | None:
    """The jars of a finished resolution of exactly these coordinates, if all still exist."""
    manifest = directory / MANIFEST
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    if not lines or lines[0] != f"# {fingerprint}":
        return None
    jars = [Path(line) for line in lines[1:] if line and not line.startswith("#")]
    return jars if jars and all(jar.is_file() for jar in jars) else None


def _find_mvn(directory: Path) -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise EnvironmentProblem(
            "Maven ('mvn') was not found on PATH; it fetches the jars from Maven Central on first use: install "
            "Maven (Debian/Ubuntu: apt-get install maven; macOS: brew install maven) and retry, or copy "
            f"{directory} from a machine where it was resolved"
        )
    return mvn


# Maven's generic advice after every failure; the cause is in the lines before it.
_BOILERPLATE = ("To see the full stack trace", "Re-run Maven using", "For more information about", "[Help 1] http")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _mvn_tail(output: str, lines: int = 4) -> str:
    kept = []
    for raw in output.splitlines():
        line = _ANSI.sub("", raw).strip()
        if line and line != "[ERROR]" and not any(b in line for b in _BOILERPLATE):
            kept.append(line)
    return " | ".join(kept[-lines:]) or "no output"


def resolve(coordinates: Sequence[str], cache_name: str) -> list[Path]:
    """Jars of ``coordinates`` and all their runtime dependencies, under ``<cache_dir>/<cache_name>/jars``.

    The first call runs ``mvn dependency:copy-dependencies`` (under a lock, so concurrent callers
    wait for one resolution); later calls only read the manifest.
    """
    coordinates = [c.strip() for c in coordinates]
    if not coordinates:
        raise ValueError("resolve() needs at least one Maven coordinate")
    if not cache_name or "/" in cache_name or cache_name.startswith("."):
        raise ValueError(f"cache_name must be a plain folder name, got {cache_name!r}")
    for coordinate in coordinates:
        _parse(coordinate)
    directory = cache_dir() / cache_name
    fingerprint = _fingerprint(coordinates)
    jars = _read_manifest(directory, fingerprint)
    if jars is not None:
        return jars
    mvn = _find_mvn(directory)
    with file_lock(directory / ".lock", LOCK_TIMEOUT_SECONDS):
        jars = _read_manifest(directory, fingerprint)  # another process may have finished meanwhile
        if jars is not None:
            return jars
        return _run_maven(mvn, coordinates, directory, fingerprint)


def _run_maven(mvn: str, coordinates: Sequence[str], directory: Path, fingerprint: str) -> list[Path]:
    out_dir = directory / "jars"
    (directory / MANIFEST).unlink(missing_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # leftovers of an interrupted or different resolution
    pom = directory / "pom.xml"
    pom.write_text(_pom(coordinates, directory.name), encoding="utf-8")
    command = [
        mvn,
        "-q",
        "-B",
        "-U",  # retry artifacts whose earlier failure (e.g. network down) Maven cached in ~/.m2
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={out_dir}",
        "-DincludeScope=runtime",
        "-DexcludeTypes=pom",
    ]
    print(f"Resolving {', '.join(coordinates)} with Maven into {out_dir} (first use only)...", file=sys.stderr)
    started = time.monotonic()
    try:
        run = subprocess.run(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=MVN_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(
            f"Maven did not finish resolving {', '.join(coordinates)} within {MVN_TIMEOUT_SECONDS:.0f}s; "
            f"check access to Maven Central, then retry (or run: {' '.join(command)})"
        ) from None
    except OSError as exc:
        raise EnvironmentProblem(f"could not run Maven ({exc}); check that '{mvn}' works") from None
    jars = sorted(out_dir.glob("*.jar")) if out_dir.is_dir() else []
    if run.returncode != 0 or not jars:
        tail = _mvn_tail(run.stdout + run.stderr)
        raise EnvironmentProblem(
            f"Maven could not resolve {', '.join(coordinates)} (exit code {run.returncode}); check access to "
            f"Maven Central (proxy/mirror in ~/.m2/settings.xml) and the versions. Last lines of mvn: {tail}"
        )
    manifest = directory / MANIFEST
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(
        f"# {fingerprint}\n# {' '.join(coordinates)}\n" + "".join(f"{jar}\n" for jar in jars), encoding="utf-8"
    )
    tmp.replace(manifest)  # atomic: a reader sees no manifest or a complete one
    print(f"Resolved {len(jars)} jars in {time.monotonic() - started:.0f}s.", file=sys.stderr)
    return jars
