"""Measure the "smarter recommendations" features (stream_rec/recsys/) on MovieLens.

    python benchmarks/smarter.py --data-dir DATA [--datasets ml-100k ml-1m-half] [--out runs/smarter]

DATA holds ``ml-100k/`` (u.data, u.item) and/or ``ml-1m-half/`` (ratings.dat, movies.dat). Per dataset:

* split: 10% of users are *new users* (never trained on), 10% of items are *cold items* (removed from
  training, added afterwards from their text vector only, as the ``catalog`` topic would);
* one hybrid GRU is trained on the rest (``model.train.train_recommender``), which learns its initial state
  h0 as `stream-rec train` does (``model.coldstart``, ``--h0-epochs``);
* tables, all on the new users, ranking over the full catalog with seen items excluded
  (``model.evaluate.ranking_metrics``):
  1. history-length buckets: predict event t from the first t events, for every t; bucket by t;
     popularity / Markov / GRU (zero h0) / GRU (learned h0). Targets that are cold items are left out.
  2. cold items: the events whose target is a cold item, ranked among the cold items only: GRU (text
     path) vs content-only cosine (``model.evaluate.content_scorer``).
  3. diversity: each new user's last event, MMR re-rank of the top 50 at several lambdas: NDCG@10, ILD
     (text vectors), catalog coverage; PNG plot.
  4. negative feedback: ratings <= 2 are negatives; predict each liked (>= 4) next event of a user who
     has negatives in their history: negatives stepped as views / left out of the state / left out and
     penalised with their neighbours (``recsys.feedback``).
* ``--finetune`` (ml-1m-half by default): global time split 80/10/10; train on the first 80%, fine-tune
  on the next 10% (``learning.finetune``), test every event of the last 10% given the full history before
  it; before vs after.

Everything is seeded. Progress bars go to stderr, tables (markdown) to stdout, and the numbers to
``OUT/smarter-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream_rec.io.data import Split, leave_one_out, read_events, read_items, sequences  # noqa: E402
from stream_rec.model.evaluate import (EvalCase, content_scorer, evaluate_scorer, markov_scorer,  # noqa: E402
                                       popularity_scorer, ranking_metrics, recommender_scorer, step_histories)
from stream_rec.model.gru import PAD  # noqa: E402
from stream_rec.model.train import TrainParams, train_recommender  # noqa: E402
from stream_rec.recsys.feedback import negative_penalty  # noqa: E402
from stream_rec.recsys.interests import genres_of  # noqa: E402
from stream_rec.learning.finetune import FinetuneParams, finetune, time_slices  # noqa: E402
from stream_rec.recsys.rerank import catalog_coverage, intra_list_diversity, mmr_rerank_scores  # noqa: E402

K = 10
BUCKETS = [("0", 0, 0), ("1", 1, 1), ("2-3", 2, 3), ("4-10", 4, 10), (">10", 11, 10**9)]
LAMBDAS = (1.0, 0.8, 0.6, 0.4, 0.2)
log = logging.getLogger("smarter")


# --- data ------------------------------------------------------------------------------------------
def read_ratings(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """user -> [(item_id, timestamp, rating)] in time order (stable: file order on ties, like
    ``data.sequences``). ``data.read_events`` keeps no rating, which the feedback table needs."""
    sep = "\t" if path.name == "u.data" else "::"
    out: dict[str, list[tuple[str, float, float]]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            p = line.rstrip("\r\n").split(sep)
            if len(p) >= 4:
                out.setdefault(p[0], []).append((p[1], float(p[3]), float(p[2])))
    for seq in out.values():
        seq.sort(key=lambda e: e[1])
    return out


def events_file(d: Path) -> Path:
    return d / "u.data" if (d / "u.data").is_file() else d / "ratings.dat"


def gaps_of(ts: list[float]) -> np.ndarray:
    g = np.zeros(len(ts), dtype=np.float32)
    if len(ts) > 1:
        g[1:] = np.maximum(np.diff(np.asarray(ts, dtype=np.float64)), 0.0)
    return g


def markdown(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# --- the trained model of one dataset ----------------------------------------------------------------
def train_split_model(seqs, item_texts, encoder, args, exclude_items=()):
    split = leave_one_out(seqs)
    split = Split(train=split.train, valid=split.valid, test={}, full=seqs)
    config = {"hidden": args.hidden, "emb_dim": args.emb_dim, "dropout": args.dropout}
    params = TrainParams(epochs=args.epochs, batch_size=32, lr=2e-3, patience=3, seed=0, device=args.device,
                         threads=args.threads, time_budget_s=args.train_budget, init_state_epochs=args.h0_epochs)
    rec, history = train_recommender(split, item_texts, config, params, encoder=encoder,
                                     exclude_items=list(exclude_items), progress=not args.quiet)
    return rec, history


def run_dataset(name: str, d: Path, encoder, args) -> dict:
    t0 = time.perf_counter()
    item_texts = read_items(d)
    seqs = sequences(read_events(d))
    ratings = read_ratings(events_file(d))
    rng = random.Random(0)
    users = sorted(seqs)
    rng.shuffle(users)
    new_users = set(users[: max(1, len(users) // 10)])
    items_seen = sorted({i for s in seqs.values() for i, _ in s})
    rng.shuffle(items_seen)
    cold = set(items_seen[: len(items_seen) // 10])
    train_seqs = {u: s for u, s in seqs.items() if u not in new_users}
    rec, history = train_split_model(train_seqs, item_texts, encoder, args, exclude_items=cold)
    h0 = rec.initial_state  # learned by training, as `stream-rec train` does (model/coldstart.py)
    cold_ids = [i for i in rec.item_ids if i in cold] + sorted(cold - set(rec.item_ids))
    cold_rows = rec.add_items(cold_ids, encoder.encode_cached([item_texts.get(i, "") for i in cold_ids], progress=False),
                              texts=[item_texts.get(i, "") for i in cold_ids])
    n_rows = rec.n_items + 1
    text_vectors = rec.model.text_vectors.cpu().numpy()
    train_rows = [np.array(rec.rows_for([i for i, _ in s if i not in cold]), dtype=np.int64) for s in train_seqs.values()]
    result = {"dataset": name, "users": len(seqs), "new_users": len(new_users), "items": rec.n_items,
              "cold_items": len(cold_rows), "train": {"best_epoch": history.best_epoch, "valid": history.best_valid,
                                                     "seconds": round(history.train_seconds, 1)}}
    print(f"\n## {name}: {len(seqs)} users ({len(new_users)} new), {rec.n_items} items ({len(cold_rows)} cold), "
          f"GRU best epoch {history.best_epoch}, trained {history.train_seconds:.0f} s\n")

    # prefix cases of the new users
    cold_set = set(cold_rows)
    cases, cold_cases = [], []
    for u in sorted(new_users):
        s = seqs[u]
        rows = np.array(rec.rows_for([i for i, _ in s]), dtype=np.int64)
        gaps = gaps_of([t for _, t in s])
        for t in range(min(len(rows), args.max_history + 1)):
            case = EvalCase(u, rows[:t], gaps[:t], int(rows[t]), float(gaps[t]))
            (cold_cases if rows[t] in cold_set else cases).append(case)
    cases.sort(key=lambda c: len(c.rows))
    cold_cases.sort(key=lambda c: len(c.rows))

    # 1. history-length buckets
    scorers = {"popularity": popularity_scorer(train_rows, n_rows), "markov": markov_scorer(train_rows, n_rows)}
    rec.initial_state = None
    scorers["gru (h0 = 0)"] = recommender_scorer(rec)
    bucket_rows = []
    for label, lo, hi in BUCKETS:
        part = [c for c in cases if lo <= len(c.rows) <= hi]
        if not part:
            continue
        row = {"history": label, "cases": len(part)}
        for sname, fn in scorers.items():
            m = evaluate_scorer(fn, part, K, batch_size=512)
            row[f"{sname} HR"], row[f"{sname} NDCG"] = m["hr@10"], m["ndcg@10"]
        bucket_rows.append(row)
    rec.initial_state = h0
    learned = recommender_scorer(rec)
    for row, (label, lo, hi) in zip(bucket_rows, [b for b in BUCKETS if any(b[1] <= len(c.rows) <= b[2] for c in cases)]):
        m = evaluate_scorer(learned, [c for c in cases if lo <= len(c.rows) <= hi], K, batch_size=512)
        row["gru (learned h0) HR"], row["gru (learned h0) NDCG"] = m["hr@10"], m["ndcg@10"]
    names = list(scorers) + ["gru (learned h0)"]
    print(f"### history-length buckets (new users, HR@10 / NDCG@10; '>10' = 11..{args.max_history} events)\n")
    print(markdown(bucket_rows, ["history", "cases"] + [f"{n} {m}" for n in names for m in ("HR", "NDCG")]))
    result["buckets"] = bucket_rows

    # 2. cold items, ranked among the cold items only
    mask = torch.full((n_rows,), -float("inf"))
    mask[torch.tensor(cold_rows)] = 0.0
    cold_result = []
    content = content_scorer(text_vectors)

    def blended(cs):
        """z-scored GRU + z-scored content cosine, statistics over the cold candidates only."""
        out = []
        for fn in (learned, content):
            sc = fn(cs).cpu()[:, cold_rows]
            out.append((sc - sc.mean(1, keepdim=True)) / sc.std(1, keepdim=True).clamp(min=1e-6))
        full = torch.zeros(len(cs), n_rows)
        full[:, cold_rows] = out[0] + out[1]
        return full

    for sname, fn in [("gru (text path, learned h0)", learned), ("content cosine", content),
                      ("gru + content (z-scores summed)", blended)]:
        m = evaluate_scorer(lambda cs, fn=fn: fn(cs).cpu() + mask, cold_cases, K, batch_size=512)
        cold_result.append({"scorer": sname, "cases": len(cold_cases), "HR@10": m["hr@10"], "NDCG@10": m["ndcg@10"]})
    cold_result.append({"scorer": "random (expected)", "cases": len(cold_cases),
                        "HR@10": min(1.0, K / max(len(cold_rows), 1)), "NDCG@10": float("nan")})
    print(f"\n### cold items ({len(cold_rows)} items never trained on; targets among them, ranked among them)\n")
    print(markdown(cold_result, ["scorer", "cases", "HR@10", "NDCG@10"]))
    result["cold_items"] = cold_result

    # 3. diversity trade-off on each new user's last event
    last = []
    for u in sorted(new_users):
        rows = np.array(rec.rows_for([i for i, _ in seqs[u]]), dtype=np.int64)
        if len(rows) > 1 and rows[-1] not in cold_set:
            last.append(EvalCase(u, rows[:-1], gaps_of([t for _, t in seqs[u]])[:-1], int(rows[-1])))
    states = step_histories(rec, [c.rows for c in last], [c.gaps for c in last])
    scores = rec.score_rows(states).cpu().numpy()
    genres = [set()] + [set(genres_of(t)) for t in rec.item_texts]
    div_rows = []
    for lam in LAMBDAS:
        lists = mmr_rerank_scores(scores, text_vectors, K, lam, n_candidates=50,
                                  exclude_rows=[c.rows.tolist() for c in last])
        ndcg = [1.0 / np.log2(list(lst).index(c.target) + 2) if c.target in lst else 0.0 for lst, c in zip(lists, last)]
        div_rows.append({"lambda": lam, "users": len(last), "NDCG@10": float(np.mean(ndcg)),
                         "HR@10": float(np.mean([c.target in lst for lst, c in zip(lists, last)])),
                         "ILD": intra_list_diversity(lists, text_vectors), "genre ILD": genre_diversity(lists, genres),
                         "coverage": catalog_coverage(lists, rec.n_items)})
    print("\n### diversity trade-off (MMR over the top 50, text vectors; each new user's last event)\n")
    print(markdown(div_rows, ["lambda", "users", "NDCG@10", "HR@10", "ILD", "genre ILD", "coverage"]))
    result["diversity"] = div_rows
    plot_diversity(div_rows, Path(args.out) / f"diversity-{name}.png", name)

    # 4. negative feedback
    result["feedback"] = feedback_table(rec, ratings, new_users, cold_set, args)
    if args.save_models:
        rec.initial_state = h0
        result["model_dir"] = str(rec.save(Path(args.out) / f"model-{name}"))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def genre_diversity(lists, genres: list[set]) -> float:
    """1 - mean pairwise Jaccard overlap of the items' genre sets, averaged over lists (a diversity
    measure independent of the text vectors MMR uses)."""
    values = []
    for rows in lists:
        rows = [r for r in np.asarray(rows).tolist() if r > 0]
        pairs = [(a, b) for n, a in enumerate(rows) for b in rows[n + 1:]]
        if pairs:
            values.append(1.0 - np.mean([len(genres[a] & genres[b]) / max(len(genres[a] | genres[b]), 1)
                                         for a, b in pairs]))
    return float(np.mean(values)) if values else 0.0


def feedback_table(rec, ratings, new_users, cold_set, args) -> list[dict]:
    """Liked next events (rating >= 4) of new users who have negatives (rating <= 2) among their last
    ``args.recent_negatives`` events. Variants differ only in what the negatives do."""
    with torch.no_grad():
        item_table = rec.model.item_vectors().cpu().numpy()  # what the GRU scores with (ID + text)
    text_vectors = rec.model.text_vectors.cpu().numpy()
    cases = []  # (all rows, all gaps, positive rows, positive gaps, negative rows, target)
    for u in sorted(new_users):
        s = ratings.get(u, [])
        rows = rec.rows_for([i for i, _, _ in s])
        for t in range(1, min(len(s), args.max_history + 1)):
            if s[t][2] < 4 or rows[t] in cold_set or rows[t] == PAD:
                continue
            hist = list(range(t))
            neg = [j for j in hist[-args.recent_negatives:] if s[j][2] <= 2]
            if not neg:
                continue
            pos = [j for j in hist if s[j][2] > 2]
            cases.append(({"rows": [rows[j] for j in hist], "ts": [s[j][1] for j in hist]},
                          {"rows": [rows[j] for j in pos], "ts": [s[j][1] for j in pos]},
                          [rows[j] for j in neg], rows[t]))
    if not cases:
        print("\n### negative feedback: no cases (no ratings <= 2 followed by a liked event)\n")
        return []
    targets = torch.tensor([c[3] for c in cases])
    seen = [c[0]["rows"] for c in cases]
    negs = [c[2] for c in cases]

    def scores_for(which: int) -> np.ndarray:
        st = step_histories(rec, [np.array(c[which]["rows"], dtype=np.int64) for c in cases],
                            [gaps_of(c[which]["ts"]) for c in cases])
        return rec.score_rows(st).cpu().numpy()

    def metrics(scores) -> dict:
        m = ranking_metrics(torch.from_numpy(np.asarray(scores, dtype=np.float32)), targets, seen, K)
        return {"HR@10": float(m["hr"].mean()), "NDCG@10": float(m["ndcg"].mean())}

    as_views, without = scores_for(0), scores_for(1)
    rows = [{"variant": "negatives stepped as views (baseline)"} | metrics(as_views),
            {"variant": "negatives left out of the state"} | metrics(without)]
    spaces = {"model item space": item_table, "text space": text_vectors}
    for space, radius, strength in [("model item space", 0.5, 0.5), ("model item space", 0.8, 1.0),
                                    ("model item space", 0.9, 1.0), ("text space", 0.5, 0.5), ("text space", 0.7, 1.0),
                                    ("text space", 0.8, 1.0), ("text space", 0.8, 2.0)]:
        penalised = np.concatenate([negative_penalty(without[s:s + 256], negs[s:s + 256], spaces[space], strength, radius)
                                    for s in range(0, len(cases), 256)])  # worker-sized batches
        rows.append({"variant": f"left out + penalty {strength} ({space}, radius {radius})"} | metrics(penalised))
    for r in rows:
        r["cases"] = len(cases)
    print(f"\n### negative feedback (ratings <= 2 as negatives; liked next events of new users with a negative "
          f"among their last {args.recent_negatives} events)\n")
    print(markdown(rows, ["variant", "cases", "HR@10", "NDCG@10"]))
    return rows


def plot_diversity(rows, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6, 3.8))
    ild = [r["ILD"] for r in rows]
    ax1.plot(ild, [r["NDCG@10"] for r in rows], "o-", color="tab:blue", label="NDCG@10")
    for r in rows:
        ax1.annotate(f"λ={r['lambda']}", (r["ILD"], r["NDCG@10"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set_xlabel("intra-list diversity (1 - mean pairwise cosine of text vectors)")
    ax1.set_xlim(min(ild) - 0.01, max(ild) + 0.03)
    ax1.set_ylabel("NDCG@10", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ild, [r["coverage"] for r in rows], "s--", color="tab:orange", label="catalog coverage")
    ax2.set_ylabel("catalog coverage", color="tab:orange")
    ax1.set_title(f"MMR accuracy / diversity trade-off ({name})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"\n(plot: {path})")


# --- fine-tune on a time-ordered split ------------------------------------------------------------------
def states_before(rec, rows_list, gaps_list, positions_list):
    """Serving state of each user just before each of their ``positions`` (sorted): one pass per user
    through the whole history, batched across users like ``evaluate.step_histories``."""
    n = len(rows_list)
    states = rec.init_state(n)
    out = {}
    lengths = np.array([len(r) for r in rows_list])
    want = [set(p) for p in positions_list]
    for u in range(n):
        if 0 in want[u]:
            out[(u, 0)] = states[u].copy()
    for t in range(int(lengths.max(initial=0))):
        active = np.nonzero(lengths > t)[0]
        states[active] = rec.step(states[active], [int(rows_list[u][t]) for u in active],
                                  [float(gaps_list[u][t]) for u in active])
        for u in active:
            if t + 1 in want[u]:
                out[(u, t + 1)] = states[u].copy()
    return out


def slice_quality(rec, seqs_all: dict, test_keys: set, max_cases: int) -> dict:
    """HR/NDCG@10 of every test event (user, index) given the user's full history before it."""
    users = sorted({u for u, _ in test_keys})
    rows_list, gaps_list, pos_list = [], [], []
    for u in users:
        s = seqs_all[u]
        rows_list.append(np.array(rec.rows_for([i for i, _ in s]), dtype=np.int64))
        gaps_list.append(gaps_of([t for _, t in s]))
        pos_list.append(sorted(j for (uu, j) in test_keys if uu == u))
    snap = states_before(rec, rows_list, gaps_list, pos_list)
    keys = sorted(snap)
    if len(keys) > max_cases:
        keys = sorted(random.Random(0).sample(keys, max_cases))
    keys = [k for k in keys if rows_list[k[0]][k[1]] != PAD]
    sums, n = {"hr": 0.0, "ndcg": 0.0}, 0
    for s in range(0, len(keys), 512):
        part = keys[s:s + 512]
        scores = rec.score_rows(np.stack([snap[k] for k in part])).cpu()
        targets = torch.tensor([int(rows_list[u][j]) for u, j in part])
        seen = [rows_list[u][:j].tolist() for u, j in part]
        m = ranking_metrics(scores, targets, seen, K)
        sums["hr"] += float(m["hr"].sum())
        sums["ndcg"] += float(m["ndcg"].sum())
        n += len(part)
    return {"cases": n, "HR@10": sums["hr"] / max(n, 1), "NDCG@10": sums["ndcg"] / max(n, 1)}


def run_finetune(name: str, d: Path, encoder, args) -> dict:
    item_texts = read_items(d)
    events = read_events(d)
    first, middle, last = time_slices(events, (0.8, 0.9))
    seqs_all = sequences(events)  # stable order; slice membership by (user, index)
    # index of every event inside its user's full sequence, to know which slice it belongs to
    slice_of: dict[tuple[str, float, str], int] = {}
    for k, part in enumerate((first, middle, last)):
        for e in part:
            slice_of.setdefault((e.user_id, e.timestamp, e.item_id), k)
    by_slice = [dict() for _ in range(3)]
    test_keys = set()
    for u, s in seqs_all.items():
        for j, (i, t) in enumerate(s):
            k = slice_of[(u, t, i)]
            by_slice[k].setdefault(u, []).append((i, t))
            if k == 2:
                test_keys.add((u, j))
    base, history = train_split_model(by_slice[0], item_texts, encoder, args)
    before = slice_quality(base, seqs_all, test_keys, args.max_test_cases)
    params = FinetuneParams(epochs=args.finetune_epochs, lr=args.finetune_lr, threads=args.threads, device=args.device)
    tuned, report = finetune(base, by_slice[1], history=by_slice[0], params=params, progress=not args.quiet)
    after = slice_quality(tuned, seqs_all, test_keys, args.max_test_cases)
    rows = [{"model": "trained on first 80% (before)"} | before,
            {"model": f"+ fine-tuned on next 10% (best epoch {report.best_epoch} of {args.finetune_epochs})"} | after]
    print(f"\n### fine-tune on {name} (time split 80/10/10: {len(first)}/{len(middle)}/{len(last)} events; "
          f"test = every event of the last 10% given its full history{'' if before['cases'] < args.max_test_cases else f', sample of {args.max_test_cases}'})\n")
    print(markdown(rows, ["model", "cases", "HR@10", "NDCG@10"]))
    print(f"\nfine-tune: {report.users} users, {report.events} events, {report.seconds:.0f} s; "
          f"validation per epoch: {[round(e.get('valid_ndcg@10', 0), 4) for e in report.epochs]}")
    return {"dataset": name, "slices": [len(first), len(middle), len(last)], "before": before, "after": after,
            "train": {"best_epoch": history.best_epoch, "seconds": round(history.train_seconds, 1)},
            "finetune": {"best_epoch": report.best_epoch, "epochs": report.epochs, "seconds": round(report.seconds, 1)}}


def context_example(encoder, args) -> None:
    """Before/after of a 'space adventure' query for a cooking fan, on a GRU trained on the synthetic world."""
    from stream_rec.recsys.context import context_boost, encode_queries
    from stream_rec.recsys.explain import explain_batch
    from stream_rec_devtools.synthetic import make_world

    world = make_world(n_users=300, seed=0)
    texts = {it["item_id"]: f"{it['title']}. {it['text']}" for it in world.items}
    seqs = {}
    for e in world.events:
        seqs.setdefault(e["user_id"], []).append((e["item_id"], e["timestamp"]))
    params_args = argparse.Namespace(**{**vars(args), "hidden": 64, "emb_dim": 32, "epochs": 8, "train_budget": 60})
    rec, _ = train_split_model(seqs, texts, encoder, params_args)
    history = ["cooking-02", "cooking-03", "cooking-04"]
    rows = rec.rows_for(history)
    state = step_histories(rec, [np.array(rows)], [np.array([0.0, 3600.0, 3600.0], dtype=np.float32)])
    scores = rec.score_rows(state).cpu().numpy()
    scores[0, rows] = -np.inf
    query = "space adventure"
    boosted = context_boost(scores, encode_queries(encoder, [query]), rec.model.text_vectors.cpu().numpy(), alpha=args.alpha)
    titles = [""] + [f"{i} ({texts[i].split('.')[0]})" for i in rec.item_ids]
    print(f"\n### context: user watched {history}; request context.text = {query!r} (alpha {args.alpha})\n")
    print("| rank | without context | with context | reason (with context) |\n|---|---|---|---|")
    top_before = np.argsort(-scores[0])[:K]
    top_after = np.argsort(-boosted[0])[:K]
    reasons = explain_batch(top_after[None, :], np.array([rows]), rec.model.text_vectors.cpu().numpy(), titles,
                            query_vectors=encode_queries(encoder, [query]), queries=[query])[0]
    for r, (a, b, why) in enumerate(zip(top_before, top_after, reasons), start=1):
        print(f"| {r} | {titles[a]} | {titles[b]} | {why} |")


def drift_example(args) -> None:
    """Online HR@3 of a Markov model fitted on synthetic world A, replayed on A and then on a shifted world B
    (users stop following the series), graded by ``OnlineQualityMonitor``; prints windows and alarms."""
    from stream_rec.learning.drift import OnlineQualityMonitor
    from stream_rec_devtools.synthetic import make_world

    k = 3
    worlds = [make_world(n_users=150, p_next=0.9, p_same_theme=0.08, seed=1),
              make_world(n_users=300, p_next=0.9, p_same_theme=0.08, seed=2, start_ts=1.8e9),
              make_world(n_users=300, p_next=0.0, p_same_theme=0.3, seed=3, start_ts=1.9e9)]
    ids = [it["item_id"] for it in worlds[0].items]
    row_of = {i: r for r, i in enumerate(ids, start=1)}
    train = {}
    for e in worlds[0].events:
        train.setdefault(e["user_id"], []).append(row_of[e["item_id"]])
    score = markov_scorer([np.array(r) for r in train.values()], len(ids) + 1)
    stream = [dict(e, user_id=f"{w}-{e['user_id']}") for w, world in ((1, worlds[1]), (2, worlds[2])) for e in world.events]
    monitor = OnlineQualityMonitor(k=k, export_metrics=False)
    windows, hits = [], []
    for n, e in enumerate(stream):
        hit = monitor.observe(e["user_id"], e["item_id"])
        if hit is not None:
            hits.append(hit)
        case = EvalCase(e["user_id"], np.array([row_of[e["item_id"]]]), np.zeros(1, np.float32), 0)
        top = torch.topk(score([case])[0], k).indices.tolist()
        monitor.record(e["user_id"], [ids[r - 1] for r in top])
        if len(hits) and len(hits) % 500 == 0 and (not windows or windows[-1][0] != len(hits)):
            windows.append((len(hits), float(np.mean(hits[-500:])), monitor.recent_hit_rate))
    shift_at = sum(1 for e in stream if e["user_id"].startswith("1-")) - 300  # graded events before world B
    print(f"\n### drift: online HR@{k} on a replay that switches world at graded event ~{shift_at}\n")
    print(markdown([{"graded events": w, "HR@3 (last 500)": h, "ADWIN estimate": a} for w, h, a in windows],
                   ["graded events", "HR@3 (last 500)", "ADWIN estimate"]))
    print(f"\nalarms (drops) at graded events: {[a.n_scored for a in monitor.alarms]} "
          f"({[f'{a.hit_rate_before:.2f} -> {a.hit_rate_after:.2f}' for a in monitor.alarms]})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", help="directory holding ml-100k/ and/or ml-1m-half/")
    p.add_argument("--context-example", action="store_true",
                   help="only print the before/after table of a 'space adventure' query on the synthetic world")
    p.add_argument("--alpha", type=float, default=1.0, help="context weight for --context-example")
    p.add_argument("--drift-example", action="store_true",
                   help="only print the online hit rate and ADWIN alarms on a synthetic replay whose world shifts")
    p.add_argument("--datasets", nargs="*", default=["ml-100k", "ml-1m-half"], help="sub-directories to run tables 1-4 on")
    p.add_argument("--finetune", nargs="*", default=["ml-1m-half"], help="sub-directories to run the fine-tune table on")
    p.add_argument("--out", default="runs/smarter", help="where the JSON results and PNG plots go")
    p.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    p.add_argument("--emb-dim", type=int, default=64, help="item vector size")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout")
    p.add_argument("--epochs", type=int, default=20, help="max training epochs (early stopping, time budget)")
    p.add_argument("--train-budget", type=float, default=240.0, help="training stops after the epoch past this many seconds")
    p.add_argument("--h0-epochs", type=int, default=30, help="epochs of initial-state learning")
    p.add_argument("--max-history", type=int, default=100, help="prefix cases up to this many events (the '>10' bucket)")
    p.add_argument("--recent-negatives", type=int, default=20, help="negatives count if among this many latest events")
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tune epochs")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tune learning rate")
    p.add_argument("--max-test-cases", type=int, default=20000, help="sample of test events in the fine-tune table")
    p.add_argument("--save-models", action="store_true",
                   help="save each dataset's model (with learned h0 and the cold items added) under OUT/model-<dataset>")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from stream_rec.model.encoder import shared_encoder

    encoder = shared_encoder(device=args.device)
    if args.context_example:
        context_example(encoder, args)
        return 0
    if args.drift_example:
        drift_example(args)
        return 0
    if not args.data_dir:
        raise SystemExit("error: --data-dir is required (or --context-example)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir)
    for name in args.datasets:
        if not (data_dir / name).is_dir():
            raise SystemExit(f"error: {data_dir / name} not found")
        res = run_dataset(name, data_dir / name, encoder, args)
        (out / f"smarter-{name}.json").write_text(json.dumps(res, indent=2, default=float))
    for name in args.finetune:
        if not (data_dir / name).is_dir():
            raise SystemExit(f"error: {data_dir / name} not found")
        res = run_finetune(name, data_dir / name, encoder, args)
        (out / f"finetune-{name}.json").write_text(json.dumps(res, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
