"""Signing audit fixes: re-signing after a provenance correction, keygen never overwrites KEY.pub,
key files that are JSON but not objects, private keys readable by others, tampered event files."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("nacl")

from weightvault.errors import IntegrityError, KeyFileError, SignatureError  # noqa: E402


def _one_line(r):
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err and "internal error" not in r.err, r
    return lines[0]


def _signature_event_ids(vault):
    vault.catalog.sync()
    with vault.catalog.read() as con:
        return [r[0] for r in con.execute("SELECT event_id FROM events WHERE type = 'signature'").fetchall()]


@pytest.fixture
def key(cli, tmp_path):
    k = tmp_path / "keys" / "rel.key"
    assert cli("keygen", k).rc == 0
    return k


def test_resign_after_provenance_correction_passes_and_reports_stale(cli, vault, toy_model, key, store_dir):
    """Audit 3 #8: a licence correction voided the version for good, even after signing it again."""
    pub = f"{key}.pub"
    assert cli("dataset", "add", "d1", "--license", "MIT").rc == 0
    assert cli("snapshot", toy_model, "--model", "c", "--dataset", "d1:finetune").rc == 0
    first = cli("sign", "c@1", "--key", key, "--json")
    assert first.rc == 0, first
    assert cli("verify-signature", "c@1", "--pub", pub, "--no-read-data").rc == 0
    fix = cli("dataset", "add", "d1", "--license", "CC0-1.0", "--replace")
    assert fix.rc == 0, fix

    # before signing again it fails, naming the table, the column and the values
    r = cli("verify-signature", "c@1", "--pub", pub, "--no-read-data")
    assert r.rc == SignatureError.exit_code, r
    line = _one_line(r)
    assert "datasets" in line and "license" in line and "'MIT'" in line and "'CC0-1.0'" in line, line
    assert "rows differ" not in line and "weightvault sign c@1 --key" in line, line

    # signing again makes it verify; the older signature is reported as stale, not as a failure
    assert cli("sign", "c@1", "--key", key).rc == 0
    ok = cli("verify-signature", "c@1", "--pub", pub, "--json")
    assert ok.rc == 0, ok
    stale = ok.json()["stale"]
    assert [s["event_id"] for s in stale] == [first.json()["event_id"]], stale
    assert "license" in stale[0]["changed"] and stale[0]["keyid"] == first.json()["keyid"]
    human = cli("verify-signature", "c@1", "--pub", pub, "--no-read-data")
    assert human.rc == 0 and "good signature" in human.out and "stale" in human.out, human
    assert "license" in human.out
    unpinned = cli("verify-signature", "c@1", "--no-read-data", "--json")  # the key in the record: same rule
    assert unpinned.rc == 0 and len(unpinned.json()["stale"]) == 1, unpinned

    # replaying the old envelope as a fresh record does not make it "newest": order is by the signed time
    old = vault.store.get_event(first.json()["event_id"])
    vault.store.put_event("signature", old["payload"], at="2999-01-01T00:00:00.000000Z")
    vault.catalog.sync()
    again = cli("verify-signature", "c@1", "--pub", pub, "--no-read-data", "--json")
    assert again.rc == 0 and len(again.json()["stale"]) == 2, again

    # a later correction without a new signature fails again: the newest signature is what counts
    assert cli("dataset", "add", "d1", "--license", "Apache-2.0", "--replace").rc == 0
    bad = cli("verify-signature", "c@1", "--pub", pub, "--no-read-data")
    assert bad.rc == SignatureError.exit_code and "'Apache-2.0'" in _one_line(bad), bad


def test_newest_signature_of_every_key_must_match_without_pub(cli, vault, toy_model, key, tmp_path):
    """Unpinned: a second key's newest signature that no longer matches still fails (naming the key)."""
    other = tmp_path / "keys" / "other.key"
    assert cli("keygen", other, "--json").rc == 0
    assert cli("dataset", "add", "d1", "--license", "MIT").rc == 0
    assert cli("snapshot", toy_model, "--model", "c", "--dataset", "d1:finetune").rc == 0
    assert cli("sign", "c@1", "--key", other).rc == 0
    assert cli("dataset", "add", "d1", "--license", "CC0-1.0", "--replace").rc == 0
    assert cli("sign", "c@1", "--key", key).rc == 0
    assert cli("verify-signature", "c@1", "--pub", f"{key}.pub", "--no-read-data").rc == 0
    r = cli("verify-signature", "c@1", "--no-read-data")
    other_id = json.loads((tmp_path / "keys" / "other.key.pub").read_text())["keyid"]
    assert r.rc == SignatureError.exit_code and other_id in _one_line(r) and "license" in r.err, r


def test_keygen_never_overwrites_an_existing_pub(cli, tmp_path):
    """Audit 3 #9: keygen KEY overwrote a teammate's KEY.pub."""
    d = tmp_path / "k"
    d.mkdir()
    team = d / "team.key.pub"
    team.write_text("a teammate's trusted key\n")
    r = cli("keygen", d / "team.key")
    assert r.rc == KeyFileError.exit_code and "team.key.pub" in _one_line(r), r
    assert team.read_text() == "a teammate's trusted key\n"
    assert not (d / "team.key").exists()  # nothing half-written
    # a dangling symlink counts as taken too (O_EXCL would refuse it anyway)
    os.symlink(d / "nowhere", d / "dangling.key.pub")
    r = cli("keygen", d / "dangling.key")
    assert r.rc == KeyFileError.exit_code and "dangling.key.pub" in _one_line(r), r
    assert not (d / "dangling.key").exists() and not (d / "nowhere").exists()


@pytest.mark.parametrize("text", ["[1, 2]", "1", '"seed"', "null"])
def test_key_file_that_is_json_but_not_an_object(cli, vault, toy_model, tmp_path, text):
    """Audit 3 #10: '[1,2]' as a key gave 'internal error: AttributeError'."""
    vault.snapshot(toy_model, "m")
    priv, pub = tmp_path / "list.key", tmp_path / "list.pub"
    for p in (priv, pub):
        p.write_text(text)
        p.chmod(0o600)
    r = cli("sign", "m@1", "--key", priv)
    assert r.rc == KeyFileError.exit_code and "list.key" in _one_line(r) and "not a JSON object" in r.err, r
    r = cli("verify-signature", "m@1", "--pub", pub)
    assert r.rc == KeyFileError.exit_code and "list.pub" in _one_line(r) and "not a JSON object" in r.err, r
    assert _signature_event_ids(vault) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_private_key_readable_or_writable_by_others_is_refused(cli, vault, toy_model, key, mode):
    """Audit 3 #11: a 0644 private key was used without a word; refused like ssh does."""
    vault.snapshot(toy_model, "m")
    key.chmod(mode)
    r = cli("sign", "m@1", "--key", key)
    line = _one_line(r)
    assert r.rc == KeyFileError.exit_code and str(key) in line and f"chmod 600 {key}" in line, r
    assert _signature_event_ids(vault) == []
    key.chmod(0o600)
    assert cli("sign", "m@1", "--key", key).rc == 0
    # the public key may be world-readable
    os.chmod(f"{key}.pub", 0o644)
    assert cli("verify-signature", "m@1", "--pub", f"{key}.pub").rc == 0


def test_tampered_event_file_is_called_an_event(cli, vault, toy_model, key, store_dir):
    """Audit 3 #15: a byte-flipped event file was reported as 'manifest ...'."""
    vault.snapshot(toy_model, "m")
    r = cli("sign", "m@1", "--key", key, "--json")
    eid = r.json()["event_id"]
    p = store_dir / "events" / eid[:2] / eid
    p.write_bytes(p.read_bytes().replace(b'"signature"', b'"signaturf"', 1))
    r = cli("verify-signature", "m@1", "--pub", f"{key}.pub")
    line = _one_line(r)
    assert r.rc == IntegrityError.exit_code and line.startswith(f"error: event {eid}"), r
    assert "manifest" not in line.split("→")[0], line


def test_records_without_signed_at_count_as_older(cli, vault, toy_model, key):
    """Signatures made before statements carried signed_at sort before any that do, whatever their record time."""
    import base64
    import hashlib

    import nacl.signing

    from weightvault.archive import signing

    assert cli("dataset", "add", "d1", "--license", "MIT").rc == 0
    assert cli("snapshot", toy_model, "--model", "c", "--dataset", "d1:finetune").rc == 0
    r = vault.resolve("c@1")
    payload = signing._canonical(signing.build_statement(vault, r))  # the old format: no signed_at
    sk = nacl.signing.SigningKey(base64.b64decode(json.loads(key.read_text())["seed"]))
    pub = bytes(sk.verify_key)
    kid = signing.keyid_of(pub)
    env = {"payloadType": signing.PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
           "signatures": [{"keyid": kid, "sig": base64.b64encode(
               sk.sign(signing.pae(signing.PAYLOAD_TYPE, payload)).signature).decode()}]}
    legacy = vault.store.put_event("signature", {
        "model": "c", "version": "1", "manifest": r.manifest_id, "keyid": kid,
        "public_key": base64.b64encode(pub).decode(), "statement_sha256": hashlib.sha256(payload).hexdigest(),
        "envelope": env}, at="2999-01-01T00:00:00.000000Z")
    vault.catalog.sync()
    assert cli("verify-signature", "c@1", "--pub", f"{key}.pub", "--no-read-data").rc == 0  # legacy alone still verifies
    assert cli("dataset", "add", "d1", "--license", "CC0-1.0", "--replace").rc == 0
    assert cli("sign", "c@1", "--key", key).rc == 0
    ok = cli("verify-signature", "c@1", "--pub", f"{key}.pub", "--no-read-data", "--json")
    assert ok.rc == 0 and [s["event_id"] for s in ok.json()["stale"]] == [legacy], ok
    assert ok.json()["stale"][0]["signed_at"] is None
