"""Reliability and security commands: rm, gc, repair, keygen, sign, verify-signature."""

from __future__ import annotations

from weightvault.cli import add_command, open_vault


def register(sub, common):
    p = add_command(sub, "rm", help="remove a version's name (its bytes go at the next gc; history is kept)",
                    example="weightvault rm minilm@3 --reason 'bad run' && weightvault gc", parents=[common],
                    description="remove a version's name (its bytes go at the next gc; history is kept). "
                                "The label is never given to other weights: the next snapshot takes the next "
                                "number, and --version with a removed label is refused.")
    p.add_argument("ref", help="NAME@V")
    p.add_argument("--reason", default="", help="why (kept in the removal record)")
    p.set_defaults(func=cmd_rm)

    p = add_command(sub, "gc", help="delete chunks and manifests no version needs; report freed bytes",
                    example="weightvault gc --dry-run --grace 1h", parents=[common],
                    description="Mark and sweep under the exclusive store lock: marks every ref's manifest, its "
                                "chunks and their delta bases; refuses to run when referenced data is missing; "
                                "deletes unreferenced manifests, then chunks, then temp files older than the "
                                "grace period. Safe to interrupt; rerun to finish.")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    p.add_argument("--grace", default="1h", metavar="DURATION",
                   help="keep unreferenced objects younger than this (0, 90s, 30m, 1h, 2d; default 1h)")
    p.set_defaults(func=cmd_gc)

    p = add_command(sub, "repair", help="decode everything; quarantine damaged chunks; record exactly what was lost",
                    example="weightvault repair --dry-run", parents=[common],
                    description="Explicit and lossy, never silent: damaged chunks move to quarantine/, each "
                                "affected version gets a damage record (see the version_damage view) naming its "
                                "files, tensors and lost bytes. Nothing is zero-filled; snapshotting the same "
                                "files again re-stores the lost chunks and heals every version using them.")
    p.add_argument("--dry-run", action="store_true", help="only report")
    p.add_argument("--remove-damaged", action="store_true", help="also rm the versions that lost data")
    p.set_defaults(func=cmd_repair)

    p = add_command(sub, "keygen", help="create an offline ed25519 signing key pair (KEY and KEY.pub)",
                    example="weightvault keygen ~/.weightvault/release.key", parents=[common])
    p.add_argument("key", help="private key file to create (mode 0600); the public key goes to KEY.pub; "
                               "refused if either exists")
    p.set_defaults(func=cmd_keygen)

    p = add_command(sub, "sign", help="sign a version: in-toto statement of its files and provenance, DSSE, ed25519",
                    example="weightvault sign minilm@2 --key release.key", parents=[common])
    p.add_argument("ref", help="NAME@V")
    p.add_argument("--key", required=True, help="private key file from `weightvault keygen` (refused unless "
                                                "only its owner can read and write it: chmod 600)")
    p.set_defaults(func=cmd_sign)

    p = add_command(sub, "verify-signature", help="check a version's signatures against its files and provenance",
                    example="weightvault verify-signature minilm@2 --pub release.key.pub", parents=[common],
                    description="Checks the DSSE signature of every record, that the newest signature of each "
                                "key (by its signed time) has subjects equal to the version's file digests and "
                                "provenance equal to the catalog's rows now, then re-reads every file (chunk "
                                "hashes and sha256) unless --no-read-data. Older signatures that a newer one by "
                                "the same key superseded are listed as stale, not failures.")
    p.add_argument("ref", help="NAME@V")
    p.add_argument("--pub", help="trusted public key file; without it the key in the record is used "
                                 "(proves integrity, not who signed)")
    p.add_argument("--no-read-data", action="store_true", help="skip re-reading the files' bytes")
    p.set_defaults(func=cmd_verify_signature)


# -- handlers ------------------------------------------------------------------


def cmd_rm(args):
    from weightvault._ui import err_console, print_json
    from weightvault.archive.gc import remove_version

    from weightvault.errors import UsageError

    from weightvault.archive import ids
    from weightvault.errors import StoreFormatError

    v = open_vault(args, create=False)
    try:
        r = v.resolve(args.ref)
    except StoreFormatError:  # its ref is unreadable (verify lists it): removable by its exact name
        r = ids.parse_ref(args.ref)
        if r.version is None:
            raise
    if args.ref.partition("@")[2] in ("", "latest"):  # never remove "the latest" by accident
        raise UsageError(f"{args.ref!r} names no version", hint=f"name one: weightvault rm {r.model}@{r.version}")
    res = remove_version(v.store, r.model, r.version, reason=args.reason, lock_timeout=args.lock_timeout)
    v.catalog.sync()
    if args.json:
        print_json({"model": res.model, "version": res.version, "manifest_id": res.manifest_id,
                    "event_id": res.event_id})
    else:
        err_console().print(f"removed {res.model}@{res.version}; `weightvault gc` frees its unshared bytes once "
                            "they are older than its --grace (default 1h)", markup=False)


def cmd_gc(args):
    from weightvault._ui import human, out_console, print_json, progress_bar
    from weightvault.archive.gc import collect, forget_chunks_in_catalog, parse_duration
    from weightvault.catalog import indexer

    v = open_vault(args, create=False)
    grace = parse_duration(args.grace)
    with progress_bar("gc", enabled=not args.json and not args.dry_run) as bar:
        rep = collect(v.store, dry_run=args.dry_run, grace_s=grace, lock_timeout=args.lock_timeout, progress=bar)
    if not args.dry_run:
        with v.catalog.write(op="gc") as con:
            indexer.sync(con, v.store)
            forget_chunks_in_catalog(con, rep.removed_chunks)
    d = {"dry_run": rep.dry_run, "grace_s": rep.grace_s, "live_versions": rep.live_versions,
         "live_chunks": rep.live_chunks, "base_chunks": rep.base_chunks,
         "removed_manifests": len(rep.removed_manifests), "removed_chunks": len(rep.removed_chunks),
         "freed_bytes": rep.freed_bytes, "kept_young_manifests": rep.kept_young_manifests,
         "kept_young_chunks": rep.kept_young_chunks, "temp_files": rep.temp_files}
    if args.json:
        print_json(d)
        return
    verb = "would free" if rep.dry_run else "freed"
    out_console().print(
        f"{verb} {human(rep.freed_bytes)}: {len(rep.removed_manifests)} manifests, {len(rep.removed_chunks)} chunks"
        f"{'' if rep.dry_run else f', {rep.temp_files} temp files'}; kept {rep.live_chunks} chunks of "
        f"{rep.live_versions} versions ({rep.base_chunks} only as delta bases), "
        f"{rep.kept_young_chunks} unreferenced chunks kept for the grace period (young, or a young one's delta base)")


def cmd_repair(args):
    from weightvault._ui import escape, human, out_console, print_json, progress_bar
    from weightvault.archive.repair import repair

    v = open_vault(args, create=False)
    with progress_bar("repair", enabled=not args.json) as bar:
        rep = repair(v.store, dry_run=args.dry_run, remove_damaged=args.remove_damaged,
                     lock_timeout=args.lock_timeout, progress=bar)
    if not args.dry_run:
        v.catalog.sync()
    if args.json:
        print_json({"clean": rep.clean, "dry_run": rep.dry_run, "versions_checked": rep.versions_checked,
                    "unreadable_versions": [{"version": a, "reason": b} for a, b in rep.unreadable_versions],
                    "damaged_chunks": rep.damaged_chunks, "lost_chunks": rep.lost_chunks,
                    "lost_bytes": rep.lost_bytes, "quarantined": rep.quarantined,
                    "quarantined_deltas": rep.quarantined_deltas, "removed": rep.removed,
                    "losses": [{"version": x.version, "file": x.path, "tensors": list(x.tensors),
                                "chunks": list(x.chunks), "lost_bytes": x.lost_bytes, "header_lost": x.header_lost}
                               for x in rep.losses]})
        return 0 if rep.clean else 5
    c = out_console()
    if rep.clean:
        c.print(f"[green]nothing lost[/]: every chunk of {rep.versions_checked} versions decodes and matches its ID")
        return 0
    for ver, why in rep.unreadable_versions:
        c.print(f"[red]lost version[/] {ver}: {escape(str(why))}")
    for x in rep.losses:
        what = ", ".join(x.tensors) if x.tensors else "non-tensor bytes"
        c.print(f"[red]lost[/] {x.version} {escape(x.path)}: {human(x.lost_bytes)} in {len(x.chunks)} chunks; "
                f"tensors: {escape(what)}" + (" (and header/other bytes)" if x.header_lost and x.tensors else ""))
    n_bad, n_missing = len(rep.damaged_chunks), sum(r == "missing" for r in rep.damaged_chunks.values())
    if rep.dry_run:
        done = f"would quarantine {n_bad - n_missing} damaged chunks"
    else:
        done = f"quarantined {len(rep.quarantined)} damaged chunks"
        if rep.quarantined_deltas:
            done += f" and {len(rep.quarantined_deltas)} deltas built on them"
    done += f" ({n_missing} missing)" if n_missing else ""
    c.print(f"{done}; {human(rep.lost_bytes)} of version data lost. "
            "Snapshot the original files again to heal, or `weightvault repair --remove-damaged`.")
    if rep.removed:
        c.print(f"removed {', '.join(rep.removed)}")
    return 5


def cmd_keygen(args):
    from weightvault._ui import err_console, print_json
    from weightvault.archive.signing import generate_key

    pub, keyid = generate_key(args.key)
    if args.json:
        print_json({"private_key": args.key, "public_key": pub, "keyid": keyid})
    else:
        err_console().print(f"wrote {args.key} (keep it offline) and {pub}; key id {keyid}", markup=False)


def cmd_sign(args):
    from weightvault._ui import err_console, print_json
    from weightvault.archive.signing import sign_version

    v = open_vault(args, create=False)
    res = sign_version(v, args.ref, args.key)
    v.catalog.sync()
    if args.json:
        print_json({"version": res.version, "keyid": res.keyid, "event_id": res.event_id,
                    "statement_sha256": res.statement_sha256, "subjects": res.subjects})
    else:
        err_console().print(f"signed {res.version} ({res.subjects} files) with key {res.keyid}; "
                            f"record {res.event_id[:16]}")


def cmd_verify_signature(args):
    from weightvault._ui import out_console, print_json
    from weightvault.archive.signing import verify_version

    v = open_vault(args, create=False)
    res = verify_version(v, args.ref, pub=args.pub, read_data=not args.no_read_data)
    stale = [{"keyid": x.keyid, "event_id": x.event_id, "signed_at": x.signed_at, "changed": x.changed}
             for x in res.stale]
    if args.json:
        print_json({"version": res.version, "keyids": res.keyids, "subjects": res.subjects,
                    "pinned": res.pinned, "data_checked": res.data_checked, "stale": stale})
    else:
        who = "the given public key" if res.pinned else "the key in the record (pass --pub to check who signed)"
        out_console().print(f"[green]good signature[/] on {res.version} by {', '.join(res.keyids)} ({who}); "
                            f"{res.subjects} files" + (", every byte re-read" if res.data_checked else ""))
        for x in res.stale:
            when = f"signed {x.signed_at}" if x.signed_at else "signed earlier"
            out_console().print(f"  stale: record {x.event_id[:16]} by key {x.keyid} ({when}, superseded by a "
                                f"newer signature): {x.changed}", markup=False, highlight=False)
