"""``streamproc map``: the Kafka stage around the pure mapping, exactly once.

``processor``: the consumer group, one transactional producer and one dedupe state per
input partition, set-up and retries per partition; ``transaction``: what one poll of a
partition commits together (batches, dead letters, dedupe changelog, offsets); ``output``:
batches keyed and partitioned as deliver reads them; ``dedupe``: the ids seen within the
window and their changelog; ``command``: the CLI entry.
"""
