# The application image of the docker-compose demo (docker-compose.yml, docs/docker-compose.md).
# One image for every job (lambda-pipeline ingest|speed|batch|query|generate|kafka create-topic) and for the
# Spark standalone master and worker, which run from the pyspark package's own 'spark-class'.

# bookworm: Debian's last release with an OpenJDK 17 package (the newest ones ship 21 and 25 only).
FROM python:3.11-slim-bookworm

# The JDK, not only the JRE: javac compiles the project's own JVM classes (lambda_pipeline/core/project_jars.py).
# procps: Spark's launch scripts call 'ps'.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jdk-headless procps \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

ENV JAVA_HOME=/opt/java \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYSPARK_PYTHON=python3 \
    LAMBDA_PIPELINE_CONFIG=/app/conf/docker.yaml \
    LAMBDA_PIPELINE_WORKDIR=file:///data/lambda-work

# A fixed, unprivileged user: the named volumes take the owner of the folders they are mounted on.
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /app /data/lambda-work \
    && chown app:app /app /data/lambda-work
WORKDIR /app

# 1. The Python dependencies, read from pyproject.toml (pyspark alone is about 450 MB): this layer is
#    rebuilt only when pyproject.toml changes, not at every change of the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The JVM packages (Delta Lake, Spark's Kafka connector and its token-provider jar), resolved from Maven
#    Central once, and the project's dedup class, compiled once, here, by the project's own session factory: it keeps the jars in ~/.ivy2.5.2 and their
#    paths in ~/.cache/lambda-pipeline, so the containers start without resolving anything. Only the core
#    is needed, so changes elsewhere in the code keep this layer.
USER app
COPY --chown=app:app lambda_pipeline/__init__.py lambda_pipeline/
COPY --chown=app:app lambda_pipeline/core/ lambda_pipeline/core/
RUN python -c "from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE; from lambda_pipeline.core.session import get_spark; get_spark(packages=(KAFKA_COORDINATE,)).stop()"

# 3. The project itself: the 'lambda-pipeline' command and the configs in /app/conf.
USER root
COPY --chown=app:app . .
RUN pip install --no-deps . && rm -rf build ./*.egg-info
USER app

CMD ["lambda-pipeline", "--help"]
