"""Dead letters say why without giving a credential away: ``dlq.error`` is masked like the logs."""

from __future__ import annotations

from consumers.base import BadRecord
from consumers.dlq import dlq_topic
from tests.consumers.kafka_events import Topics, listing, read_raw
from tests.consumers.test_runner import RecordingSink, run


def test_the_dead_letter_reason_masks_passwords_in_urls(make_settings):
    topics = Topics(make_settings(), partitions=1)
    try:
        topics.listing(listing("LEAKY"))
        topics.flush()

        def reject(event):
            raise BadRecord(
                "refused: see postgresql://relay:s3cret-pw@db:5432/spark "
                "nor https://user:t0ken@search:9200/x"
            )

        run(RecordingSink(reject=reject), topics.settings)
        ((_, _, headers),) = read_raw(
            topics.settings, dlq_topic(topics.settings.topic_prefix, "recording")
        )
    finally:
        topics.close()
    reason = headers["dlq.error"]
    assert b"s3cret-pw" not in reason and b"t0ken" not in reason
    assert b"postgresql://relay:********@db:5432/spark" in reason
    assert b"https://user:********@search:9200/x" in reason
