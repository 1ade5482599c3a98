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

Verification checks, in order: the DSSE signature (against ``--pub`` when
given); that the signed subjects and provenance equal what the store and the
catalog say now (so a changed file digest, chunk list or provenance row
fails); and, unless told not to, that every file's bytes still decode to
their recorded sha256 (so any flipped byte in a chunk fails).

Keys are offline files: ``KEY`` holds the 32-byte ed25519 seed (mode 0600),
``KEY.pub`` the public key, both as small JSON documents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

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
    if path.exists():
        raise KeyFileError(f"{path} already exists", hint="choose another file; keys are never overwritten")
    sk = nacl.signing.SigningKey.generate()
    pub = bytes(sk.verify_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"type": f"{KEY_TYPE}.private", "seed": _b64(bytes(sk)), "keyid": keyid_of(pub)}, f)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_text(json.dumps({"type": f"{KEY_TYPE}.public", "key": _b64(pub), "keyid": keyid_of(pub)}))
    return str(pub_path), keyid_of(pub)


def _read_key(path, kind: str) -> bytes:
    try:
        d = json.loads(Path(path).read_text())
        if d.get("type") != f"{KEY_TYPE}.{kind}":
            raise ValueError(f"not a {kind} key")
        raw = base64.b64decode(d["seed" if kind == "private" else "key"], validate=True)
        if len(raw) != 32:
            raise ValueError("wrong key length")
        return raw
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found") from None
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{path} is not a weightvault {kind} key ({e})") from None


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
    payload = _canonical(build_statement(vault, r))
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
class SignatureCheck:
    """A successful verification.

    Attributes:
        version: ``model@version``.
        keyids: keys whose signatures verified.
        subjects: files covered.
        pinned: checked against a public key the caller gave.
        data_checked: every file's bytes were re-read and matched.
    """

    version: str
    keyids: list[str]
    subjects: int
    pinned: bool
    data_checked: bool


def _signature_events(vault, manifest_id: str) -> list[dict]:
    with vault.catalog.read() as con:
        eids = [r[0] for r in con.execute(
            "SELECT event_id FROM events WHERE type = 'signature' AND payload->>'manifest' = $1 ORDER BY event_id",
            [manifest_id]).fetchall()]
    return [vault.store.get_event(e)["payload"] for e in eids]  # the store's copy is the truth


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


def _diff(signed: dict, now: dict) -> str:
    """Name the first thing that differs between the signed and the current statement."""
    s_sub = {x["name"]: x["digest"]["sha256"] for x in signed.get("subject", [])}
    n_sub = {x["name"]: x["digest"]["sha256"] for x in now["subject"]}
    for name in sorted(set(s_sub) | set(n_sub)):
        if s_sub.get(name) != n_sub.get(name):
            return f"file {name!r}: signed sha256 {str(s_sub.get(name))[:16]}, now {str(n_sub.get(name))[:16]}"
    sp, np_ = signed.get("predicate", {}), now["predicate"]
    for table in sorted(set(sp.get("catalog", {})) | set(np_["catalog"])):
        a, b = sp.get("catalog", {}).get(table), np_["catalog"].get(table)
        if a != b:
            return f"provenance table {table}: signed {len(a or [])} rows, now {len(b or [])} rows differ"
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
    """Verify every signature of ``ref`` (those by ``pub`` when given); raise SignatureError on any doubt."""
    nacl = _nacl()
    pub_key = _read_key(pub, "public") if pub else None
    r = vault.resolve(ref)
    records = _signature_events(vault, r.manifest_id)
    if pub_key is not None:
        records = [x for x in records if x.get("keyid") == keyid_of(pub_key)]
    if not records:
        who = f" by key {keyid_of(pub_key)}" if pub_key else ""
        raise SignatureError(f"{r} has no signature{who}", hint=f"sign it: weightvault sign {r} --key KEY")
    now = build_statement(vault, r)
    keyids = []
    for rec in records:
        payload = _open_envelope(nacl, rec, pub_key)
        try:
            signed = json.loads(payload)
        except ValueError:
            raise SignatureError(f"{r}: signed payload is not JSON") from None
        if signed.get("_type") != STATEMENT_TYPE or signed.get("predicate", {}).get("manifest") != r.manifest_id:
            raise SignatureError(f"{r}: the signed statement is about another version")
        if _canonical(signed) != _canonical(now):
            raise SignatureError(f"{r}: changed since signing: {_diff(signed, now)}")
        keyids.append(rec["keyid"])
    m = vault.manifest_by_id(r.manifest_id)
    if read_data:
        _check_data(vault, r, m)
    return SignatureCheck(str(r), sorted(set(keyids)), len(m.files), pub_key is not None, read_data)
