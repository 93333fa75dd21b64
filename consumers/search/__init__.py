"""The search sink: listings into an embedded Tantivy index, or an OpenSearch cluster.

``fields`` is the document (one table), ``tantivy_backend`` and ``opensearch``
the two backends, ``query`` the ``--where`` language, ``sink`` the
:class:`SearchSink` registered as ``search`` in the ``spark_relay.sinks``
entry-point group, and ``cli`` the ``spark-relay search`` command.
"""

import logging

from consumers.search.sink import SearchSink

__all__ = ["SearchSink"]

logger = logging.getLogger(__name__)
