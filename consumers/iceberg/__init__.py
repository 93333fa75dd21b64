"""The Iceberg sink (``spark-relay sink iceberg``): listings and accounts as Apache Iceberg tables.

``sink`` holds the :class:`IcebergSink` (its newer-wins fold is
:mod:`consumers.newer`'s, as every sink's), ``tables`` the catalog, schemas and
stored offsets, ``maintain`` compaction and expiry and
``cli`` the ``spark-relay iceberg`` group. It needs the ``iceberg`` extra
(pyiceberg); without it ``spark-relay`` runs, and this sink's commands say so.
"""

from typing import Any

__all__ = ["IcebergSink", "require_pyiceberg"]


def require_pyiceberg() -> None:
    """Raise an ImportError naming the extra when pyiceberg is not installed."""
    try:
        import pyiceberg  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the iceberg sink needs pyiceberg: pip install 'spark-relay[iceberg]'", name=e.name
        ) from e


def __getattr__(name: str) -> Any:
    if name == "IcebergSink":  # imported when asked for: `spark-relay --help` needs no pyiceberg
        require_pyiceberg()
        from consumers.iceberg.sink import IcebergSink

        return IcebergSink
    raise AttributeError(name)
