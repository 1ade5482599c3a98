"""Provenance commands: dataset, link, lineage, tag, eval; helpers for snapshot and catalog export."""

from __future__ import annotations

from weightvault.cli import add_command, open_vault

RELATIONS = ("finetune", "adapter", "merge", "quantized", "cast", "distilled")
ROLES = ("pretrain", "finetune", "eval", "distill")


def register(sub, common):
    p = add_command(sub, "dataset", help="training-data records: add, list, fingerprint",
                    example="weightvault dataset add alpaca --license CC-BY-NC-4.0 --cutoff 2023-03-13")
    dsub = p.add_subparsers(dest="dataset_cmd", metavar="ACTION")
    dsub.required = True
    d = add_command(dsub, "add", help="record a dataset (from flags or a JSON/YAML file)",
                    example="weightvault dataset add wiki --version 20231101 --license CC-BY-SA-4.0 "
                            "--cutoff 2023-11-01 --path ./wiki-parquet", parents=[common])
    d.add_argument("name", nargs="?", help="dataset name, e.g. wikipedia-en or org/name")
    d.add_argument("--file", help="read the record from a .json or .yaml file (schemas/dataset.schema.json)")
    d.add_argument("--version", help="version label (default 1)")
    d.add_argument("--source-uri", help="where the data came from")
    d.add_argument("--content-hash", help="sha256:<hex> (see `dataset fingerprint`)")
    d.add_argument("--license", help="SPDX id or expression, e.g. CC-BY-SA-4.0")
    d.add_argument("--cutoff", dest="cutoff_date", metavar="YYYY-MM-DD", help="last collection date")
    d.add_argument("--tokens", dest="n_tokens", type=int, help="token count")
    d.add_argument("--rows", dest="n_rows", type=int, help="row count")
    d.add_argument("--description", help="free text")
    d.add_argument("--extra", metavar="JSON", help="free-form JSON object")
    d.add_argument("--path", help="fingerprint this local file/folder for content hash and row count")
    d.add_argument("--replace", action="store_true", help="record a correction of an existing NAME@VERSION")
    d.set_defaults(func=cmd_dataset_add)
    d = add_command(dsub, "list", help="recorded datasets", example="weightvault dataset list --json",
                    parents=[common])
    d.set_defaults(func=cmd_dataset_list)
    d = add_command(dsub, "fingerprint", help="hash a data file or folder and count parquet/jsonl/csv rows",
                    example="weightvault dataset fingerprint ./data/alpaca.jsonl", parents=[common])
    d.add_argument("path", help="file or folder")
    d.set_defaults(func=cmd_dataset_fingerprint)

    p = add_command(sub, "link", help="record that a version used a dataset (role pretrain|finetune|eval|distill)",
                    example="weightvault link student@1 alpaca@1 --role distill", parents=[common])
    p.add_argument("ref", help="NAME@V")
    p.add_argument("dataset", help="DATASET[@VERSION] (default: its latest record)")
    p.add_argument("--role", required=True, choices=ROLES)
    p.set_defaults(func=cmd_link)

    p = add_command(sub, "lineage", help="draw a version's family tree with relations and datasets; add an edge",
                    example="weightvault lineage bert-ft@1   |   weightvault lineage bert-ft@1 --add-base bert@1 "
                            "--relation finetune", parents=[common])
    p.add_argument("ref", help="NAME@V")
    p.add_argument("--add-base", metavar="REF", help="record a base: NAME@V in this store or hf:ORG/NAME")
    p.add_argument("--relation", choices=RELATIONS, help="relation to the base (with --add-base)")
    p.add_argument("--run-id", help="distilled: the distillation run (a `weightvault distill` run id, or your own "
                                    "tool's: it is recorded as given)")
    p.add_argument("--prompt-set-hash", help="distilled: hash of the prompt set")
    p.add_argument("--settings", metavar="JSON", help="distilled: generation settings (JSON object)")
    p.set_defaults(func=cmd_lineage)

    p = add_command(sub, "tag", help="point a movable tag at a version (history kept); list or remove tags",
                    example="weightvault tag bert@3 prod   |   weightvault tag bert   |   weightvault tag bert prod --delete",
                    parents=[common])
    p.add_argument("ref", help="NAME@V to tag, or NAME to list its tags")
    p.add_argument("tag", nargs="?", help="tag name")
    p.add_argument("--message", "-m", default="", help="why it moved")
    p.add_argument("--delete", action="store_true", help="remove the tag (the removal is recorded)")
    p.set_defaults(func=cmd_tag)

    p = add_command(sub, "eval", help="record an evaluation result of a version",
                    example="weightvault eval student@1 --task sts-b --metric spearman --value 0.82", parents=[common])
    p.add_argument("ref", help="NAME@V")
    p.add_argument("--task", required=True)
    p.add_argument("--metric", required=True)
    p.add_argument("--value", required=True, type=float)
    p.add_argument("--dataset", help="DATASET[@VERSION] evaluated on")
    p.add_argument("--settings", metavar="JSON", help="evaluation settings (JSON object)")
    p.set_defaults(func=cmd_eval)


def add_snapshot_options(p) -> None:
    """Provenance options of `weightvault snapshot` (called from commands/core.py)."""
    p.add_argument("--base-model", metavar="REF",
                   help="base of this version: NAME@V here or hf:ORG/NAME[@REV] (one archived here, an hf: one "
                        "by `snapshot hf:`, is also what a first version is stored against, unless --relation "
                        "distilled)")
    p.add_argument("--relation", choices=RELATIONS, help="relation to --base-model (default finetune)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME[@V]:ROLE",
                   help="dataset used, e.g. alpaca@1:finetune (repeatable)")


def snapshot_extras(v, args) -> dict:
    """Keyword arguments for Vault.snapshot from the provenance options (checked before anything is written)."""
    if getattr(args, "relation", None) and not getattr(args, "base_model", None):
        from weightvault.errors import UsageError

        raise UsageError("--relation needs --base-model", hint=f"e.g. --base-model bert@1 --relation {args.relation}")
    if not (getattr(args, "base_model", None) or getattr(args, "dataset", None)):
        return {}  # most snapshots: no need to import the provenance layer (~10 ms)
    from weightvault import provenance as pv

    return pv.snapshot_provenance(v, {}, base_model=getattr(args, "base_model", None),
                                  relation=getattr(args, "relation", None) or "finetune",
                                  datasets=getattr(args, "dataset", None) or ())


def _json_arg(text, flag: str):
    import json

    from weightvault.errors import UsageError

    if text is None:
        return None
    def no_nan(name):
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_nan)  # NaN and Infinity: Python accepts, JSON does not
    except ValueError:
        raise UsageError(f"{flag}: not valid JSON", hint=f"e.g. {flag} '{{\"temperature\": 0}}'") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag}: expected a JSON object")
    return value


# -- handlers ------------------------------------------------------------------


def cmd_dataset_add(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, print_json
    from weightvault.catalog import datasets as ds
    from weightvault.errors import InvalidInputError, RecordValidationError, UsageError

    from pathlib import Path

    fields = ("version", "source_uri", "content_hash", "license", "cutoff_date", "n_tokens", "n_rows", "description")
    if args.file:
        if args.name or any(getattr(args, f) is not None for f in fields) or args.extra or args.path:
            raise UsageError("--file takes the whole record", hint="put every field in the file, or use flags only")
        record, source = ds.load_file(args.file), args.file
    else:
        if not args.name:
            raise UsageError("a dataset name is needed", hint="weightvault dataset add NAME --license SPDX-ID ...")
        record = {"name": args.name, **{f: getattr(args, f) for f in fields if getattr(args, f) is not None}}
        if args.extra is not None:
            record["extra"] = _json_arg(args.extra, "--extra")
        source = "flags"
    if args.path:
        fp = ds.fingerprint(args.path)
        record.setdefault("content_hash", fp.content_hash)
        if fp.n_rows is not None:
            record.setdefault("n_rows", fp.n_rows)
        record.setdefault("source_uri", str(Path(fp.path).absolute()))
    v = open_vault(args)
    try:
        eid, rec = pv.add_dataset(v, record, source=source, replace=args.replace)
    except RecordValidationError as e:
        if source != "flags":
            raise
        flag = _DATASET_FLAGS.get(e.field, e.field)
        raise InvalidInputError(f"dataset add: {flag}: {e.reason}",
                                hint=e.hint or f"fix {flag}; `weightvault dataset add --help` lists the fields") from None
    if args.json:
        print_json({**rec, "event_id": eid})
    else:
        err_console().print(f"recorded dataset [bold]{rec['name']}@{rec['version']}[/] (event {eid[:16]})")


# dataset record field -> the `dataset add` flag that sets it, for error messages
_DATASET_FLAGS = {"name": "NAME", "cutoff_date": "--cutoff", "n_tokens": "--tokens", "n_rows": "--rows",
                  "source_uri": "--source-uri", "content_hash": "--content-hash", "license": "--license",
                  "version": "--version", "description": "--description", "extra": "--extra"}


def cmd_dataset_list(args):
    from weightvault._ui import out_console, print_json, table

    cols, rows = open_vault(args).query(
        "SELECT name, version, license, cutoff_date, n_rows, n_tokens, content_hash, source_uri FROM datasets "
        "ORDER BY name, recorded_at")
    if args.json:
        print_json([dict(zip(cols, r)) for r in rows])
    elif not rows:
        out_console().print("no datasets recorded: add one with `weightvault dataset add NAME --path FILE`",
                            markup=False)
    else:
        out_console().print(table(["name", "version", "license", "cutoff", "rows", "tokens", "hash", "source"],
                                  [(*r[:6], (r[6] or "")[:19], r[7]) for r in rows]))


def cmd_dataset_fingerprint(args):
    from dataclasses import asdict

    from weightvault._ui import human, out_console, print_json
    from weightvault.catalog import datasets as ds

    fp = ds.fingerprint(args.path)
    if args.json:
        print_json(asdict(fp))
        return
    c = out_console()
    c.print(f"{fp.path}: {len(fp.files)} files, {human(fp.n_bytes)}, "
            f"{fp.n_rows if fp.n_rows is not None else 'no tabular'} rows", markup=False)
    c.print(f"content_hash {fp.content_hash}")


def cmd_link(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, print_json

    v = open_vault(args)
    eid = pv.link_dataset(v, args.ref, args.dataset, args.role)
    if args.json:
        print_json({"event_id": eid})
    else:
        err_console().print(f"linked {args.ref} -> {args.dataset} as {args.role}", markup=False)


def _tree_label(node: dict) -> str:
    from weightvault._ui import escape

    rel = node.get("relation")
    head = f"[cyan]{rel}[/] " if rel else ""
    name = escape(node["ref"]) if node.get("ref") else f"[bold]{node['model']}@{node['version']}[/]"
    run = f" [dim](run {node['run_id']})[/]" if node.get("run_id") else ""
    return (head + name + run + (" [dim](removed)[/]" if node.get("removed") else "")
            + (" [red](cycle)[/]" if node.get("cycle") else ""))


def _add_datasets(branch, node):
    from weightvault._ui import escape

    for d in node.get("datasets", ()):
        branch.add(f"[green]{d['role']}[/] {escape(d['dataset'])}@{escape(str(d['dataset_version']))} "
                   f"[dim]{escape(d['license'] or 'license unknown')}[/]")


def _grow(branch, nodes, key):
    for n in nodes:
        child = branch.add(_tree_label(n))
        _add_datasets(child, n)
        _grow(child, n.get(key, ()), key)


def cmd_lineage(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, out_console, print_json
    from weightvault.errors import UsageError

    v = open_vault(args)
    if args.add_base:
        if not args.relation:
            raise UsageError("--add-base needs --relation", hint=f"one of: {', '.join(RELATIONS)}")
        eid = pv.add_lineage(v, args.ref, args.add_base, args.relation, run_id=args.run_id,
                             prompt_set_hash=args.prompt_set_hash, settings=_json_arg(args.settings, "--settings"))
        if not args.json:
            err_console().print(f"recorded: {args.ref} {args.relation} of {args.add_base} (event {eid[:16]})",
                                markup=False)
    elif args.relation or args.run_id or args.prompt_set_hash or args.settings:
        raise UsageError("--relation/--run-id/--prompt-set-hash/--settings go with --add-base")
    tree = pv.lineage_tree(v, args.ref)
    if args.json:
        print_json(tree)
        return
    from rich.tree import Tree

    root = Tree(f"[bold]{tree['model']}@{tree['version']}[/] [dim]{tree['version_id'][:12]}[/]")
    _add_datasets(root, tree)
    if tree["bases"]:
        _grow(root.add("[yellow]derived from[/]"), tree["bases"], "bases")
    if tree["derived"]:
        _grow(root.add("[yellow]derived versions[/]"), tree["derived"], "derived")
    out_console().print(root)


def cmd_tag(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, out_console, print_json, table
    from weightvault.archive import ids
    from weightvault.errors import UsageError

    v = open_vault(args)
    if args.tag is None:  # list
        model = ids.parse_ref(args.ref).model
        # version_id null: the tag was deleted; removed: it points at a version removed with `rm`
        cols, rows = v.query("SELECT h.tag, coalesce(v.version, r.version) AS version, h.moved_at, h.origin, "
                             "h.message, coalesce(t.version_id = h.version_id AND t.moved_at = h.moved_at, false) "
                             "AS current, h.version_id, h.version_id IS NOT NULL AND v.version_id IS NULL AS removed "
                             "FROM tag_history h LEFT JOIN versions v ON v.version_id = h.version_id "
                             "LEFT JOIN removed_versions r ON r.version_id = h.version_id "
                             "LEFT JOIN tags t ON t.model = h.model AND t.tag = h.tag "
                             "WHERE h.model = ? ORDER BY h.tag, h.moved_at, h.event_id", [model])
        if args.json:
            print_json([dict(zip(cols, r)) for r in rows])
        else:
            def where(r):
                if r[6] is None:
                    return "(deleted)"
                return f"{r[1] or r[6][:12]} (removed)" if r[7] else r[1]

            out_console().print(table(["tag", "version", "moved at", "origin", "message", "current"],
                                      [(r[0], where(r), str(r[2])[:19], r[3], r[4] or "",
                                        "*" if r[5] else "") for r in rows], title=f"tags of {model}"))
        return
    if args.delete:
        if "@" in args.ref:
            raise UsageError("--delete takes the model name, not NAME@V", hint=f"weightvault tag NAME {args.tag} --delete")
        eid = pv.remove_tag(v, args.ref, args.tag)
        msg = f"removed tag {args.tag} from {args.ref}"
    else:
        eid = pv.move_tag(v, args.ref, args.tag, message=args.message)
        msg = f"{args.tag} -> {v.resolve(args.ref)}"
    if args.json:
        print_json({"event_id": eid})
    else:
        err_console().print(msg, markup=False)


def cmd_eval(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, print_json

    v = open_vault(args)
    eid = pv.record_eval(v, args.ref, args.task, args.metric, args.value, dataset=args.dataset,
                         settings=_json_arg(args.settings, "--settings"))
    if args.json:
        print_json({"event_id": eid})
    else:
        err_console().print(f"recorded {args.task}/{args.metric} = {args.value} for {args.ref}", markup=False)


def cmd_catalog_export(args):
    from weightvault import provenance as pv
    from weightvault._ui import err_console, print_json

    if str(args.dir).startswith("s3://"):  # into a bucket (issue 8): archive/s3.py
        from weightvault.archive import s3

        done = s3.export_catalog(open_vault(args), args.dir, views=args.views)
    else:
        done = pv.export_catalog(open_vault(args), args.dir, views=args.views)
    if args.json:
        print_json(done)
    else:
        n_views = sum(d["kind"] == "view" for d in done)
        what = f"{len(done) - n_views} tables" + (f" and {n_views} views" if n_views else "")
        err_console().print(f"wrote {what} to {args.dir} as Parquet ({sum(d['rows'] for d in done)} rows)",
                            markup=False)
