"""A small Confluent-compatible Schema Registry: a dev and test stand-in only.

Started by the devstack and by the test suite so the producer, the serializers
and the consumers talk to a real registry over HTTP without a JVM. Production
uses Confluent Schema Registry, Karapace, Apicurio or Redpanda; nothing here
is meant to replace them. Only AVRO schemas are supported; compatibility
checks follow the Avro specification's schema-resolution rules (see
``compat.py``), state is a JSON file under the state dir (see ``store.py``).

    with RegistryServer(state_dir) as registry:
        client = SchemaRegistryClient({"url": registry.url})
"""

from __future__ import annotations

import logging

from devstack.registry.server import RegistryServer

__all__ = ["RegistryServer"]

logger = logging.getLogger(__name__)
