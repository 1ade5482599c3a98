"""Core commands: init, snapshot, log, show, restore, sql, du, verify, catalog, demo."""

from __future__ import annotations

import argparse

from weightvault.cli import add_command, open_vault


def register(sub, common):
    p = add_command(sub, "init", help="create a store (other commands create the default one on first use)",
                    example="weightvault --store /data/vault init", parents=[common])
    p.add_argument("--endpoint", metavar="URL", default=argparse.SUPPRESS,
                   help="S3 endpoint of an s3://BUCKET/PREFIX store (remembered for later commands)")
    p.set_defaults(func=cmd_init)

    p = add_command(sub, "snapshot", help="archive a model folder (or hf:ORG/NAME[@REV]) as a new version; several "
                                         "folders as successive versions",
                    example="weightvault snapshot ./all-MiniLM-L6-v2 --model minilm --tag base -m 'as released'\n"
                            "  weightvault snapshot run/checkpoint-500 run/checkpoint-1000 --model run7",
                    parents=[common])
    p.add_argument("path", nargs="+",
                   help="model folder (Hugging Face layout), or hf:ORG/NAME[@REVISION] via the HF cache; "
                        "several: archived in the order given, each the parent of the next, every local "
                        "folder checked before anything is written")
    p.add_argument("--model", help="model name, e.g. minilm or org/name (default for hf: the repo id)")
    p.add_argument("--version", help="version label (default: next number; one folder only)")
    p.add_argument("--parent", help="parent version (default: the model's latest; '' for none; with several "
                                    "folders, the first one's)")
    p.add_argument("--tag", action="append", default=[], help="tag (repeatable; one folder only)")
    p.add_argument("--message", "-m", default="", help="a note on this version (on each, with several folders)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out matching files")
    p.add_argument("--distilled-from", metavar="RUN",
                   help="record a 'distilled' lineage edge to the teacher of distillation run RUN")
    p.add_argument("--convert-pickle", action="store_true",
                   help="convert .bin/.pt/.pth/.ckpt checkpoints to safetensors (static allowlist scan, then "
                        "torch.load weights_only=True); without it they are refused")
    from weightvault.commands.provenance import add_snapshot_options, cmd_catalog_export

    add_snapshot_options(p)  # --base-model, --relation, --dataset
    p.set_defaults(func=cmd_snapshot)

    p = add_command(sub, "log", help="list models, or the versions of one model",
                    example="weightvault log minilm", parents=[common])
    p.add_argument("model", nargs="?", help="model name")
    p.set_defaults(func=cmd_log)

    p = add_command(sub, "show", help="show one version: files, sizes, storage",
                    example="weightvault show minilm@2 --tensors", parents=[common])
    p.add_argument("ref", help="NAME@V (NAME alone: latest)")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.set_defaults(func=cmd_show)

    p = add_command(sub, "restore", help="restore a version byte-for-byte into a folder",
                    example="weightvault restore minilm@1 ./minilm-v1 --file config.json", parents=[common])
    p.add_argument("ref", help="NAME@V")
    p.add_argument("dir", help="target folder")
    p.add_argument("--file", action="append", default=[], help="restore only this file (repeatable)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--fsync", action="store_true",
                   help="flush every file to disk before it appears under its name (default: left to the OS, "
                        "as cp and git checkout do; a restore can always be repeated)")
    p.set_defaults(func=cmd_restore)

    p = add_command(sub, "sql", help="run SQL on the catalog (read-only)",
                    example='weightvault sql "SELECT model, version, added_stored_bytes FROM version_storage"',
                    description="run SQL on the catalog (read-only). The query reads the catalog and nothing "
                                "else: no files, ATTACH, settings or extensions (for those, open the catalog in "
                                "the duckdb shell: duckdb -readonly \"$(weightvault catalog path)\"). Statements "
                                "separated by ';' run in order and the last one's rows are printed. With --json, "
                                "JSON columns are JSON values, times ISO 8601 UTC, and NaN or infinity null.")
    p.add_argument("query", nargs="?", help="the SQL")
    p.add_argument("-f", "--file", dest="sql_file", help="read the SQL from a file")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_sql)

    p = add_command(sub, "du", help="raw and stored bytes, dedup and compression savings",
                    example="weightvault du --json", parents=[common])
    p.set_defaults(func=cmd_du)

    p = add_command(sub, "verify", help="check the store; name the versions, files and tensors any damage affects",
                    example="weightvault verify --read-data --subset 10", parents=[common],
                    description="Default: decode and re-hash every chunk the versions use (detects any flipped "
                                "byte), as restic check --read-data. --structure is the fast check only: "
                                "manifests parse and match their IDs, every chunk and delta base exists, "
                                "headers and sizes are sound.")
    p.add_argument("ref", nargs="?", help="NAME@V (default: every version)")
    p.add_argument("--read-data", action="store_true", help="decode and hash every chunk (the default)")
    p.add_argument("--structure", action="store_true", help="fast structural check only; reads a few KiB per chunk")
    p.add_argument("--subset", type=float, metavar="PCT", help="re-hash a random PCT%% of the chunks")
    p.set_defaults(func=cmd_verify)

    p = add_command(sub, "catalog", help="catalog maintenance: rebuild, sync, path, export",
                    example="weightvault catalog rebuild")
    csub = p.add_subparsers(dest="catalog_cmd", metavar="ACTION")
    csub.required = True
    c = add_command(csub, "rebuild", help="recreate the catalog from the store alone",
                    example="weightvault catalog rebuild", parents=[common])
    c.set_defaults(func=cmd_catalog_rebuild)
    c = add_command(csub, "sync", help="index versions and events the catalog lacks",
                    example="weightvault catalog sync", parents=[common])
    c.set_defaults(func=cmd_catalog_sync)
    c = add_command(csub, "path", help="print the DuckDB file's path (open it with duckdb -readonly)",
                    example="duckdb -readonly $(weightvault catalog path)")
    c.set_defaults(func=cmd_catalog_path)
    c = add_command(csub, "export", help="write every catalog table to DIR/<table>.parquet (--views: the views too)",
                    example="weightvault catalog export ./catalog-parquet --views", parents=[common],
                    description="write every catalog table to DIR/<table>.parquet (--views: the views too). "
                                "DIR/_export.json lists what was written; a file the previous export listed "
                                "and this one did not write is removed, so DIR holds one export. A file of that name that "
                                "no export listed (your own versions.parquet) is never replaced: the export is refused.")
    c.add_argument("dir", help="output folder, or s3://BUCKET/PATH to write into a bucket")
    c.add_argument("--views", action="store_true",
                   help="also write each view (datasets, lineage, version_storage, ...) as DIR/<view>.parquet, "
                        "its rows as of now")
    c.set_defaults(func=cmd_catalog_export)

    p = add_command(sub, "demo", help="archive the real all-MiniLM-L6-v2, add a version, query, restore",
                    example="pip install 'weightvault[demo]' && weightvault demo", parents=[common])
    p.add_argument("--model", default="demo/all-MiniLM-L6-v2", help="model name to archive under")
    p.set_defaults(func=cmd_demo)


# -- handlers ------------------------------------------------------------------


def cmd_init(args):
    from weightvault._ui import err_console, escape, print_json
    from weightvault.archive.store import default_store_path
    from weightvault.vault import Vault

    v = Vault.init(args.store or default_store_path(), lock_timeout=args.lock_timeout)
    where = getattr(v.store, "url", None) or str(v.root)  # s3:// stores: root is the local cache
    if args.json:
        print_json({"store": where, "id": v.store.config["id"], "format": v.store.config["format"],
                    "catalog": str(v.store.catalog_path)})
    else:
        err_console().print(f"store ready at [bold]{escape(where)}[/]")


def snapshot_summary(res) -> dict:
    s = res.stats
    return {
        "model": res.model, "version": res.version, "manifest_id": res.manifest_id,
        "files": s.files, "tensors": s.tensors, "chunks": s.chunks, "raw_bytes": s.raw_bytes,
        "new_chunks": s.new_chunks, "new_raw_bytes": s.new_raw_bytes, "new_stored_bytes": s.new_stored_bytes,
        "dedup_bytes": s.dedup_bytes, "parent": res.manifest.parent,
        "encoded_against": res.encoded_against,
        "healed_chunks": sorted(s.healed_chunks),
    }


def print_snapshot(res) -> None:
    from weightvault._ui import human, out_console, ratio

    s = res.stats
    c = out_console()
    c.print(f"[bold green]{res.model}@{res.version}[/] archived: {s.files} files, {s.tensors} tensors, "
            f"{human(s.raw_bytes)}")
    c.print(f"  new:          {s.new_chunks} of {s.chunks} chunks, {human(s.new_raw_bytes)} raw "
            f"-> {human(s.new_stored_bytes)} stored ({ratio(s.new_raw_bytes, s.new_stored_bytes)})")
    c.print(f"  deduplicated: {s.chunks - s.new_chunks} chunks, {human(s.dedup_bytes)} already in the store")
    if res.encoded_against:
        c.print(f"  changes stored as deltas and casts of {res.encoded_against} (its base)")
    if s.healed_chunks:
        c.print(f"  healed:       {len(s.healed_chunks)} damaged chunks stored again "
                f"({', '.join(sorted(c[:16] for c in s.healed_chunks))})", markup=False)
    c.print(f"  manifest {res.manifest_id[:16]}")


def _default_model(paths: list[str]) -> str:
    from weightvault.archive import hub
    from weightvault.errors import UsageError

    names = {hub.default_model_name(p) if hub.is_hub_ref(p) else None for p in paths}
    if None in names:
        raise UsageError("--model is required for a local folder", hint=f"weightvault snapshot {paths[0]} --model NAME")
    if len(names) > 1:
        raise UsageError("these hf: references name different repos", hint="give --model to archive them as one model")
    return names.pop()


def cmd_snapshot(args):
    from weightvault._ui import print_json, progress_bar

    from weightvault.commands.provenance import snapshot_extras

    v = open_vault(args)
    args.model = args.model or _default_model(args.path)
    extras = snapshot_extras(v, args)  # lineage and dataset links, checked before anything is written
    if args.distilled_from:  # the distilled edge from a recorded run (weightvault/distill.py)
        from weightvault.distill import lineage_edge

        extras["lineage"] = tuple(extras.get("lineage", ())) + (lineage_edge(v, args.distilled_from),)
    kw = dict(extras, version=args.version, parent=args.parent, tags=tuple(args.tag), message=args.message,
              exclude=tuple(args.exclude), convert_pickle=args.convert_pickle)
    with progress_bar(f"snapshot {args.model}", enabled=not args.json) as bar:
        if len(args.path) == 1:
            results = [v.snapshot(args.path[0], args.model, progress=bar, **kw)]
        else:  # one process and one catalog update for the series (Vault.snapshot_series)
            results = v.snapshot_series(args.path, args.model, progress=bar, **kw)
    if args.json:
        out = [snapshot_summary(r) for r in results]
        print_json(out[0] if len(args.path) == 1 else out)
    else:
        for r in results:
            print_snapshot(r)


def cmd_log(args):
    from weightvault._ui import human, out_console, print_json, table
    from weightvault.errors import ModelNotFoundError

    v = open_vault(args)
    if args.model:
        cols, rows = v.query(
            "SELECT s.version, s.created_at, s.raw_bytes, s.added_stored_bytes, p.version AS parent, s.message, "
            "  (SELECT string_agg(tag, ',' ORDER BY tag) FROM version_tags t WHERE t.version_id = s.version_id) "
            "FROM version_storage s LEFT JOIN versions p ON p.version_id = s.parent_id "
            "WHERE s.model = ? ORDER BY s.created_at", [args.model])
        if not rows:
            raise ModelNotFoundError(args.model)
        if args.json:
            print_json([dict(zip(["version", "created_at", "raw_bytes", "added_stored_bytes", "parent",
                                  "message", "tags"], r)) for r in rows])
            return
        out_console().print(table(["version", "created", "raw", "added", "parent", "tags", "message"],
                                  [(r[0], str(r[1])[:19], human(r[2]), human(r[3]), r[4] or "", r[6] or "", r[5])
                                   for r in rows], title=args.model))
        return
    cols, rows = v.query("SELECT model, n_versions, raw_bytes, stored_bytes, last_snapshot FROM model_storage "
                         "ORDER BY model")
    if args.json:
        print_json([dict(zip(cols, r)) for r in rows])
        return
    if not rows:
        out_console().print("the store is empty: archive a model with `weightvault snapshot PATH --model NAME`")
        return
    out_console().print(table(["model", "versions", "raw", "stored", "last snapshot"],
                              [(r[0], r[1], human(r[2]), human(r[3]), str(r[4])[:19]) for r in rows]))


def cmd_show(args):
    from weightvault._ui import human, out_console, print_json, shape, table

    v = open_vault(args)
    r = v.resolve(args.ref)
    m = v.manifest_by_id(r.manifest_id)
    cols, rows = v.query("SELECT added_stored_bytes, added_raw_bytes, referenced_stored_bytes, unique_raw_bytes "
                         "FROM version_storage WHERE version_id = ?", [r.manifest_id])
    storage = dict(zip(cols, rows[0])) if rows else {}
    if args.json:
        d = {"model": m.model, "version": m.version, "manifest_id": r.manifest_id, "created_at": m.created_at,
             "parent": m.parent, "message": m.message, "tags": list(m.tags), "source": m.source,
             "lineage": list(m.lineage), "metadata": m.metadata, "raw_bytes": m.raw_bytes, **storage,
             "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "format": f.format,
                        "chunks": len(f.chunks), "tensors": len(f.tensors)} for f in m.files]}
        if args.tensors:
            d["tensors"] = [{"file": f.path, "name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
                            for f in m.files for t in f.tensors]
        print_json(d)
        return
    c = out_console()
    c.print(f"[bold]{m.model}@{m.version}[/]  manifest {r.manifest_id[:16]}  created {m.created_at}")
    if m.message:
        c.print(f"  {m.message}", markup=False)
    src = m.source
    c.print(f"  source: {src.get('path') or src.get('repo')} {src.get('revision', '')}".rstrip(), markup=False)
    if storage:
        c.print(f"  raw {human(m.raw_bytes)}; added to the store {human(storage['added_stored_bytes'])}")
    _, bases = v.query("SELECT relation, coalesce(base_model || '@' || base_version, base_ref, base_id) FROM lineage "
                       "WHERE version_id = ? ORDER BY 1, 2", [r.manifest_id])
    for rel, base in bases:
        c.print(f"  lineage: {rel} of {base}", markup=False)
    c.print(table(["file", "size", "format", "chunks", "tensors", "sha256"],
                  [(f.path, human(f.size), f.format, len(f.chunks), len(f.tensors) or "", f.sha256[:12])
                   for f in m.files]))
    if args.tensors:
        c.print(table(["file", "tensor", "dtype", "shape"],
                      [(f.path, t.name, t.dtype, shape(t.shape)) for f in m.files for t in f.tensors], fold=(0, 1)))


def cmd_restore(args):
    import time

    from weightvault._ui import err_console, human, print_json, progress_bar

    v = open_vault(args, create=False)
    t0 = time.perf_counter()
    try:
        with progress_bar(f"restore {args.ref}", enabled=not args.json) as bar:
            res = v.restore(args.ref, args.dir, files=tuple(args.file) or None, force=args.force, progress=bar,
                            fsync=args.fsync)
    except KeyboardInterrupt:
        err_console().print("interrupted: each file restored so far is whole and verified, and no partial file "
                            f"is left; rerun with --force to finish: weightvault restore {args.ref} {args.dir} --force",
                            markup=False)
        return 130
    dt = time.perf_counter() - t0
    if args.json:
        print_json({"files": list(res.files), "bytes": res.bytes, "seconds": round(dt, 3), "verified": True})
    else:
        err_console().print(f"restored {len(res.files)} files, {human(res.bytes)} into {args.dir} "
                            f"(every file sha256-verified) in {dt:.1f}s", markup=False)


def cmd_sql(args):
    import csv
    import sys

    from weightvault._ui import out_console, print_json, table
    from weightvault.errors import UsageError

    if args.sql_file:
        with open(args.sql_file, encoding="utf-8") as f:
            query = f.read()
    elif args.query:
        query = args.query
    else:
        raise UsageError("no query given", hint='pass one: weightvault sql "FROM version_storage"')
    fmt = "json" if args.json else args.format
    cols, rows, types = open_vault(args).sql(query, types=True)
    if fmt == "json":  # a JSON column (settings, payload, metadata) is JSON here, not a string of it
        import json

        parse = [t == "JSON" for t in types]
        print_json([{c: json.loads(v) if p and isinstance(v, str) else v for c, v, p in zip(cols, r, parse)}
                    for r in rows])
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        out_console().print(table(cols, rows))


def du_report(v) -> dict:
    cols, rows = v.query("SELECT model, n_versions, raw_bytes, unique_raw_bytes, stored_bytes, added_stored_bytes "
                         "FROM model_storage ORDER BY model")
    models = [dict(zip(cols, r)) for r in rows]
    _, tot = v.query(
        "SELECT (SELECT coalesce(sum(raw_bytes), 0) FROM versions), "
        "       coalesce(sum(c.raw_bytes), 0), coalesce(sum(c.stored_bytes), 0), count(*) "
        "FROM chunks c WHERE chunk_id IN (SELECT chunk_id FROM file_chunks)")
    raw, unique_raw, stored, n_chunks = tot[0]
    for m in models:
        m["dedup_saved_bytes"] = m["raw_bytes"] - m["unique_raw_bytes"]
        m["compression_saved_bytes"] = m["unique_raw_bytes"] - m["stored_bytes"]
    return {
        "models": models,
        "total": {"raw_bytes": raw, "unique_raw_bytes": unique_raw, "stored_bytes": stored, "chunks": n_chunks,
                  "dedup_saved_bytes": raw - unique_raw, "compression_saved_bytes": unique_raw - stored,
                  "ratio": round(raw / stored, 3) if stored else None},
    }


def cmd_du(args):
    from weightvault._ui import human, out_console, print_json, ratio, table

    rep = du_report(open_vault(args))
    if args.json:
        print_json(rep)
        return
    rows = [(m["model"], m["n_versions"], human(m["raw_bytes"]), human(m["dedup_saved_bytes"]),
             human(m["compression_saved_bytes"]), human(m["stored_bytes"]), ratio(m["raw_bytes"], m["stored_bytes"]))
            for m in rep["models"]]
    t = rep["total"]
    total = ("total", "", human(t["raw_bytes"]), human(t["dedup_saved_bytes"]),
             human(t["compression_saved_bytes"]), human(t["stored_bytes"]), ratio(t["raw_bytes"], t["stored_bytes"]))
    out_console().print(table(["model", "versions", "raw", "saved by dedup", "saved by compression", "stored",
                               "ratio"], rows, total=total))


def cmd_verify(args):
    from weightvault._ui import err_console, escape, human, out_console, print_json, progress_bar

    v = open_vault(args, create=False)
    subset = args.subset / 100 if args.subset is not None else None
    with progress_bar("verify", enabled=not args.json) as bar:
        read_data = args.read_data or subset is not None or not args.structure
        rep = v.verify(args.ref, subset=subset, progress=bar, read_data=read_data)
    if args.json:
        print_json({"ok": rep.ok, "mode": rep.mode, "versions": rep.versions, "chunks_checked": rep.chunks_checked,
                    "chunks_total": rep.chunks_total, "bytes_checked": rep.bytes_checked,
                    "broken_versions": [{"version": b[0], "reason": b[1]} for b in rep.broken_versions],
                    "damaged": [{"chunk_id": d.chunk_id, "reason": d.reason, "cause": d.cause,
                                 "uses": [{"version": u[0], "file": u[1], "tensor": u[2]} for u in d.uses]}
                                for d in rep.damaged]})
    else:
        c = out_console()
        what = f"decoded {human(rep.bytes_checked)}" if rep.mode == "read-data" else "structure only; --read-data to re-hash"
        c.print(f"checked {rep.chunks_checked} of {rep.chunks_total} chunks ({what}) "
                f"in {len(rep.versions)} versions")
        for ver, why in rep.broken_versions:
            c.print(f"[red]unreadable version[/] {ver}: {escape(str(why))}")
        for d in rep.damaged:
            c.print(f"[red]damaged[/] chunk {d.chunk_id[:16]}: {escape(str(d.reason))}")
            for ver, path, tensor in d.uses:
                c.print(f"    {ver} {path}" + (f" tensor {tensor}" if tensor else ""), markup=False)
        if rep.ok:
            c.print("[green]all chunks intact[/]")
        elif rep.broken_versions:
            cmds = "; ".join(f"weightvault rm {v}" for v, _ in rep.broken_versions)
            err_console().print(f"→ a version whose manifest or ref cannot be read cannot be restored: `{cmds}` "
                                "removes it (its history is kept)", markup=False)
    return 0 if rep.ok else 5


def cmd_catalog_rebuild(args):
    from weightvault._ui import err_console, print_json

    v = open_vault(args, create=False)
    added, dropped, events = v.catalog.rebuild()
    if args.json:
        print_json({"versions": added, "events": events})
    else:
        err_console().print(f"catalog rebuilt from the store: {added} versions, {events} events")


def cmd_catalog_sync(args):
    from weightvault._ui import err_console, print_json

    added, dropped, events = open_vault(args).catalog.sync()
    if args.json:
        print_json({"added": added, "dropped": dropped, "events": events})
    else:
        err_console().print(f"catalog in step: {added} versions added, {dropped} dropped, {events} events")


def cmd_catalog_path(args):
    v = open_vault(args)
    v.catalog.sync()
    print(v.catalog.path)


def cmd_demo(args):
    from weightvault.demo import run_demo

    return run_demo(open_vault(args), args.model, as_json=args.json)
