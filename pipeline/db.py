"""DuckDB for cogflow: the one module that opens connections, and the loader for the SQL files in `sql/`.

SQL lives in `.sql` files named by their path under `sql/` ("marts/videos_new"); values are always bound
as named parameters (`$name`), never formatted into the text. Arrow tables are made visible to a query by
registering them under the names the SQL file uses.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
from functools import cache
from importlib import resources
from typing import Any

import duckdb
import pyarrow as pa
from duckdb.func import PythonUDFType


@cache
def sql_text(name: str) -> str:
    """The text of `sql/<name>.sql`, e.g. sql_text("staging/stg_manifest")."""
    return resources.files("cogflow.sql").joinpath(f"{name}.sql").read_text(encoding="utf-8")


def check_names() -> list[str]:
    """Every data check in `sql/checks/`, by name, sorted."""
    folder = resources.files("cogflow.sql").joinpath("checks")
    return sorted(f"checks/{p.name[:-4]}" for p in folder.iterdir() if p.name.endswith(".sql"))


def _html_unescape(values: pa.Array) -> pa.Array:
    # Registered as unescape_entities (DuckDB's own html_unescape lives in the inet extension, which cannot be
    # installed offline). Entities (&amp; &#20013; &nbsp; …) cannot be decoded by a regular expression alone; this is the one
    # cleaning step done by a Python function, called from the SQL only for values that contain '&'.
    return pa.array([None if v is None else html.unescape(v) for v in values.to_pylist()], pa.string())


def connect(
    temp_directory: str | None = None, threads: int | None = None, memory_limit: str = "1GB"
) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with cogflow's helper functions. The lake itself is Parquet, not a DB file.

    Large runs spill past `memory_limit` into `temp_directory` (DuckDB's default, `.tmp` in the current
    folder, would litter the checkout); callers that own a work folder pass it.
    """
    temp_directory = temp_directory or os.path.join(tempfile.gettempdir(), f"cogflow-duckdb-{os.getpid()}")
    con = duckdb.connect(
        config={
            "threads": threads or os.cpu_count() or 1,
            "memory_limit": memory_limit,
            "temp_directory": temp_directory,
            # row numbers of a manifest follow its file order (row_number() OVER () in the loaders)
            "preserve_insertion_order": True,
        }
    )
    con.create_function(
        "unescape_entities", _html_unescape, ["VARCHAR"], "VARCHAR", type=PythonUDFType.ARROW, side_effects=False
    )
    con.execute(sql_text("macros"))
    return con


def _used_params(text: str, params: dict[str, Any]) -> dict[str, Any] | None:
    # DuckDB refuses parameters a statement does not use, so callers may pass one settings dict everywhere.
    used = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = used - params.keys()
    if missing:
        raise KeyError(f"SQL parameters not given: {sorted(missing)}")
    return {k: v for k, v in params.items() if k in used} or None


def run(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
    """Execute `sql/<name>.sql` with the named parameters it uses."""
    text = sql_text(name)
    return con.execute(text, _used_params(text, params))


def materialize(con: duckdb.DuckDBPyConnection, name: str, table: str | None = None, **params: Any) -> str:
    """Run the SELECT in `sql/<name>.sql` into a temporary table named after the file (or `table`, for a file
    that stands in for another); returns that name.

    The identifier comes from our own code, never from input, so formatting it into the statement is safe.
    """
    table = table or name.rsplit("/", 1)[-1]
    text = sql_text(name)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {text}", _used_params(text, params))
    return table


def relation(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyRelation:
    """The SELECT in `sql/<name>.sql` as a relation, to stream (`to_arrow_reader()`) or fetch as Arrow."""
    text = sql_text(name)
    return con.sql(text, params=_used_params(text, params))


def query_arrow(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> pa.Table:
    return relation(con, name, **params).to_arrow_table()


def register(con: duckdb.DuckDBPyConnection, **tables: pa.Table) -> None:
    """Make Arrow tables queryable under the given names (replacing earlier ones)."""
    for name, table in tables.items():
        con.register(name, table)
