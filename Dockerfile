# spark-relay: one image for the poller and every sink (the command picks which).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SPARK_RELAY_STATE_DIR=/var/lib/spark-relay \
    SPARK_RELAY_METRICS_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY spark_relay ./spark_relay
COPY schemas ./schemas
COPY producer ./producer
COPY consumers ./consumers
COPY devstack ./devstack
RUN pip install --no-cache-dir '.[parquet]' \
    && useradd --system --home /var/lib/spark-relay relay \
    && mkdir -p /var/lib/spark-relay && chown relay /var/lib/spark-relay

USER relay
VOLUME /var/lib/spark-relay
ENTRYPOINT ["spark-relay"]
CMD ["--help"]
