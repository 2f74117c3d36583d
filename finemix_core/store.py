"""Results history: one SQLite row per defend / sweep / report run, so the lab can show what was done.

Each insert is one transaction, so a process killed mid-write leaves the previous rows intact
(SQLite's journal rolls the partial transaction back on the next open).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from finemix_core.config import finemix_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,          -- unix time
    kind TEXT NOT NULL,             -- defend | sweep | report | lab
    model TEXT NOT NULL,            -- θ_FT source
    method TEXT,                    -- defense method (NULL for sweeps)
    config TEXT NOT NULL,           -- JSON: every setting of the run
    metrics TEXT NOT NULL           -- JSON: CACC, ASR, target bias, floor, ρ, timings ...
)
"""


def db_path() -> Path:
    return finemix_home() / "results.sqlite"


def _connect(path: Path | None) -> sqlite3.Connection:
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    con.execute(SCHEMA)
    return con


def record(kind: str, model: str, method: str | None, config: dict, metrics: dict, path: Path | None = None) -> int:
    """Append one run; returns its id."""
    with closing(_connect(path)) as con, con:
        cur = con.execute(
            "INSERT INTO runs (created, kind, model, method, config, metrics) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), kind, model, method, json.dumps(config, default=str), json.dumps(metrics, default=str)),
        )
        return int(cur.lastrowid)


def runs(model: str | None = None, kind: str | None = None, path: Path | None = None) -> list[dict]:
    """Stored runs, newest first, with config and metrics decoded."""
    path = path or db_path()
    if not path.is_file():
        return []
    query, args = "SELECT id, created, kind, model, method, config, metrics FROM runs", []
    where = [(c, v) for c, v in (("model", model), ("kind", kind)) if v is not None]
    if where:
        query += " WHERE " + " AND ".join(f"{c} = ?" for c, _ in where)
        args = [v for _, v in where]
    with closing(_connect(path)) as con:
        rows = con.execute(query + " ORDER BY id DESC", args).fetchall()
    return [
        {
            "id": r[0],
            "created": r[1],
            "kind": r[2],
            "model": r[3],
            "method": r[4],
            "config": json.loads(r[5]),
            "metrics": json.loads(r[6]),
        }
        for r in rows
    ]
