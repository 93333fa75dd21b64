# spark-relay: one image for the poller and every sink (the command picks which).
# The runtime only, pinned: the base by digest, the dependencies by requirements.lock with
# hashes (`make lock` writes it); no devstack (broker binary, embedded PostgreSQL).
FROM python:3.11.10-slim-bookworm@sha256:5148c0e4bbb64271bca1d3322360ebf4bfb7564507ae32dd639322e4952a6b16

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SPARK_RELAY_STATE_DIR=/var/lib/spark-relay \
    SPARK_RELAY_METRICS_HOST=0.0.0.0

WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY spark_relay ./spark_relay
COPY schemas ./schemas
COPY producer ./producer
COPY consumers ./consumers
RUN pip install --no-cache-dir --no-deps . \
    && groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --home /var/lib/spark-relay relay \
    && mkdir -p /var/lib/spark-relay && chown 10001:10001 /var/lib/spark-relay

# numeric, so Kubernetes' runAsNonRoot can verify it (deploy/kubernetes: runAsUser 10001)
USER 10001:10001
VOLUME /var/lib/spark-relay
ENTRYPOINT ["spark-relay"]
CMD ["--help"]
