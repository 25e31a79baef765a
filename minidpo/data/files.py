"""Preference data files -> raw records, each named for error messages ("file.jsonl:17",
"file.parquet:record 17").

JSON (an array, or an object holding one array) and JSONL (one object per line), Parquet and Arrow
(`datasets.save_to_disk`'s shards, read with pyarrow), from a file or a folder of such files. What a
record means is minidpo.data.formats' job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from minidpo.errors import DataError

TEXT_SUFFIXES = (".json", ".jsonl")
SHARD_SUFFIXES = (".parquet", ".arrow")
DATA_SUFFIXES = TEXT_SUFFIXES + SHARD_SUFFIXES
DATASETS_METADATA = ("dataset_info.json", "state.json", "dataset_dict.json")  # written by save_to_disk


@dataclass(frozen=True)
class RawRecord:
    source: str  # "file.jsonl:17"
    value: object  # the parsed JSON value, or a DataError when the line was not valid JSON


# ----------------------------------------------------------------------------------------------------
# Reading files


def data_files(path: str | os.PathLike) -> list[str]:
    """The data files at `path`: the file itself, or a folder's .json / .jsonl files in name order, or
    its Parquet / Arrow shards when it has any (beside them, `datasets`' own .json files are metadata);
    or a comma-separated list of such files and folders ("votes.jsonl,votes_unpaired.jsonl"), their
    files in the list's order. A path that exists as written is one path, commas and all."""
    path = os.fspath(path)
    if "," in path and not os.path.exists(path):
        parts = [part.strip() for part in path.split(",") if part.strip()]
        for part in parts:
            if not os.path.exists(part):
                raise DataError(f"{part}: no such file or folder (in the list {path})", "missing file")
        return [file for part in parts for file in data_files(part)]
    if os.path.isdir(path):
        names = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        shards = [f for f in names if f.endswith(SHARD_SUFFIXES)]
        texts = [f for f in names if f.endswith(TEXT_SUFFIXES) and f not in DATASETS_METADATA]
        files = [os.path.join(path, f) for f in (shards or texts)]
        if not files:
            splits = [d for d in sorted(os.listdir(path)) if os.path.isdir(os.path.join(path, d))]
            hint = (f" (a saved DatasetDict? pass one split's folder: {', '.join(splits)})"
                    if "dataset_dict.json" in names and splits else "")
            raise DataError(f"{path}: the folder holds no .json, .jsonl, .parquet or .arrow files{hint}", "empty file")
        return files
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder", "missing file")
    return [path]


def type_name(v: object) -> str:
    return {type(None): "null", bool: "bool", int: "int", float: "float", str: "string",
            list: "list", dict: "object"}.get(type(v), type(v).__name__)


def read_records(file: str) -> Iterator[RawRecord]:
    """Yield every record of one JSON, JSONL, Parquet or Arrow file, with its line (record) number.

    JSON vs JSONL is decided by content: a file whose first character is "[" is one JSON array;
    otherwise each non-blank line is one object, unless the whole file is one (pretty-printed) object,
    which is taken as one record, or as its only list value when it looks like {"data": [...]}.
    """
    name = os.path.basename(file)
    if file.endswith(SHARD_SUFFIXES):
        yield from _read_shard(file, name)
        return
    try:
        with open(file, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        line = 1 + open(file, "rb").read()[: e.start].count(b"\n")
        raise DataError(f"{name}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8",
                        "not UTF-8") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{name}: the file is empty", "empty file")
    if stripped[0] == "[":
        yield from _read_json_array(text, name)
        return
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and other line separators
    first = next(i for i, line in enumerate(lines) if line.strip())
    try:
        json.loads(lines[first])
    except json.JSONDecodeError:
        # Not one object per line: maybe a single pretty-printed JSON object.
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            lists = [v for v in whole.values() if isinstance(v, list)]
            if len(whole) == 1 and len(lists) == 1:
                start = text.index("[", text.index(":"))  # after the only key: where the list starts
                yield from _read_json_array(text, name, start)
            else:
                yield RawRecord(f"{name}:{first + 1}", whole)
            return
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        source = f"{name}:{i + 1}"
        try:
            yield RawRecord(source, json.loads(line))
        except json.JSONDecodeError as e:
            yield RawRecord(source, DataError(f"{source}: malformed JSON ({e.msg} at column {e.colno})",
                                              "malformed JSON"))


def _read_shard(file: str, name: str) -> Iterator[RawRecord]:
    """The rows of a Parquet file or an Arrow file (IPC stream, as `datasets` writes it, or IPC file)."""
    import pyarrow as pa  # heavy to import: only Parquet / Arrow input needs it

    kind = "Parquet" if file.endswith(".parquet") else "Arrow"
    try:
        if kind == "Parquet":
            import pyarrow.parquet as pq  # (see above)

            batches = pq.ParquetFile(file).iter_batches(batch_size=1024)
        else:
            source = pa.memory_map(file)
            try:
                batches = iter(pa.ipc.open_stream(source))
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield RawRecord(f"{name}:record {n}", row)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: not a readable {kind} file ({str(e).splitlines()[0][:200]})", "unreadable file") from None


def _read_json_array(text: str, name: str, start: int | None = None) -> Iterator[RawRecord]:
    """Decode a JSON array (starting at `start`, default the first "[") element by element, so that each
    record knows the line it starts on."""
    dec = json.JSONDecoder()
    i = (text.index("[") if start is None else start) + 1
    n = 0
    line = 1 + text.count("\n", 0, i)
    last = i

    prev_line = -1

    def where(pos: int) -> str:
        """name:line, plus the record number when records share a line (minified JSON)."""
        nonlocal line, last, prev_line
        line += text.count("\n", last, pos)
        last = pos
        shared, prev_line = line == prev_line, line
        return f"{name}:{line}, record {n + 1}" if shared else f"{name}:{line}"

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    i = skip_ws(i)
    if i < len(text) and text[i] == "]":
        return
    while True:
        i = skip_ws(i)
        source = where(i)
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                            "a JSON file must be valid as a whole (use JSONL to skip bad lines)",
                            "malformed JSON") from None
        yield RawRecord(source, value)
        n += 1
        i = skip_ws(i)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        if i < len(text) and text[i] == "]":
            return
        raise DataError(f"{where(i)}: malformed JSON (expected ',' or ']' after a record)", "malformed JSON")


def read_tools(path: str | os.PathLike) -> list[dict]:
    """The tool schemas of a whole data set (records without their own "tools" get them): a JSON file
    holding a list of schemas, or an object {"tools": [...]}."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8-sig") as f:
            value = json.load(f)
    except OSError as e:
        raise DataError(f"{name}: cannot read the tools file ({e.strerror})", "missing file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{name}: the tools file is not JSON ({e})", "malformed JSON") from None
    if isinstance(value, dict) and isinstance(value.get("tools"), list):
        value = value["tools"]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError(f"{name}: expected a JSON list of tool schemas (or {{\"tools\": [...]}}), got "
                        f"{type_name(value)}", "bad tool")
    return value
