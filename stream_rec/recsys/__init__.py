"""Smarter recommendations: pure, Kafka-free stages around the GRU's scores.

Every module works on numpy arrays in batches (one call per micro-batch, not per user). A scoring stage
has one protocol, ``stage(scores [b, N+1], positions, batch) -> scores`` (``ranking``); selection and
annotation follow the stages:

========================  ====================================================================
module                    batch entry point
========================  ====================================================================
``ranking``               ``RankBatch`` (what the stages see), ``plain_lists``, ``rescore``, ``top_k_lists``
``context``               stage ``boost_queries`` (``context_boost(scores, query_vectors, item_text_vectors, alpha)``)
``feedback``              stage ``NegativeFeedback``; ``is_negative(event_type, value)``
``rerank``                selection ``mmr_rerank_scores`` (MMR) with ``ExposureWindow``
``explain``               annotation ``explain_batch(rec_rows, history_rows, item_vectors, ...)`` -> reasons
``interests``             annotation ``InterestProfiler.summarise(history_rows)``
``vectors``               ``unit_rows``, ``centred``, ``pad_rows``, ``score_scale`` (one copy of each)
``freshness``             selection ``fresh_topk`` (fixed slots for new items past a relevance bar)
``explore``               selection ``explore_topk`` (a bandit puts new items in by their learnt appeal)
``arms``                  the bandit's state: per-item arm records, each user's exposure, feedback rules
``enricher``              ``Enricher``: the worker's per-worker state composing the above
========================  ====================================================================

Scores are the GRU's logits (``Recommender.score_rows``): their scale differs between models, so the
score adjustments (context, feedback) are expressed in units of each row's score standard deviation
(``score_scale``), which keeps their strength parameters meaningful across models and datasets.
"""
