"""Reading records (one JSON object per example) from JSON Lines files or Hugging Face datasets, with checks.

A bad record is reported where the user can fix it: the file, the line and the field (or the dataset, split
and row), in a :class:`DataFormatError`. The command line prints that message alone, without a traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lit_microopt._extras import require_extra

logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A data file or dataset has a record the data module cannot use; the message says where and why."""


def _describe_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_record(record: Any, fields: dict[str, tuple[type, ...]], where: str, hint: str = "") -> dict[str, Any]:
    """Return ``record`` when it is a dict whose ``fields`` hold values of the given types, else raise.

    Args:
        record: one parsed record.
        fields: required field name -> accepted Python types.
        where: the record's location for the message (``"train.jsonl, line 3"``).
        hint: what to change when a field is missing (appended to the message).

    Raises:
        DataFormatError: the record is not an object, lacks a field or has a value of the wrong type.

    Example:
        >>> check_record({"question": "1+1=", "answer": "2"}, {"question": (str,), "answer": (str,)}, "x, line 1")
        {'question': '1+1=', 'answer': '2'}
    """
    if not isinstance(record, dict):
        raise DataFormatError(
            f"{where}: expected a JSON object with fields {sorted(fields)}, got {_describe_type(record)}."
        )
    for field, types in fields.items():
        if field not in record:
            present = ", ".join(sorted(map(str, record))) or "none"
            raise DataFormatError(
                f"{where}: missing field '{field}' (fields present: {present}); {hint or f'add a {field!r} field'}."
            )
        value = record[field]
        # bool is an int to Python but never a valid label or text here.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise DataFormatError(
                f"{where}: field '{field}' must be {expected}, got {_describe_type(value)} {value!r:.60}."
            )
    return record


#: A further check of one record: ``check(record, where)`` raises :class:`DataFormatError` naming ``where``.
RecordCheck = Callable[[dict[str, Any], str], None]


def read_json_lines(
    path: str | Path, fields: dict[str, tuple[type, ...]], hint: str = "", check: RecordCheck | None = None
) -> list[dict[str, Any]]:
    """Read a JSON Lines file (one object per line; blank lines skipped) and check every record's ``fields``.

    Args:
        path: the file.
        fields: required field name -> accepted Python types.
        hint: what to change when a field is missing (for the message).
        check: a further check of each record (its values), called with the record and its location.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a line is not JSON, or a record lacks a field (the message names file, line and field).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "data.jsonl")
        >>> _ = open(path, "w").write('{"question": "1+1=", "answer": "2"}\\n')
        >>> read_json_lines(path, {"question": (str,), "answer": (str,)})
        [{'question': '1+1=', 'answer': '2'}]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {str(path)!r} does not exist; check the path (relative paths start at {Path.cwd()})."
        )
    records = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{where}: not valid JSON ({error.msg}); write one JSON object per line.") from None
            records.append(check_record(record, fields, where, hint))
            if check is not None:
                check(record, where)
    if not records:
        raise DataFormatError(f"{path} holds no records; write one JSON object per line.")
    return records


def load_dataset_split(
    name: str,
    config_name: str | None,
    split: str,
    fields: dict[str, tuple[type, ...]],
    hint: str = "",
    check: RecordCheck | None = None,
) -> list[dict[str, Any]]:
    """Load one split of a Hugging Face dataset (from the Hub or its cache) and check every record's ``fields``.

    Args:
        name: dataset name, e.g. ``"openai/gsm8k"``.
        config_name: its configuration, e.g. ``"main"`` (``None`` when it has one only).
        split: split name, e.g. ``"train"``.
        fields: required field name -> accepted Python types.
        hint: what to change when a field is missing (for the message).
        check: a further check of each record (its values), called with the record and its location.

    Raises:
        DataFormatError: a row lacks a field (the message names dataset, split, row and field).

    Example:
        >>> fields = {"question": (str,), "answer": (str,)}
        >>> rows = load_dataset_split("openai/gsm8k", "main", "test", fields)  # doctest: +SKIP
    """
    require_extra("hf", "datasets")
    import datasets  # imported here: it is slow to import and only needed for Hub datasets

    dataset = datasets.load_dataset(name, config_name, split=split)
    missing = [field for field in fields if field not in dataset.column_names]
    if missing:
        raise DataFormatError(
            f"dataset {name!r} ({config_name or 'default'}), split {split!r}: missing field '{missing[0]}' "
            f"(fields present: {', '.join(dataset.column_names)}); "
            f"{hint or f'choose a dataset with a {missing[0]!r} field'}."
        )
    columns = {field: dataset[field] for field in fields}
    records = []
    for row in range(len(dataset)):
        record = {field: columns[field][row] for field in fields}
        where = f"dataset {name!r}, split {split!r}, row {row}"
        records.append(check_record(record, fields, where, hint))
        if check is not None:
            check(record, where)
    logger.info("Loaded %d records from %s (%s), split %s.", len(records), name, config_name or "default", split)
    return records


def read_records(
    file: str | Path | None,
    dataset: str | None,
    dataset_config: str | None,
    split: str | None,
    fields: dict[str, tuple[type, ...]],
    hint: str = "",
    check: RecordCheck | None = None,
) -> list[dict[str, Any]] | None:
    """The records of one split: from ``file`` when given, else from ``dataset``'s ``split``, else ``None``.

    Example:
        >>> read_records(None, None, None, None, {"text": (str,)}) is None
        True
    """
    if file is not None:
        return read_json_lines(file, fields, hint, check)
    if dataset is not None and split is not None:
        return load_dataset_split(dataset, dataset_config, split, fields, hint, check)
    return None


def require_source(owner: str, files: Sequence[str | Path | None], dataset: str | None) -> None:
    """Raise ``ValueError`` when a data module has neither a training file nor a dataset name."""
    if files[0] is None and dataset is None:
        raise ValueError(f"{owner}: set train_file (a JSON Lines file) or dataset (a Hugging Face dataset name).")
