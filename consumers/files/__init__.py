"""The file sink: events into JSON Lines, Avro or Parquet files, and a compacted export.

``formats`` holds one writer/reader per format, ``sink`` the :class:`FileSink`
registered as ``files`` in the ``spark_relay.sinks`` entry-point group,
``compact`` the "current state" export and ``cli`` the ``spark-relay files`` group.
"""

import logging

from consumers.files.sink import FileSink

__all__ = ["FileSink"]

logger = logging.getLogger(__name__)
