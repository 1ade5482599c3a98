"""The CLI end to end: real subprocesses for start-up and the default store, in-process for the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import toy_tensors, tree_files, write_model


def run(*args, env=None, cwd=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "weightvault", *map(str, args)], capture_output=True,
                          text=True, env=e, cwd=cwd, timeout=300)


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from weightvault.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('duckdb', 'numpy', 'torch', 'transformers', 'zstandard', 'rich') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [
    ["restore", "m@1", "out", "--file", "config.json", "--json"],
    ["--store", "s", "--lock-timeout", "3", "snapshot", "folder", "--model", "m", "--tag", "a", "--tag", "b"],
    ["--store=s", "catalog", "sync", "--json"],
    ["--endpoint", "http://127.0.0.1:1", "dataset", "add", "wiki", "--source-uri", "u", "--json"],
    ["distill", "--rerun", "r1", "--json"],
])
def test_the_one_command_parser_parses_like_the_full_one(argv):
    """A CLI call builds only the parser of the command it runs; what it parses must not change."""
    from weightvault.cli import build_parser

    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_anything_but_a_command_gets_the_full_parser(capsys):
    from weightvault.cli import _command_in, main

    assert _command_in(["--store", "s", "log"]) == "log" and _command_in(["--store=s", "log"]) == "log"
    assert _command_in(["--help"]) is None and _command_in(["--sto", "s", "log"]) is None  # abbreviation
    with pytest.raises(SystemExit):
        main(["restre"])
    err = capsys.readouterr().err
    assert "invalid choice: 'restre'" in err and "'restore'" in err and "'distill'" in err


@pytest.mark.parametrize("json_flag", [["--json"], []], ids=["json", "piped"])
def test_scripted_snapshot_and_restore_never_import_rich(tmp_path, toy_model, json_flag):
    """Scripts pay no terminal UI: --json output, and human output into a pipe, stay off rich (~40 ms)."""
    store, out = tmp_path / "s", tmp_path / "out"
    code = ("import sys; from weightvault.cli import main; "
            f"a = main(['--store', {str(store)!r}, 'snapshot', {str(toy_model)!r}, '--model', 't', *{json_flag!r}]); "
            f"b = main(['--store', {str(store)!r}, 'restore', 't@1', {str(out)!r}, *{json_flag!r}]); "
            "print(a, b, 'rich' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stderr.strip().splitlines()[-1] == "0 0 False", r.stderr
    assert (out / "model.safetensors").exists()
    if not json_flag:  # the same lines rich printed, markup stripped
        assert r.stdout.startswith("t@1 archived: ") and "\n  manifest " in r.stdout, r.stdout
        assert r.stderr.startswith("restored ") and "(every file sha256-verified)" in r.stderr, r.stderr


MARKUP_SAMPLES = ["plain", "[bold red]error:[/] x", "pip install 'weightvault[teacher]'", "a [0] b [WIP] c",
                  "\\[bold]escaped", "\\\\[bold]two backslashes", "\\\\\\[dim]three[/]", "[#ff0000]hex[/] [@click]x[/]",
                  "nested [a [b] c]", "C:\\path\\[x]", "[link=https://x.y/z]l[/link] end", "[]", "[/]"]


@pytest.mark.parametrize("text", MARKUP_SAMPLES)
def test_plain_console_prints_what_rich_prints(text):
    """Off a terminal the CLI writes lines itself (weightvault/_ui.py); they must read as rich's would."""
    import io

    from rich.console import Console
    from rich.markup import escape as rich_escape

    from weightvault._ui import escape, strip_markup

    def rich_plain(markup):
        buf = io.StringIO()
        Console(file=buf, width=10_000, highlight=False, emoji=False, color_system=None).print(markup)
        return buf.getvalue()[:-1]

    try:
        expected = rich_plain(text)
    except Exception:  # noqa: BLE001 - rich rejects it (a closing tag with nothing open): escape() matters
        expected = None
    if expected is not None:
        assert strip_markup(text) == expected
    assert escape(text) == rich_escape(text)
    assert strip_markup(escape(text)) == text == rich_plain(escape(text))


def test_messages_and_warnings_keep_their_brackets(cli, toy_model):
    """A version message is data: "[bold]" in it is shown, not taken as markup."""
    assert cli("snapshot", toy_model, "--model", "m", "--message", "fix [bold] and [red]x[/]").rc == 0
    assert "fix [bold] and [red]x[/]" in cli("log", "m").out


def test_piped_tables_do_not_wrap(tmp_path, monkeypatch):
    """Off a terminal a table keeps its natural width, so a long tensor name stays on one line for
    grep; $COLUMNS still sets a width, as rich reads it."""
    import numpy as np

    monkeypatch.delenv("COLUMNS", raising=False)
    name = "model.decoder.layers.31.self_attn.q_proj.lora_A.default.weight"
    src = write_model(tmp_path / "m", {name: np.ones((2, 3), dtype=np.float32)})
    store = tmp_path / "s"
    assert run("--store", store, "snapshot", src, "--model", "m").returncode == 0
    r = run("--store", store, "show", "m@1", "--tensors")
    assert r.returncode == 0 and any(name in line and "2x3" in line for line in r.stdout.splitlines()), r.stdout
    narrow = run("--store", store, "show", "m@1", "--tensors", env={"COLUMNS": "60"})
    assert narrow.returncode == 0 and name not in narrow.stdout
    assert max(len(line) for line in narrow.stdout.splitlines() if "│" in line) <= 60


def test_user_text_in_summary_lines_is_printed_literally(cli, toy_model, tmp_path):
    """Messages, paths and names inside the one-line summaries are data too (rich used to drop
    "[bold]" and "[/x]" from them silently: `show` printed "fix  and x")."""
    msg = "fix [bold] and [/x] [link=http://a]"
    assert cli("snapshot", toy_model, "--model", "m", "--message", msg).rc == 0
    assert f"  {msg}" in cli("show", "m@1").out.splitlines()
    dest = tmp_path / "out [bold]v1[/]"
    r = cli("restore", "m@1", dest)
    assert r.rc == 0 and f"into {dest} " in r.err, r
    data = tmp_path / "rows [red].jsonl"
    data.write_text('{"a": 1}\n')
    r = cli("dataset", "fingerprint", data)
    assert r.rc == 0 and r.out.startswith(f"{data}: 1 files"), r
    r = cli("eval", "m@1", "--task", "[bold]task", "--metric", "acc", "--value", "0.5")
    assert r.rc == 0 and "recorded [bold]task/acc = 0.5 for m@1" in r.err, r
    r = cli("sql", "SELECT 'root:x:0:0 :smile:' AS passwd_line")  # emoji codes are data too
    assert r.rc == 0 and "root:x:0:0 :smile:" in r.out, r


def test_restore_imports_no_catalog_and_no_unneeded_stdlib(tmp_path, toy_model):
    """A restore reads the store only: no catalog modules, no duckdb, and none of socket, uuid,
    secrets (together 25-35 ms of each CLI call on the bench machine)."""
    store, out = tmp_path / "s", tmp_path / "out"
    assert run("--store", store, "snapshot", toy_model, "--model", "t", "--json").returncode == 0
    code = ("import sys; from weightvault.cli import main; "
            f"rc = main(['--store', {str(store)!r}, 'restore', 't@1', {str(out)!r}, '--json']); "
            "mods = ('weightvault.catalog', 'duckdb', 'socket', 'uuid', 'secrets'); "
            "print(rc, [m for m in mods if m in sys.modules], file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stderr.strip().splitlines()[-1] == "0 []", r.stderr
    assert (out / "model.safetensors").exists()


def test_snapshot_catalog_write_imports_no_distillation_or_resource_machinery(tmp_path, toy_model):
    """A snapshot's catalog sync loads every indexer: those must not pull in what a distillation run
    needs (tempfile, secrets) or importlib.resources (together ~15 ms of each snapshot)."""
    store = tmp_path / "s"
    code = ("import sys; from weightvault.cli import main; "
            f"rc = main(['--store', {str(store)!r}, 'snapshot', {str(toy_model)!r}, '--model', 't', '--json']); "
            "from weightvault.vault import Vault; n = len(Vault.open(sys.argv[1]).sql('FROM distill_runs')[1]); "
            "mods = ('weightvault.distill', 'tempfile', 'secrets', 'importlib.resources'); "
            "print(rc, n, [m for m in mods if m in sys.modules], file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=300)
    assert r.stderr.strip().splitlines()[-1] == "0 0 []", r.stderr


def test_snapshot_codes_fp32_weights_with_rans_without_importing_numpy(tmp_path):
    """The rANS encoder's tables are plain Python: a snapshot pays no numpy import (~80 ms per CLI call)."""
    import numpy as np
    from safetensors.numpy import save_file

    from weightvault.archive.native import native

    if native is None:
        pytest.skip("built without a C compiler: rANS is not picked")
    src = tmp_path / "m"
    src.mkdir()
    rng = np.random.default_rng(3)
    save_file({"w": (rng.standard_normal((512, 512)) * 0.03).astype(np.float32)}, str(src / "model.safetensors"))
    store = tmp_path / "s"
    code = ("import sys; from weightvault.cli import main; "
            f"a = main(['--store', {str(store)!r}, 'snapshot', {str(src)!r}, '--model', 'm', '--json']); "
            "print(a, 'numpy' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stderr.strip().splitlines()[-1] == "0 False", r.stderr
    from weightvault.vault import Vault

    v = Vault.open(store, create=False)
    kinds = [v.store.chunk_header(i.key.rsplit("/", 1)[-1])[0].meta.get("kinds", "") for i in v.store.list_chunks()]
    assert any("rans" in k.split(",") for k in kinds)


def _on_a_terminal(args, env) -> tuple[int, str]:
    """Run the real CLI with stdin, stdout and stderr on a pseudo-terminal: (exit code, what it showed)."""
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "weightvault", *map(str, args)], stdin=slave, stdout=slave,
                         stderr=slave, env=env, close_fds=True)
    os.close(slave)
    shown = b""
    while True:
        try:
            block = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not block:
            break
        shown += block
    os.close(master)
    return p.wait(timeout=300), shown.decode(errors="replace")


def test_snapshot_and_restore_on_a_terminal_show_progress_and_succeed(tmp_path, toy_model):
    """Interactive use: stderr is a terminal, so the rich progress bars run (the --json and piped
    paths above never build them)."""
    env = dict(os.environ, WEIGHTVAULT_STORE=str(tmp_path / "s"), TERM="xterm", COLUMNS="100")
    rc, shown = _on_a_terminal(["snapshot", toy_model, "--model", "tty"], env)
    assert rc == 0 and "internal error" not in shown, shown
    rc, shown = _on_a_terminal(["restore", "tty@1", tmp_path / "out"], env)
    assert rc == 0 and "internal error" not in shown, shown
    rc, shown = _on_a_terminal(["verify", "tty@1"], env)
    assert rc == 0 and "internal error" not in shown, shown
    for f in toy_model.rglob("*"):
        if f.is_file():
            assert (tmp_path / "out" / f.relative_to(toy_model)).read_bytes() == f.read_bytes()


def test_human_output_of_log_show_and_catalog_commands(cli, toy_model, store_dir):
    """The tables and one-line summaries people read (the other tests mostly read --json)."""
    empty = cli("log")
    assert empty.rc == 0 and "the store is empty" in empty.out, empty
    assert cli("snapshot", toy_model, "--model", "toy", "--message", "first cut").rc == 0
    r = cli("log")
    assert r.rc == 0 and "toy" in r.out and "versions" in r.out, r
    r = cli("log", "toy")
    assert r.rc == 0 and "first cut" in r.out, r
    r = cli("show", "toy@1", "--tensors")
    assert r.rc == 0 and "toy@1" in r.out and "model.safetensors" in r.out, r
    assert all(name in r.out for name in toy_tensors()), r
    r = cli("catalog", "sync")
    assert r.rc == 0 and "catalog in step: 0 versions added, 0 dropped" in r.err, r
    r = cli("catalog", "path")
    assert r.rc == 0 and Path(r.out.strip()).is_file(), r


def test_show_names_a_scalar_tensor_shape(cli, tmp_path):
    """A 0-d tensor (a step counter, a temperature) has shape (): `show` says so, not an empty cell."""
    import numpy as np

    src = write_model(tmp_path / "m", {"logit_scale": np.array(2.5, dtype=np.float32),
                                       "w": np.ones((2, 3), dtype=np.float32)})
    assert cli("snapshot", src, "--model", "m").rc == 0
    rows = {line.split("│")[1].strip(): line.split("│")[-1].strip()
            for line in cli("show", "m@1", "--tensors").out.splitlines() if line.count("│") == 3}
    assert rows == {"logit_scale": "scalar", "w": "2x3"}, rows
    js = cli("show", "m@1", "--tensors", "--json").json()
    assert {t["name"]: t["shape"] for t in js["tensors"]} == {"logit_scale": [], "w": [2, 3]}


def test_default_store_is_created_on_first_use(tmp_path, toy_model):
    env = {"WEIGHTVAULT_STORE": str(tmp_path / "default"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    r = run("snapshot", toy_model, "--model", "toy", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "1"
    assert (tmp_path / "default" / "config.json").exists()
    env.pop("WEIGHTVAULT_STORE")
    e = {k: v for k, v in os.environ.items() if k != "WEIGHTVAULT_STORE"}
    e["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    r = subprocess.run([sys.executable, "-m", "weightvault", "log", "--json"], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
    assert (tmp_path / "xdg" / "weightvault" / "store" / "config.json").exists()


def test_a_full_session(cli, tmp_path):
    assert cli("init").rc == 0
    v1 = write_model(tmp_path / "v1", toy_tensors(seed=5), files={"README.md": "# toy"})
    r = cli("snapshot", v1, "--model", "toy", "--tag", "base", "-m", "first", "--json")
    assert r.rc == 0, r
    s1 = r.json()
    assert s1["version"] == "1" and s1["new_chunks"] == s1["chunks"] and s1["dedup_bytes"] == 0
    t = toy_tensors(seed=5)
    t["encoder.layer.1.bias"] = t["encoder.layer.1.bias"] + 2
    v2 = write_model(tmp_path / "v2", t, files={"README.md": "# toy"})
    s2 = cli("snapshot", v2, "--model", "toy", "-m", "second", "--json").json()
    assert s2["new_chunks"] == 1 and s2["parent"] == s1["manifest_id"]
    human = cli("snapshot", v2, "--model", "toy")
    assert "deduplicated" in human.out and "new:" in human.out

    log = cli("log", "toy", "--json").json()
    assert [(v["version"], v["message"], v["tags"]) for v in log] == [("1", "first", "base"), ("2", "second", None),
                                                                      ("3", "", None)]
    assert [m["model"] for m in cli("log", "--json").json()] == ["toy"]
    show = cli("show", "toy@2", "--tensors", "--json").json()
    assert show["version"] == "2" and {f["path"] for f in show["files"]} == {"model.safetensors", "config.json", "README.md"}
    assert len(show["tensors"]) == len(t)
    assert "model.safetensors" in cli("show", "toy").out

    du = cli("du", "--json").json()
    assert du["total"]["raw_bytes"] > du["total"]["stored_bytes"] > 0
    assert du["total"]["dedup_saved_bytes"] > 0
    human = cli("du").out
    assert "saved by dedup" in human and "[" not in human, human  # the total row is styled, not literal markup
    assert [line.split("│")[0].strip() for line in human.splitlines() if "│" in line] == ["toy", "total"], human

    assert cli("restore", "toy@1", tmp_path / "r1", "--json").json()["verified"] is True
    assert tree_files(tmp_path / "r1") == tree_files(v1)
    ver = cli("verify", "--json").json()
    assert ver["ok"] and ver["chunks_checked"] == ver["chunks_total"] > 0
    assert "all chunks intact" in cli("verify", "toy@1").out


def test_verify_names_what_a_damaged_chunk_affects(cli, vault, tmp_path):
    v = write_model(tmp_path / "m", toy_tensors())
    res = vault.snapshot(v, "toy")
    vault.snapshot(v, "toy")  # a second version shares every chunk
    f = res.manifest.file("model.safetensors")
    t = next(t for t in f.tensors if t.name == "encoder.layer.2.weight")
    cid = f.tensor_chunks(t)[0][0]
    p = vault.store.root / vault.store.chunk_key(cid)
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # flip one payload byte
    p.write_bytes(bytes(data))
    assert cli("verify", "--structure", "--json").rc == 0  # the structural check does not read payloads
    r = cli("verify", "--json")  # the default re-hashes every chunk
    assert r.rc == 5
    assert cli("verify", "--read-data", "--json").json() == r.json()
    rep = r.json()
    assert not rep["ok"] and [d["chunk_id"] for d in rep["damaged"]] == [cid]
    uses = {(u["version"], u["file"], u["tensor"]) for u in rep["damaged"][0]["uses"]}
    assert uses == {("toy@1", "model.safetensors", "encoder.layer.2.weight"),
                    ("toy@2", "model.safetensors", "encoder.layer.2.weight")}
    p.unlink()
    rep = cli("verify", "toy@1", "--json").json()
    assert rep["damaged"][0]["chunk_id"] == cid and "missing" in rep["damaged"][0]["reason"]


def test_verify_subset_checks_fewer_chunks(cli, vault, tmp_path):
    vault.snapshot(write_model(tmp_path / "m", toy_tensors()), "toy")
    rep = cli("verify", "--subset", "30", "--json").json()
    assert 0 < rep["chunks_checked"] < rep["chunks_total"]


def test_unexpected_errors_are_one_line_without_debug(cli, tmp_path):
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "config.json").write_text("[1, 2")
    r = cli("log", store=tmp_path / "notastore")
    assert r.rc == 6 and "Traceback" not in r.err and "not a weightvault store config" in r.err


def test_debug_flag_shows_traceback(tmp_path):
    r = run("--store", tmp_path / "none", "restore", "x@1", tmp_path / "o", env={"WEIGHTVAULT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_restore_from_a_store_that_does_not_exist(tmp_path):
    r = run("--store", tmp_path / "none", "restore", "x@1", tmp_path / "o")
    assert r.returncode == 3 and "no weightvault store" in r.stderr and "init" in r.stderr
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_demo_runs_on_the_real_model(tmp_path, minilm_dir):
    r = run("--store", tmp_path / "demo", "demo", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["restore"]["bit_exact"] is True
    first, second = rep["snapshots"]
    assert second["new_raw_bytes"] < first["raw_bytes"] / 4  # only layers 4-5 changed
    assert rep["du"]["total"]["stored_bytes"] < rep["du"]["total"]["raw_bytes"]
    assert [row["version"] for row in rep["query"]["rows"]] == ["1", "2"]


def test_demo_as_a_person_runs_it_on_a_terminal(tmp_path, minilm_dir):
    """README's first command, interactive: progress bars, tables, and the verdict line."""
    env = dict(os.environ, WEIGHTVAULT_STORE=str(tmp_path / "demo"), TERM="xterm", COLUMNS="120")
    rc, shown = _on_a_terminal(["demo"], env)
    assert rc == 0 and "internal error" not in shown, shown
    assert "bit-exact against" in shown and "yes" in shown.split("bit-exact against", 1)[1], shown


def test_the_command_raises_the_young_gc_threshold_but_the_library_does_not():
    """weightvault._process.tune (run by main) raises gen0 to GC_GEN0; importing the library does not."""
    code = (
        "import gc\n"
        "default = gc.get_threshold()\n"
        "import weightvault.cli, weightvault.vault\n"
        "assert gc.get_threshold() == default, 'importing the library changed the gc thresholds'\n"
        "from weightvault import _process\n"
        "_process.tune()\n"
        "print(default[0], gc.get_threshold()[0], _process.GC_GEN0)\n"
        "gc.set_threshold(0)\n"
        "_process.tune()\n"
        "print(gc.get_threshold()[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    default, cli, gen0, off = map(int, out)
    assert cli == max(default, gen0) >= 10_000
    assert off == 0  # collection turned off by the embedding program stays off


def test_a_reader_that_leaves_early_is_not_an_error(vault, toy_model, store_dir):
    """`weightvault show X --tensors | head -1` exited 1 about half the time, with nothing on stderr
    (rich's own broken-pipe handling), which fails a `set -o pipefail` script."""
    vault.snapshot(toy_model, "toy")
    cmd = f"{sys.executable} -m weightvault --store {store_dir} show toy@1 --tensors | head -1 >/dev/null"
    for _ in range(8):
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r


def test_an_empty_store_option_is_refused(cli, tmp_path, monkeypatch):
    """`--store "$VAULT"` with VAULT unset silently used $WEIGHTVAULT_STORE or the per-user store."""
    monkeypatch.setenv("WEIGHTVAULT_STORE", str(tmp_path / "elsewhere"))
    r = cli("--store", "", "log", store=None)
    assert r.rc == 2 and "--store is empty" in r.err, r
    assert not (tmp_path / "elsewhere").exists()


def test_sql_json_gives_json_columns_as_values_and_times_as_iso_utc(vault, toy_model, cli):
    """`jq '.[0].settings.temperature'` needs a JSON column as JSON, not a string of it; times
    read the same in every --json output (show's ISO 8601 Z, not "2026-11-24 00:42:15")."""
    vault.snapshot(toy_model, "m")
    r = cli("sql", "SELECT '{\"temperature\": 0.7}'::JSON AS settings, TIMESTAMP '2026-01-02 03:04:05' AS ts, "
                   "TIMESTAMPTZ '2026-01-02 03:04:05+02' AS tz, 'ab'::BLOB AS b, INTERVAL 90 SECOND AS i", "--json")
    assert r.rc == 0, r
    assert r.json() == [{"settings": {"temperature": 0.7}, "ts": "2026-01-02T03:04:05Z",
                         "tz": "2026-01-02T01:04:05Z", "b": "6162", "i": 90.0}]
    shown = cli("show", "m@1", "--json").json()["created_at"]
    logged = cli("log", "m", "--json").json()[0]["created_at"]
    queried = cli("sql", "SELECT created_at FROM versions", "--json").json()[0]["created_at"]
    assert shown.endswith("Z") and "T" in shown
    assert logged[:19] == queried[:19] == shown[:19] and logged.endswith("Z") and queried.endswith("Z")
