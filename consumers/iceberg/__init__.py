"""The Iceberg sink (``spark-relay sink iceberg``): listings and accounts as Apache Iceberg tables.

Needs the ``iceberg`` extra (pyiceberg). See :mod:`consumers.iceberg.sink`.
"""

from consumers.iceberg.sink import IcebergSink

__all__ = ["IcebergSink"]
