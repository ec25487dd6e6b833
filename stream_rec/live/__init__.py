"""The trained model live in the stream: micro-batched text encoding, model resolution and hot
reload, re-warming of hidden states, and prequential (online) scoring of emitted recommendations.

Everything here is plain Python/numpy/torch usable without Kafka; the Faust agents in
``stream_rec/app.py`` call it.
"""
