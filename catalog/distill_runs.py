"""Index ``distill_run`` events (weightvault/distill.py) into the catalog's ``distill_runs`` table.

Kept apart from the distillation code so that a catalog sync, which loads
every indexer, imports none of what a run needs (tempfile, secrets, the
generation settings: ~8 ms of each snapshot). Table: schemas/catalog/0004_distill.sql.
"""

from __future__ import annotations

import json

from weightvault.catalog import indexer

EVENT_TYPE = "distill_run"


def index_distill_run(con, event_id: str, event: dict) -> None:
    """EVENT_INDEXERS hook: one ``distill_runs`` row per ``distill_run`` event."""
    p = event["payload"]
    s, out, v = p.get("settings", {}), p.get("output", {}), p.get("versions", {})
    con.execute(
        "INSERT INTO distill_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [p["run_id"], event_id, event["at"], p["teacher"]["manifest_id"], p["teacher"].get("ref"),
         p["teacher"].get("kind"), p["prompts"]["hash"], p["prompts"]["count"], p["prompts"].get("name"),
         s.get("max_new_tokens"), s.get("top_k"), s.get("temperature"), s.get("seed"), s.get("batch_size"),
         p.get("device"), p.get("dtype"), v.get("torch"), v.get("transformers"), v.get("weightvault"),
         out.get("sha256"), out.get("rows"), out.get("tokens"), out.get("complete"), out.get("path"),
         p.get("data", {}).get("manifest_id"), json.dumps(s), p.get("seconds")],
    )


indexer.EVENT_INDEXERS[EVENT_TYPE] = index_distill_run
