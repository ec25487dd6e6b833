"""Everything that crosses the process boundary: Kafka clients (``kafka``), the embedded broker
(``broker``), the topic spec (``topics``) and the one reader of event and item files (``data``).

The layers above never build a Kafka client or open a data file themselves; they call these.
"""
