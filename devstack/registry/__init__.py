"""A small Confluent-compatible Schema Registry: a dev and test stand-in only.

Started by the devstack and by the test suite so the producer, the serializers
and the consumers talk to a real registry over HTTP without a JVM. Production
uses Confluent Schema Registry, Karapace, Apicurio or Redpanda; nothing here
is meant to replace them. Only AVRO schemas are supported. It behaves as
Confluent's server does, not as its Python client expects: schemas are parsed,
validated and stored in Avro's canonical text as Avro 1.12 (Java) does
(``avro.py``), compatibility is Avro's ``SchemaCompatibility`` with Confluent's
messages (``compat.py``), configs take Confluent's keys (``config.py``), state
is a JSON file under the state dir (``state.py``, ``store.py``). README.md
lists what it does not implement.

    with RegistryServer(state_dir) as registry:
        client = SchemaRegistryClient({"url": registry.url})
"""

from __future__ import annotations

import logging

from devstack.registry.server import RegistryServer

__all__ = ["RegistryServer"]

logger = logging.getLogger(__name__)
