"""The convergence campaign: seeded chaos over the whole pipeline, checked against the truth.

``python -m chaos --seeds 3 --rounds 8`` (``make chaos``). Per seed one world
(``world.py``): the emulator with seeded faults, the Tansu broker, the Schema
Registry and an embedded PostgreSQL, the poller daemon and five sink processes
(two PostgreSQL sinks in one group, files, search, Iceberg), all real processes
talking over sockets. Each round changes the MLS and, at moments the seed chooses, kills,
restarts, repairs, re-drives or replays (``campaign.py``). At the end of the seed
``check.py`` reads the topics, the tables, the files and the index with code that
is not spark-relay's, and ``verdict.py`` compares each with the emulator's truth.
"""
