"""Untrusted storage with compare-and-swap versions: SQLite by default, PostgreSQL for production.

The key service keeps its state here encrypted (``serdab.kms.state``); the store only sees
opaque blobs. Every write names the version it replaces, so two replicas can never overwrite
each other: the loser of a race sees ``False`` and re-reads. Version 0 means "absent".
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from serdab.errors import KmsError

__all__ = ["PostgresStore", "SqliteStore", "Store", "Versioned", "open_store"]


@dataclass(frozen=True)
class Versioned:
    value: bytes
    version: int


class Store(ABC):
    @abstractmethod
    def get(self, key: str) -> Versioned | None:
        """The value and its version, or None when the key was never written."""

    @abstractmethod
    def compare_and_swap(self, key: str, expected_version: int, value: bytes) -> bool:
        """Write ``value`` as version ``expected_version + 1`` if the key is still at ``expected_version``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class SqliteStore(Store):
    """One file; a connection per call, so threads and processes can share it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")

    def get(self, key: str) -> Versioned | None:
        with self._connect() as db:
            row = db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
        return Versioned(bytes(row[0]), int(row[1])) if row else None

    def compare_and_swap(self, key: str, expected_version: int, value: bytes) -> bool:
        with self._connect() as db:
            if expected_version == 0:
                cursor = db.execute("INSERT OR IGNORE INTO kv (key, value, version) VALUES (?, ?, 1)", (key, value))
            else:
                cursor = db.execute(
                    "UPDATE kv SET value = ?, version = version + 1 WHERE key = ? AND version = ?",
                    (value, key, expected_version),
                )
            return cursor.rowcount == 1


class PostgresStore(Store):
    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.dsn = dsn
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS serdab_kms "
                    "(key TEXT PRIMARY KEY, value BYTEA NOT NULL, version BIGINT NOT NULL)"
                )
        except psycopg.OperationalError as exc:
            raise KmsError(f"cannot reach PostgreSQL at {_redact(dsn)}: {str(exc).strip().splitlines()[0]}") from None

    def get(self, key: str) -> Versioned | None:
        with self._psycopg.connect(self.dsn, autocommit=True) as db:
            row = db.execute("SELECT value, version FROM serdab_kms WHERE key = %s", (key,)).fetchone()
        return Versioned(bytes(row[0]), int(row[1])) if row else None

    def compare_and_swap(self, key: str, expected_version: int, value: bytes) -> bool:
        with self._psycopg.connect(self.dsn, autocommit=True) as db:
            if expected_version == 0:
                cursor = db.execute(
                    "INSERT INTO serdab_kms (key, value, version) VALUES (%s, %s, 1) ON CONFLICT (key) DO NOTHING",
                    (key, value),
                )
            else:
                cursor = db.execute(
                    "UPDATE serdab_kms SET value = %s, version = version + 1 WHERE key = %s AND version = %s",
                    (value, key, expected_version),
                )
            return cursor.rowcount == 1


def _redact(dsn: str) -> str:
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return dsn


def open_store(url: str) -> Store:
    """``sqlite:PATH`` (relative or absolute) or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise KmsError("sqlite store needs a path, e.g. sqlite:kms.db")
        return SqliteStore(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise KmsError(f"unknown store {url!r}; use sqlite:PATH or postgresql://user@host/db")
