"""The core scenarios of the local suites, rerun unchanged on an s3:// store (SeaweedFS).

Overriding ``store_dir`` with an ``s3://BUCKET/store`` URL makes the shared
``vault`` and ``cli`` fixtures (tests/conftest.py) open the object store, so
the imported test functions below run against S3 exactly as written. Tests
that reach into the store folder on disk (corrupting a chunk file, aging
mtimes) stay local-only; tests/test_s3.py covers their S3 counterparts.
"""

from __future__ import annotations

import pytest
from conftest import toy_tensors, write_model
from test_catalog import (  # noqa: F401
    test_catalog_catches_up_with_a_ref_it_missed,
    test_missing_catalog_is_recreated_on_next_command,
    test_rebuild_gives_the_same_rows,
    test_removed_ref_drops_out_of_the_catalog,
    test_sql_formats,
    test_tensor_rows_match_the_file,
    test_views_answer_the_first_questions,
)
from test_cli import test_a_full_session, test_verify_subset_checks_fewer_chunks  # noqa: F401
from test_gc import test_rm_errors  # noqa: F401
from test_snapshot_restore import (  # noqa: F401
    test_explicit_version_and_parent,
    test_identical_tensor_in_other_file_is_stored_once,
    test_minilm_round_trip_is_byte_exact,
    test_read_single_tensor_and_file,
    test_resharded_copy_adds_no_tensor_data,
    test_restore_digest_mismatch_is_reported,
    test_restore_refuses_to_overwrite,
    test_restore_single_file,
    test_second_version_stores_only_changed_tensors,
)

from weightvault.vault import Vault


@pytest.fixture
def store_dir(s3_store_url):
    """The store of every imported test: an s3:// URL instead of a folder."""
    return s3_store_url


def test_rm_then_gc_on_s3_frees_unshared_packs(vault, tmp_path, cli, store_dir):
    """issue 7's gc runs unchanged on a packed S3 store: deleting chunk keys rewrites pack indexes."""
    t = toy_tensors(0)
    a = write_model(tmp_path / "a", t)
    b = write_model(tmp_path / "b", toy_tensors(1))
    ra = vault.snapshot(a, "m")
    rb = vault.snapshot(b, "m")
    assert cli("rm", "m@2").rc == 0
    r = cli("gc", "--grace", "0", "--json")
    assert r.rc == 0, r
    stored = {i.key.rsplit("/", 1)[-1] for i in Vault.open(store_dir).store.list_chunks()}
    assert ra.manifest.chunk_ids() <= stored
    assert not (rb.manifest.chunk_ids() - ra.manifest.chunk_ids()) & stored
    assert cli("restore", "m@1", tmp_path / "out").rc == 0
