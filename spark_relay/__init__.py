"""spark-relay: the Spark API replication endpoint, as Kafka change events."""

__version__ = "0.1.0"
