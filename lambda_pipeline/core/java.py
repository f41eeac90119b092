"""The Java that Spark and the project's JVM services run on: found, and new enough, or a clear error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["MIN_JAVA", "check_java"]

MIN_JAVA = 17


def check_java() -> str:
    """Return the Java version string, or explain how to get Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    hint = (
        "install OpenJDK 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jdk-headless; "
        "macOS: brew install openjdk@17) and put it on PATH or set JAVA_HOME"
    )
    if not java or not Path(java).exists():
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise EnvironmentProblem(f"Java was not found on {where}: Spark needs Java {MIN_JAVA}+; {hint}.")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run '{java} -version' ({exc}); {hint}.") from None
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise EnvironmentProblem(f"could not read the Java version from '{java} -version': {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise EnvironmentProblem(f"{java} is Java {major}; Spark 4 needs Java {MIN_JAVA}+: {hint}.")
    return match.group(0)
