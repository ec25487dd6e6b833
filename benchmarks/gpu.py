"""GPU figures: the text encoder in texts/s and the model stage alone in events/s (no Kafka).

    python benchmarks/gpu.py --items PATH/ml-1m-half [--model MODEL_DIR] --out runs/gpu.json

* Encoder: all-MiniLM-L6-v2 as the worker runs it (``TextEncoder.encode``: tokenise, forward,
  mean-pool, normalise, copy back), float16 on the GPU, on catalog texts (title, year, genres) repeated
  to ``--texts``; also float32, the tokeniser alone, and the cosine between float16 and float32 vectors.
* Model stage: ``Recommender.step`` + ``Recommender.topk`` (one GRU step per event and a top-10 over
  the whole catalog with 50 seen items excluded per user: numpy in, item ids out) at several batch
  sizes; the same on resident tensors (what the GPU itself does); and ``pipeline.process_batch`` (JSON,
  validation, state codec, records: the Python around the model) on GPU and CPU.
Without ``--model`` an untrained model of the default configuration over the catalog is used: the
speed of a step does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls (after one warm-up), with the GPU synchronised."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_encoder(texts: list[str], n_texts: int, device: str) -> dict:
    import numpy as np

    from stream_rec.model.encoder import TextEncoder

    corpus = [f"{texts[i % len(texts)]}" for i in range(n_texts)]
    out = {"texts": n_texts, "float16": {}, "float32": {}}
    enc16 = TextEncoder(device=device, dtype="float16")
    enc32 = TextEncoder(device=device, dtype="float32")
    for batch in (256, 1024, 4096):
        for name, enc in (("float16", enc16), ("float32", enc32)):
            enc.batch_size = batch
            s = timed(lambda: enc.encode(corpus), repeat=2)
            out[name][f"batch {batch}"] = round(n_texts / s)
    t = timed(lambda: [enc16.tokenizer(corpus[s:s + 1024], padding=True, truncation=True, max_length=128,
                                       return_tensors="pt") for s in range(0, n_texts, 1024)], repeat=2)
    out["tokenizer_wrapper_alone_texts_per_s"] = round(n_texts / t)
    t = timed(lambda: [enc16.tokenize(corpus[s:s + 1024]) for s in range(0, n_texts, 1024)], repeat=2)
    out["tokenizer_rust_alone_texts_per_s"] = round(n_texts / t)
    a, b = enc16.encode(texts), enc32.encode(texts)
    cos = (a * b).sum(1)[np.linalg.norm(b, axis=1) > 0]
    out["cosine_float16_vs_float32"] = {"mean": float(cos.mean()), "min": float(cos.min())}
    print("encoder:", json.dumps(out), flush=True)
    return out


def bench_model(rec, model_dir: Path, batches=(1024, 8192, 65536)) -> dict:
    import numpy as np
    import torch

    from stream_rec_devtools.bench_live import model_stage_events_per_s

    rng = np.random.default_rng(0)
    out = {"items": rec.n_items, "hidden": rec.hidden_size, "step_topk_numpy": {}, "step_topk_resident": {}}
    for batch in batches:
        states = rng.standard_normal((batch, rec.hidden_size)).astype(np.float32)
        rows = rng.integers(1, rec.n_items + 1, batch)
        gaps = rng.exponential(3600.0, batch).astype(np.float32)
        seen = [rng.integers(1, rec.n_items + 1, 50).tolist() for _ in range(batch)]

        def numpy_path():
            h = rec.step(states, rows, gaps)
            rec.topk(h, 10, seen)

        out["step_topk_numpy"][f"batch {batch}"] = round(batch / timed(numpy_path))
        h = torch.as_tensor(states, device=rec.device)
        r = torch.as_tensor(rows, device=rec.device)
        g = torch.as_tensor(gaps, device=rec.device)
        seen_mask = torch.zeros(batch, rec.n_items + 1, dtype=torch.bool, device=rec.device)
        seen_mask[torch.arange(batch).repeat_interleave(50).to(rec.device),
                  torch.as_tensor(np.concatenate(seen), device=rec.device)] = True

        @torch.no_grad()
        def resident_path():
            h2 = rec.model.step(h, r, g, table=rec._table)
            s = rec.model.scores(h2, rec._table).masked_fill_(seen_mask, float("-inf"))
            torch.topk(s, 10, dim=1)

        out["step_topk_resident"][f"batch {batch}"] = round(batch / timed(resident_path))
    for device in dict.fromkeys((rec.device.type, "cpu")):
        threads = 1
        out[f"process_batch_{device}"] = model_stage_events_per_s(model_dir, batch=1024, n_batches=20,
                                                                 device=device, threads=threads)
    print("model stage:", json.dumps(out), flush=True)
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", required=True, help="catalog: items CSV, MovieLens u.item / movies.dat or its folder")
    p.add_argument("--model", default="", help="model directory (default: untrained, default configuration)")
    p.add_argument("--texts", type=int, default=100_000, help="texts per encoder measurement")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a quick check of this script")
    p.add_argument("--batches", default="1024,8192,65536", help="model-stage batch sizes")
    p.add_argument("--parts", default="encoder,model", help="which measurements: encoder, model or both")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark is for a GPU machine", file=sys.stderr)
        return 2
    from stream_rec.io.data import read_items
    from stream_rec.model.recommender import Recommender

    items = read_items(args.items)
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__}
    if "encoder" in args.parts:
        result["encoder"] = bench_encoder(list(items.values()), args.texts, args.device)
    if "model" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(args.model or tmp)
            if not args.model:
                from stream_rec.model.encoder import TextEncoder

                vectors = TextEncoder(device=args.device).encode(list(items.values()))
                Recommender.untrained(list(items), vectors, device="cpu").save(model_dir)
            rec = Recommender.load(model_dir, device=args.device)
            result["model_stage"] = bench_model(rec, model_dir, [int(b) for b in args.batches.split(",")])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
