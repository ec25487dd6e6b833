"""The model: hybrid text + ID GRU, trained offline, served one event at a time.

| module | what |
|---|---|
| ``gru.py`` | ``HybridGRU``: item vector = ID embedding + projected text vector; ``forward`` (training) and ``step`` (serving) share one ``nn.GRU`` |
| ``encoder.py`` | ``TextEncoder``: all-MiniLM-L6-v2 from its PyPI package, mean-pooled, normalised, disk-cached |
| ``sequences.py`` | per-user sequences (rows + time gaps) for training, and the batched serving steps (``run_steps``, ``rewarm``) |
| ``train.py`` | ``train_model`` (many-to-many, truncated BPTT with carried state, early stopping) and ``train_recommender`` |
| ``recommender.py`` | ``Recommender``: the numpy serving API the stream calls, ``save`` / ``load`` of model directories |
| ``evaluate.py`` | leave-one-out metrics, popularity / Markov / content baselines, training-curve plot |
| ``coldstart.py`` | a learned initial state for new users (``init_state.safetensors`` beside the model) |

Nothing here imports the stream (worker, pipeline, recsys): the model is usable, trainable and testable
on its own.

Commands: ``stream-rec train``, ``stream-rec evaluate``, ``stream-rec recommend``; quality report:
``python benchmarks/quality.py --data-dir PATH``.
"""
