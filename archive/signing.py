"""Signed provenance: an in-toto statement about a version, in a DSSE envelope, signed with ed25519.

The statement (https://in-toto.io/Statement/v1) has one subject per file of
the version, ``{"name": path, "digest": {"sha256": ...}}`` (the layout
OpenSSF model-signing uses), and a predicate with the version's manifest ID,
source, lineage and metadata from the manifest plus the provenance rows the
catalog holds for it (lineage edges, linked datasets and their records, the
model card facts), in a canonical order.

Signing reuses the digests the manifest recorded at snapshot time, so signing
a 100 GB version reads no weights. The envelope is stored in the store as a
``signature`` event (hash-named, so it survives a catalog rebuild; the
``signatures`` view lists them).

Verification checks, in order: the DSSE signature of every record (against
``--pub`` when given; a record that does not verify fails); that the newest
signature of each key (newest by the signing time inside the signed
statement, ``predicate.signed_at``) equals the statement rebuilt from the
store and the catalog now (so a changed file digest, chunk list or
provenance row fails, naming the table and column); and, unless told not
to, that every file's bytes still decode to their recorded sha256 (so any
flipped byte in a chunk fails). Older signatures by the same key that no
longer match (signed before a provenance correction, say) are reported as
stale, not as failures: whoever can write events can add signatures only
with a key they hold, and cannot make a replayed old envelope look newer,
because the time it is ordered by is signed.

Keys are offline files: ``KEY`` holds the 32-byte ed25519 seed (mode 0600;
a private key readable or writable by group or others is refused, as ssh
does), ``KEY.pub`` the public key, both as small JSON documents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from weightvault.archive.store import now_iso
from weightvault.errors import IntegrityError, KeyFileError, MissingExtraError, SignatureError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://weightvault.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
KEY_TYPE = "weightvault.ed25519"

# Provenance signed with a version: how it was made. Post-hoc facts (eval
# results, movable tags) are left out so adding them does not void a signature.
PROVENANCE_QUERIES = {
    "lineage_edges": "SELECT * FROM lineage_edges WHERE version_id = $1",
    "version_datasets": "SELECT * FROM version_datasets WHERE version_id = $1",
    "datasets": "SELECT d.* FROM datasets d JOIN version_datasets vd "
                "ON d.name = vd.dataset AND d.version = vd.dataset_version WHERE vd.version_id = $1",
    "model_cards": "SELECT * FROM model_cards WHERE version_id = $1",
}


def _nacl():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:
        raise MissingExtraError("signing", "sign") from None
    return nacl


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keyid_of(public_key: bytes) -> str:
    """Short stable key id: the first 16 hex digits of sha256(public key)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding (what is actually signed)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def generate_key(path: str | os.PathLike) -> tuple[str, str]:
    """Write a new private key to ``path`` (0600) and its public key to ``path.pub``.

    Returns:
        (public key path, key id).
    """
    nacl = _nacl()
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    hint = "choose another KEY name; keygen never overwrites KEY or KEY.pub"
    for p in (path, pub_path):  # both checked before either is written (a dangling symlink counts)
        if os.path.lexists(p):
            raise KeyFileError(f"{p} already exists", hint=hint)
    sk = nacl.signing.SigningKey.generate()
    pub = bytes(sk.verify_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = ((path, 0o600, {"type": f"{KEY_TYPE}.private", "seed": _b64(bytes(sk)), "keyid": keyid_of(pub)}),
            (pub_path, 0o644, {"type": f"{KEY_TYPE}.public", "key": _b64(pub), "keyid": keyid_of(pub)}))
    created = []
    try:
        for p, mode, doc in docs:  # O_EXCL: a file that appeared since the check is never replaced
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            created.append(p)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
    except BaseException as e:
        for p in created:  # nothing half-written: never a private key without its .pub
            p.unlink(missing_ok=True)
        if isinstance(e, FileExistsError):
            raise KeyFileError(f"{e.filename or pub_path} already exists", hint=hint) from None
        raise
    return str(pub_path), keyid_of(pub)


def _read_key(path, kind: str) -> bytes:
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            d = json.loads(f.read().decode())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("type") != f"{KEY_TYPE}.{kind}":
            raise ValueError(f"not a {kind} key")
        raw = base64.b64decode(d["seed" if kind == "private" else "key"], validate=True)
        if len(raw) != 32:
            raise ValueError("wrong key length")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is not a weightvault {kind} key ({e})") from None
    if kind == "private" and os.name == "posix" and mode & 0o077:
        # as ssh does: a seed others can read (or replace) is not a private key any more
        raise KeyFileError(f"{path}: permissions {mode & 0o777:04o} are too open for a private key "
                           "(group or others can read or write it)",
                           hint=f"chmod 600 {shlex.quote(str(path))}, and make a new key pair if others read it")
    return raw


def provenance_rows(vault, version_id: str) -> dict[str, list[dict]]:
    """The catalog's provenance rows for a version, for the tables that exist, canonically ordered."""
    out = {}
    with vault.catalog.read() as con:
        have = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        for name, sql in PROVENANCE_QUERIES.items():
            needs = {"datasets", "version_datasets"} if name == "datasets" else {name}
            if not needs <= have:
                continue
            cur = con.execute(sql, [version_id])
            cols = [d[0] for d in cur.description]
            rows = [json.loads(json.dumps(dict(zip(cols, r)), default=str, sort_keys=True)) for r in cur.fetchall()]
            out[name] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    return out


def build_statement(vault, resolved) -> dict:
    """The in-toto statement for a resolved version, from stored digests and catalog rows."""
    m = vault.manifest_by_id(resolved.manifest_id)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f.path, "digest": {"sha256": f.sha256}} for f in m.files],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": m.model, "version": m.version, "manifest": resolved.manifest_id,
            "created_at": m.created_at, "parent": m.parent, "source": m.source,
            "lineage": list(m.lineage), "metadata": m.metadata,
            "catalog": provenance_rows(vault, resolved.manifest_id),
        },
    }


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class SignResult:
    """A signature written to the store.

    Attributes:
        version: ``model@version``.
        keyid: the signing key's id.
        event_id: the stored record.
        statement_sha256: sha256 of the signed statement bytes.
        subjects: number of files covered.
    """

    version: str
    keyid: str
    event_id: str
    statement_sha256: str
    subjects: int


def sign_version(vault, ref, key_path) -> SignResult:
    """Sign ``ref`` with the private key in ``key_path``; store the DSSE envelope as an event.

    Example:
        >>> # sign_version(Vault.open("vault"), "minilm@1", "release.key")
    """
    nacl = _nacl()
    sk = nacl.signing.SigningKey(_read_key(key_path, "private"))
    pub = bytes(sk.verify_key)
    r = vault.resolve(ref)
    statement = build_statement(vault, r)
    statement["predicate"]["signed_at"] = now_iso()  # signed, so a replayed old record cannot pass as newer
    payload = _canonical(statement)
    sig = sk.sign(pae(PAYLOAD_TYPE, payload)).signature
    envelope = {"payloadType": PAYLOAD_TYPE, "payload": _b64(payload),
                "signatures": [{"keyid": keyid_of(pub), "sig": _b64(sig)}]}
    digest = hashlib.sha256(payload).hexdigest()
    eid = vault.store.put_event("signature", {
        "model": r.model, "version": r.version, "manifest": r.manifest_id, "keyid": keyid_of(pub),
        "public_key": _b64(pub), "statement_sha256": digest, "envelope": envelope,
    })
    return SignResult(str(r), keyid_of(pub), eid, digest, len(vault.manifest_by_id(r.manifest_id).files))


@dataclass(frozen=True)
class StaleSignature:
    """An older signature that a newer one by the same key superseded, and that no longer matches.

    Attributes:
        keyid: the signing key's id.
        event_id: the stored record.
        signed_at: the signing time inside the signed statement (None for records made before 0.1.0).
        changed: what differs from the version's statement now.
    """

    keyid: str
    event_id: str
    signed_at: str | None
    changed: str


@dataclass(frozen=True)
class SignatureCheck:
    """A successful verification.

    Attributes:
        version: ``model@version``.
        keyids: keys whose newest signature verified and matched.
        subjects: files covered.
        pinned: checked against a public key the caller gave.
        data_checked: every file's bytes were re-read and matched.
        stale: older signatures by those keys that no longer match (superseded, not failures).
    """

    version: str
    keyids: list[str]
    subjects: int
    pinned: bool
    data_checked: bool
    stale: list[StaleSignature] = field(default_factory=list)


def _signature_events(vault, manifest_id: str) -> list[tuple[str, dict]]:
    with vault.catalog.read() as con:
        eids = [r[0] for r in con.execute(
            "SELECT event_id FROM events WHERE type = 'signature' AND payload->>'manifest' = $1 ORDER BY event_id",
            [manifest_id]).fetchall()]
    return [(e, vault.store.get_event(e)) for e in eids]  # the store's copy is the truth


def _open_envelope(nacl, rec: dict, pub: bytes | None) -> bytes:
    env = rec["envelope"]
    key = pub if pub is not None else base64.b64decode(rec["public_key"])
    payload = base64.b64decode(env["payload"])
    if env.get("payloadType") != PAYLOAD_TYPE:
        raise SignatureError(f"signature {rec['keyid']}: unexpected payload type {env.get('payloadType')!r}")
    vk = nacl.signing.VerifyKey(key)
    for s in env["signatures"]:
        if s.get("keyid") != keyid_of(key):
            continue
        try:
            vk.verify(pae(PAYLOAD_TYPE, payload), base64.b64decode(s["sig"]))
            return payload
        except nacl.exceptions.BadSignatureError:
            raise SignatureError(f"signature by key {keyid_of(key)} does not verify (the record was altered)") from None
    raise SignatureError(f"no signature by key {keyid_of(key)} in the record")


# Columns that name a provenance row (to say which row changed), and bookkeeping columns that change
# with every correction (named after the columns that carry the facts).
_ROW_KEYS = {"datasets": ("name", "version"), "version_datasets": ("dataset", "dataset_version", "role"),
             "lineage_edges": ("relation", "base_ref", "edge_key"), "model_cards": ()}
_BOOKKEEPING = {"recorded_at", "linked_at", "event_id"}


def _unsigned(statement: dict) -> dict:
    """The statement without its signing time (what is compared with the statement now)."""
    pred = statement.get("predicate")
    if not isinstance(pred, dict) or "signed_at" not in pred:
        return statement
    return {**statement, "predicate": {k: v for k, v in pred.items() if k != "signed_at"}}


def _short(v) -> str:
    t = repr(v)
    return t if len(t) <= 40 else t[:37] + "..."


def _row_label(table: str, row: dict) -> str:
    keys = [k for k in _ROW_KEYS.get(table, ()) if row.get(k) not in (None, "")]
    if table == "datasets" and {"name", "version"} <= set(keys):
        return f"{table} {row['name']}@{row['version']}"
    return table + (" (" + ", ".join(f"{k}={row[k]}" for k in keys[:2]) + ")" if keys else "")


def _table_diff(table: str, signed_rows: list, now_rows: list) -> str:
    """Name the changed row and columns: "datasets d1@1: license 'MIT' -> 'CC0-1.0' (also recorded_at)"."""
    canon = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    gone = [x for x in signed_rows if canon(x) not in {canon(y) for y in now_rows}]
    new = [y for y in now_rows if canon(y) not in {canon(x) for x in signed_rows}]
    if gone and new:
        keys = _ROW_KEYS.get(table, ())
        a = gone[0]
        same_row = [y for y in new if all(y.get(k) == a.get(k) for k in keys)] if keys else new
        b = max(same_row or new, key=lambda y: sum(y.get(k) == v for k, v in a.items()))
        cols = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        facts = [k for k in cols if k not in _BOOKKEEPING] or cols
        text = "; ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in facts[:3])
        rest = [k for k in cols if k not in facts[:3]]
        more = f" (also {', '.join(rest)})" if rest else ""
        extra = len(gone) - 1
        return f"{_row_label(table, a)}: {text}{more}" + (f"; {extra} more rows differ" if extra else "")
    if gone:
        return f"{_row_label(table, gone[0])}: signed row no longer in the catalog" + (
            f" (and {len(gone) - 1} more)" if len(gone) > 1 else "")
    return f"{_row_label(table, new[0])}: row added since signing" + (
        f" (and {len(new) - 1} more)" if len(new) > 1 else "")


def _diff(signed: dict, now: dict) -> str:
    """Name the first thing that differs between the signed and the current statement."""
    signed = _unsigned(signed)
    s_sub = {x["name"]: x["digest"]["sha256"] for x in signed.get("subject", [])}
    n_sub = {x["name"]: x["digest"]["sha256"] for x in now["subject"]}
    for name in sorted(set(s_sub) | set(n_sub)):
        if s_sub.get(name) != n_sub.get(name):
            return f"file {name!r}: signed sha256 {str(s_sub.get(name))[:16]}, now {str(n_sub.get(name))[:16]}"
    sp, np_ = signed.get("predicate", {}), now["predicate"]
    for table in sorted(set(sp.get("catalog", {})) | set(np_["catalog"])):
        a, b = sp.get("catalog", {}).get(table), np_["catalog"].get(table)
        if a != b:
            return _table_diff(table, a or [], b or [])
    for k in sorted(set(sp) | set(np_)):
        if sp.get(k) != np_.get(k):
            return f"predicate field {k!r} changed"
    return "statement differs"


def _check_data(vault, r, m) -> None:
    from weightvault.archive.restore import iter_chunks

    for f in m.files:
        h = hashlib.sha256()
        try:
            for piece in iter_chunks(vault.store, f.chunks):
                h.update(piece)
        except IntegrityError as e:
            raise SignatureError(f"{r} {f.path}: stored bytes no longer match the signed digest ({e})") from None
        if h.hexdigest() != f.sha256:
            raise SignatureError(f"{r} {f.path}: sha256 {h.hexdigest()[:16]} != signed {f.sha256[:16]}")


def verify_version(vault, ref, *, pub=None, read_data: bool = True) -> SignatureCheck:
    """Verify the signatures of ``ref`` (those by ``pub`` when given); raise SignatureError on any doubt.

    Every record must carry a valid signature about this version. Per key, the newest signature (by the
    signed ``predicate.signed_at``; records without one count as older, then by record time) must equal
    the statement now; older ones by the same key that do not are returned as ``stale``.
    """
    nacl = _nacl()
    pub_key = _read_key(pub, "public") if pub else None
    r = vault.resolve(ref)
    records = _signature_events(vault, r.manifest_id)
    if pub_key is not None:
        records = [(e, ev) for e, ev in records if ev["payload"].get("keyid") == keyid_of(pub_key)]
    if not records:
        who = f" by key {keyid_of(pub_key)}" if pub_key else ""
        raise SignatureError(f"{r} has no signature{who}", hint=f"sign it: weightvault sign {r} --key KEY")
    now = _canonical(build_statement(vault, r))
    by_key: dict[str, list[tuple[tuple, str, dict]]] = {}
    for eid, ev in records:
        rec = ev["payload"]
        payload = _open_envelope(nacl, rec, pub_key)
        try:
            signed = json.loads(payload)
        except ValueError:
            raise SignatureError(f"{r}: signed payload is not JSON") from None
        if (not isinstance(signed, dict) or signed.get("_type") != STATEMENT_TYPE
                or not isinstance(signed.get("predicate"), dict)
                or signed["predicate"].get("manifest") != r.manifest_id):
            raise SignatureError(f"{r}: the signed statement is about another version")
        kid = keyid_of(pub_key if pub_key is not None else base64.b64decode(rec["public_key"]))
        signed_at = signed["predicate"].get("signed_at")
        signed_at = signed_at if isinstance(signed_at, str) else None
        by_key.setdefault(kid, []).append(((signed_at or "", str(ev.get("at", "")), eid), eid, signed))
    now_stmt = json.loads(now)
    stale = []
    for kid in sorted(by_key):
        sigs = sorted(by_key[kid], key=lambda x: x[0])
        (_, eid, newest), older = sigs[-1], sigs[:-1]
        if _canonical(_unsigned(newest)) != now:
            raise SignatureError(
                f"{r}: changed since key {kid} last signed it: {_diff(newest, now_stmt)}",
                hint=f"if the change is expected (a provenance correction), sign it again: "
                     f"weightvault sign {r} --key KEY; otherwise do not trust this version")
        for order, e, s in older:
            if _canonical(_unsigned(s)) != now:
                stale.append(StaleSignature(kid, e, order[0] or None, _diff(s, now_stmt)))
    m = vault.manifest_by_id(r.manifest_id)
    if read_data:
        _check_data(vault, r, m)
    return SignatureCheck(str(r), sorted(by_key), len(m.files), pub_key is not None, read_data, stale)
