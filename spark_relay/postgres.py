"""Every PostgreSQL connection we open: a bounded connect and TCP keepalives, both ways.

A node that vanishes (power, network) sends no FIN: without keepalives the server
keeps its session, and a session advisory lock with it, for the kernel's default
of two hours, and the client waits as long on a server that vanished. So each
connection asks for keepalive probes on the client's socket (libpq's
``keepalives*``) and on the server's (the ``tcp_keepalives_*`` and
``tcp_user_timeout`` settings of the session, sent as ``options``): a peer that
stops answering is dropped after about a minute (idle 30 s, then 3 probes 10 s
apart). On a Unix socket both are ignored, as nothing can get lost there.

A library that connects by itself from a URL (SQLAlchemy, under pyiceberg's SQL
catalog) gets :func:`sqlalchemy_url`: the same parameters in the URL's query, which
SQLAlchemy's psycopg dialect passes on to ``psycopg.connect`` as they are.

A setting given in the URL wins over ours (``?keepalives_idle=60``,
``?options=-c%20tcp_keepalives_idle%3D60``).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["connect", "connection_params", "sqlalchemy_url", "CLIENT_SETTINGS", "SERVER_SETTINGS"]

logger = logging.getLogger(__name__)

#: libpq parameters: give up on a connect after 10 s; probe an idle socket after 30 s.
CLIENT_SETTINGS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",  # ms: data unacknowledged this long ends the connection
}
#: The server's settings for this session: it drops a client that stopped answering.
SERVER_SETTINGS: dict[str, str] = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def connection_params(url: str, **overrides: Any) -> dict[str, Any]:
    """``url``'s parameters with ours added where the URL sets none; ``overrides`` (psycopg's
    keywords, as ``autocommit``, or connection parameters) win."""
    from psycopg.conninfo import conninfo_to_dict

    params: dict[str, Any] = conninfo_to_dict(url)
    for name, value in CLIENT_SETTINGS.items():
        params.setdefault(name, value)
    options = str(params.get("options") or "")
    ours = [f"-c {name}={value}" for name, value in SERVER_SETTINGS.items() if name not in options]
    params["options"] = " ".join(filter(None, [options, *ours]))
    params.update(overrides)
    return params


def connect(url: str, **kwargs: Any) -> Any:
    """``psycopg.connect(url, **kwargs)`` with :func:`connection_params`."""
    import psycopg

    return psycopg.connect(**connection_params(url, **kwargs))


def sqlalchemy_url(url: str) -> str:
    """``url`` as a ``postgresql+psycopg://`` URL for SQLAlchemy, our settings in its query:
    the connections SQLAlchemy opens carry :func:`connection_params` too."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    parts = urlsplit(url)
    params = connection_params(url)
    query = dict(parse_qsl(parts.query))
    query.update({name: params[name] for name in (*CLIENT_SETTINGS, "options")})
    return parts._replace(scheme="postgresql+psycopg", query=urlencode(query)).geturl()
