"""Model card and config facts, read at snapshot and kept in the manifest.

The Hub's model card is README.md with YAML front matter between ``---``
lines; its provenance keys (base_model, base_model_relation, datasets,
license, language, tags, pipeline_tag, library_name) become
``manifest.metadata["card"]`` with fixed types (lists stay lists, a single
string becomes a one-element list). config.json's architectures, model_type,
torch_dtype (``dtype`` in newer transformers) and vocab_size become
``manifest.metadata["config"]``. The catalog turns both into typed columns
(table ``model_cards``).

A card or config that cannot be parsed, or a known key of the wrong type,
stops the snapshot before anything is written, with one line naming the file
and field. A README without front matter is simply no card.

>>> parse_front_matter("---\\nlicense: mit\\n---\\n# hi\\n", "README.md")
{'license': 'mit'}
"""

from __future__ import annotations

import datetime as _dt
import json
import re

from weightvault.errors import RecordValidationError

CARD_FILE = "README.md"
CONFIG_FILE = "config.json"
RELATIONS = ("adapter", "merge", "quantized", "finetune")  # the Hub's base_model_relation values
# Hub repo id: optional org, then name; what base_model and datasets hold.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
LIST_KEYS = ("base_model", "datasets", "language", "tags")
STR_KEYS = ("license", "pipeline_tag", "library_name", "base_model_relation")
MAX_CARD_BYTES = 1 << 20  # front matter beyond this is not a card we should parse


def parse_front_matter(text: str, source: str = CARD_FILE) -> dict:
    """Return the YAML front matter of a model card as a dict ({} when there is none).

    Raises:
        RecordValidationError: the front matter is not valid YAML or not a mapping.
    """
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise RecordValidationError(source, "(front matter)", "opening '---' has no closing '---'") from None
    import yaml

    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        raise RecordValidationError(source, "(front matter)", f"invalid YAML{where}") from None
    except ValueError as e:  # YAML's own date parsing: 2023-13-45
        raise RecordValidationError(source, "(front matter)", f"invalid value: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecordValidationError(source, "(front matter)", "is not a mapping of key: value")
    return data


def _str_list(value, field: str, source: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise RecordValidationError(source, field, "expected a string or a list of strings")
    return items


def card_facts(front: dict, source: str = CARD_FILE) -> dict:
    """Pick and type-check the provenance keys of a card's front matter.

    Returns:
        A dict with only the keys present: lists for base_model, datasets, language, tags;
        strings for license, pipeline_tag, library_name, base_model_relation.
    """
    out = {}
    for key in LIST_KEYS:
        if front.get(key) is not None:
            out[key] = _str_list(front[key], key, source)
    for key in STR_KEYS:
        if front.get(key) is not None:
            if not isinstance(front[key], str):
                raise RecordValidationError(source, key, f"expected a string, got {type(front[key]).__name__}")
            out[key] = front[key]
    for ref in out.get("base_model", ()):
        if not _REPO_ID.match(ref) or ".." in ref:
            raise RecordValidationError(source, "base_model", f"{ref!r} is not a Hub repo id (org/name)")
    rel = out.get("base_model_relation")
    if rel is not None and rel not in RELATIONS:
        raise RecordValidationError(source, "base_model_relation", f"{rel!r} is not one of {', '.join(RELATIONS)}")
    return out


def config_facts(config, source: str = CONFIG_FILE) -> dict:
    """Pick architectures, model_type, torch_dtype and vocab_size from a parsed config.json."""
    if not isinstance(config, dict):
        raise RecordValidationError(source, "(file)", "is not a JSON object")
    out = {}
    if config.get("architectures") is not None:
        out["architectures"] = _str_list(config["architectures"], "architectures", source)
    for key, names in (("model_type", ("model_type",)), ("torch_dtype", ("torch_dtype", "dtype"))):
        for name in names:
            value = config.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise RecordValidationError(source, name, f"expected a string, got {type(value).__name__}")
                out[key] = value
                break
    vocab = config.get("vocab_size")
    if vocab is None and isinstance(config.get("text_config"), dict):  # multimodal configs nest it
        vocab = config["text_config"].get("vocab_size")
    if vocab is not None:
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 0:
            raise RecordValidationError(source, "vocab_size", f"expected a non-negative integer, got {vocab!r}")
        out["vocab_size"] = vocab
    return out


def _jsonable(value):
    """YAML may hold dates; the manifest is JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return value


def read_metadata(files) -> dict:
    """Card and config facts of a model folder, for ``manifest.metadata``.

    Args:
        files: the snapshot's :class:`~weightvault.archive.snapshot.SourceFile` list (README.md
            and config.json at the top level are read from their ``path``, which for Hub
            snapshots is the blob).
    Returns:
        ``{"card": {...}, "card_yaml": {...}, "config": {...}}`` with only the parts present.
    Raises:
        RecordValidationError: malformed card or config, naming the file and field.
    """
    by_rel = {f.rel: f for f in files}
    meta = {}
    card = by_rel.get(CARD_FILE)
    if card is not None and card.size <= MAX_CARD_BYTES:
        try:
            text = card.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecordValidationError(CARD_FILE, "(file)", "is not UTF-8 text") from None
        try:
            front = parse_front_matter(text)
            if front:
                meta["card"] = card_facts(front)
                meta["card_yaml"] = _jsonable(front)
        except RecordValidationError as e:
            e.hint = e.hint or "fix the README.md front matter, or leave the card out with --exclude README.md"
            raise
    cfg = by_rel.get(CONFIG_FILE)
    if cfg is not None:
        try:
            config = json.loads(cfg.path.read_bytes())
        except (ValueError, UnicodeDecodeError) as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            what = "is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else f"invalid JSON{where}"
            raise RecordValidationError(str(cfg.path) if cfg.path.name == CONFIG_FILE else CONFIG_FILE, "(file)",
                                        what, hint="fix config.json, or leave it out with --exclude config.json") \
                from None
        try:
            facts = config_facts(config)
        except RecordValidationError as e:
            e.hint = e.hint or "fix config.json, or leave it out with --exclude config.json"
            raise
        if facts:
            meta["config"] = facts
    return meta
