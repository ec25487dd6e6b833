"""Smarter recommendations: pure, Kafka-free building blocks the worker calls around the GRU's scores.

Every module works on numpy arrays in batches (one call per micro-batch, not per user), so the worker
can add them without changing its shape:

========================  ====================================================================
module                    batch entry point
========================  ====================================================================
``vectors``               ``unit_rows`` (the one place rows are L2-normalised)
``context``               ``context_boost(scores, query_vectors, item_text_vectors, alpha)``
``feedback``              ``is_negative(event_type, value)``, ``negative_penalty(scores, negative_rows, item_vectors)``
``rerank``                ``mmr_rerank_batch(cand_rows, relevance, item_vectors, k, lam)``, ``ExposureWindow``
``explain``               ``explain_batch(rec_rows, history_rows, item_vectors, ...)`` -> reasons
``interests``             ``InterestProfiler.summarise(history_rows)``
``drift``                 ``OnlineQualityMonitor.observe / record`` (online HR@k + river ADWIN)
``coldstart``             ``learn_initial_state`` / ``save_initial_state`` / ``load_initial_state``
``finetune``              ``finetune(rec, recent, history)`` / ``finetune_model_dir(model_dir, events, out)``
========================  ====================================================================

Scores are the GRU's logits (``Recommender.score_rows``): their scale differs between models, so the
score adjustments (context, feedback) are expressed in units of each row's score standard deviation
(``score_scale``), which keeps their strength parameters meaningful across models and datasets.
"""
