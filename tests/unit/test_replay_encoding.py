"""The wire codec's column-wise encoder (replay) writes exactly what its one-record encoder would."""

from __future__ import annotations

import csv
from pathlib import Path

from diskwatch.core.dumps import iter_days
from diskwatch.core.records import TelemetryRecord
from diskwatch.core.wire import encode, encode_table

HEADER = "date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_5_normalized,smart_9_raw,smart_241_raw"
ROWS = [
    '2024-01-01,A1,"WDC ""quoted"" \\\\ model",4000787030016,0,3,100,1234,98721471864',
    "2024-01-01,B2,M,-1,1,,,,",  # no SMART value at all
    "2024-01-01,C3,M,100,0,0,,17.5,",  # non-integral raw
    "2024-01-01,D4,M,,0,,99,,",  # unknown capacity, normalized only
]


def test_encoded_messages_parse_to_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "2024-01-01.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    [(_, table)] = list(iter_days(tmp_path, None))
    messages = encode_table(table)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [k for k, _ in messages] == [b"A1", b"B2", b"C3", b"D4"]
    for (_, value), row in zip(messages, rows, strict=True):
        expected = TelemetryRecord.from_backblaze_row(row)
        got = TelemetryRecord.from_json(value)
        assert got == expected.model_copy(update={"failure": expected.failure or 0})
        assert encode(got) == value  # byte-identical to the codec's one-record encoder


def test_empty_table_gives_no_messages(tmp_path: Path) -> None:
    (tmp_path / "2024-01-01.csv").write_text(HEADER + "\n")
    [(_, table)] = list(iter_days(tmp_path, None))
    assert encode_table(table) == []
