"""New items in the quality benchmark: the hybrid after the new items joined its catalogue from their text.

benchmarks/quality.py calls :func:`new_item_tables` for the data sets with new items (the worlds' new
releases, MovieLens ``-new``): new-item users and warm users ranked over all items, plain and with the
freshness policy (``stream_rec.recsys.freshness``): the model's own, which training chose on validation with
simulated new items (``stream_rec.recsys.freshchoice``); ``--fresh-reference`` uses the policy chosen on the
validation events of the true new items instead (the best a choice could know), ``--fresh-slots`` a given one.
"""

from __future__ import annotations


from stream_rec.recsys.freshchoice import describe_policy, policy_grid, policy_metrics  # noqa: E402

MAX_WARM_COST = 0.03  # the bound of the reference choice on the true new items' validation events


def new_item_tables(ds, rec, encoder, args) -> dict:
    """The hybrid after the new items joined its catalogue: new-item users and warm users, ranked over all
    items, plain and with the freshness policy: the model's own (``rec.meta["freshness"]``). The policy grid
    is scored on the validation targets of the true new items too (each user's second-to-last event): the
    policy with the most new-item hits at a warm NDCG@10 cost of at most 3% there is the reference
    (``--fresh-reference`` uses it; ``--fresh-slots`` and ``--fresh-min-*`` fix one instead)."""
    import numpy as np

    from stream_rec.model.evaluate import content_scorer, evaluate_scorer, recommender_scorer, test_cases
    from stream_rec.recsys.freshness import FreshnessPolicy

    full, new = ds.split.full, ds.new_items
    groups = {"test": ds.split.test, "valid": ds.split.valid}

    def cases(which, want_new):
        targets = {u: t for u, t in groups[which].items() if (t[0] in new) == want_new}
        return test_cases(full, targets, rec.row_of)

    scorer = recommender_scorer(rec)
    before = {w: evaluate_scorer(scorer, cases(w, False)) for w in groups}  # trained catalogue only
    rec.add_catalog({i: ds.items.get(i, "") for i in sorted(new)}, lambda: encoder)
    fresh = np.zeros(rec.n_items + 1, dtype=bool)
    fresh[rec.rows_for(sorted(new))] = True
    scorer = recommender_scorer(rec)
    text = rec.model.text_vectors.cpu()
    new_cases = {w: cases(w, True) for w in groups}
    warm_cases = {w: cases(w, False) for w in groups}

    grid = []  # validation: new-item HR@10 and warm NDCG@10 cost of each policy
    if new_cases["valid"] and warm_cases["valid"]:
        scored = {k: [(part, scorer(part)) for part in batches((new_cases if k == "new" else warm_cases)["valid"])]
                  for k in ("new", "warm")}
        for policy in policy_grid():
            n = policy_metrics(scored["new"], fresh, policy, text=text)
            w = policy_metrics(scored["warm"], fresh, policy, text=text)
            grid.append(describe_policy(policy) | {
                "new_hr@10": round(n["hr@10"], 4), "warm_cost": round(1 - w["ndcg@10"] / before["valid"]["ndcg@10"], 4),
                "policy": policy})
    own = rec.meta.get("freshness")
    if args.fresh_slots is not None:
        d = FreshnessPolicy()
        chosen = FreshnessPolicy(slots=args.fresh_slots, by=args.fresh_by or d.by,
                                 min_ratio=d.min_ratio if args.fresh_min_ratio is None else args.fresh_min_ratio,
                                 min_similarity=d.min_similarity if args.fresh_min_similarity is None
                                 else args.fresh_min_similarity)
        how = "given"
    elif own is not None and not getattr(args, "fresh_reference", False):
        from stream_rec.recsys.freshness import policy_from_config

        chosen, how = policy_from_config(own), "the model's own, chosen by training"
    else:
        allowed = [g for g in grid if g["warm_cost"] <= MAX_WARM_COST] or [{"policy": FreshnessPolicy(slots=0)}]
        chosen = max(allowed, key=lambda g: (g.get("new_hr@10", 0.0), -g.get("warm_cost", 0.0)))["policy"]
        how = "chosen on validation"
    label = f"hybrid + freshness policy ({how})"
    table = {
        "policy": describe_policy(chosen) | {"how": how} | ({"why": own.get("why")} if own and "own" in how else {}),
        "validation grid": [{k: v for k, v in g.items() if k != "policy"} for g in grid],
        "new-item users": {
            "hybrid, plain ranking": evaluate_scorer(scorer, new_cases["test"]),
            label: evaluate_policy(scorer, new_cases["test"], fresh, chosen, text),
            "content-only cosine": evaluate_scorer(content_scorer(text.numpy()), new_cases["test"])},
        "warm users": {
            "hybrid, trained catalogue only": before["test"],
            "hybrid, plain ranking": evaluate_scorer(scorer, warm_cases["test"]),
            label: evaluate_policy(scorer, warm_cases["test"], fresh, chosen, text)},
    }
    base = before["test"]["ndcg@10"]
    table["warm NDCG@10 cost of the policy"] = round(1 - table["warm users"][label]["ndcg@10"] / base, 4) if base else None
    plain = table["warm users"]["hybrid, plain ranking"]["ndcg@10"]  # the policy's own share of that cost
    table["warm NDCG@10 cost against the plain ranking"] = round(1 - table["warm users"][label]["ndcg@10"] / plain, 4) if plain else None
    return table


def batches(cases, size: int = 512):
    return [cases[s:s + size] for s in range(0, len(cases), size)]


def evaluate_policy(scorer, cases, fresh, policy, text, k: int = 10) -> dict:
    """HR/NDCG/MRR@k of the lists ``fresh_topk`` makes (the target's position in the final list)."""
    return policy_metrics([(part, scorer(part)) for part in batches(cases)], fresh, policy, k, text)


def print_new_items(name: str, t: dict) -> None:
    print(f"\n#### {name}: new items ranked among all items (the new items joined the catalogue from their text)")
    print("| users | scorer | HR@10 | NDCG@10 | fresh slots used / list |")
    print("|---|---|---|---|---|")
    for group in ("new-item users", "warm users"):
        for label, r in t[group].items():
            used = r.get("fresh_slots_used_per_list")
            print(f"| {group} ({r['users']}) | {label} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                  f"{'-' if used is None else f'{used:.2f}'} |")
    cost = t["warm NDCG@10 cost of the policy"]
    own = t.get("warm NDCG@10 cost against the plain ranking")
    print(f"warm NDCG@10 cost of the policy {t['policy']}: {'-' if cost is None else f'{cost:.2%}'} (against the "
          f"trained catalogue; {'-' if own is None else f'{own:.2%}'} against the plain ranking of all items)")
