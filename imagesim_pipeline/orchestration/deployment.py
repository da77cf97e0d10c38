"""Checks of the deployment before any Dagster work: is the instance's storage (the production PostgreSQL)
usable? Dagster itself retries the connection several times with backoff and then fails with a long
traceback ending in "too many retries for DB connection". ``check_instance_storage`` answers after one
attempt bounded by ``timeout_s``, in one line naming the server and what to check.

Plain Python: Dagster and psycopg2 are imported inside the functions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from imagesim_pipeline.errors import ImagesimError


class DeploymentError(ImagesimError):
    """The deployment cannot work as configured: an unset variable, an unreachable database. One line."""


_PG_VARIABLES = {"hostname": "DAGSTER_PG_HOST", "port": "DAGSTER_PG_PORT", "db_name": "DAGSTER_PG_DB",
                 "username": "DAGSTER_PG_USERNAME", "password": "DAGSTER_PG_PASSWORD"}


def _instance_home(home: Path | str | None) -> Path:
    """``home``, else DAGSTER_HOME, else imagesim's default instance folder (not created here)."""
    if home is not None:
        return Path(home).expanduser().resolve()
    from imagesim_pipeline.settings import settings

    return settings().instance_dir


def _is_env_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "env" in value


def _resolve(value: Any, path: str, missing: list[str]) -> Any:
    """``value`` with every ``{env: X}`` replaced by X's value; unset X are appended to ``missing``."""
    if _is_env_ref(value):
        name = str(value["env"])
        if os.environ.get(name) is None:
            missing.append(f"{name} ({path})")
            return None
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve(v, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _env_names(raw: dict) -> dict[str, str]:
    """The environment variables that a ``postgres_db`` block reads, by key (for the advice)."""
    return {k: str(v["env"]) for k, v in raw.items() if _is_env_ref(v)}


def _postgres_block(config: dict) -> dict | None:
    """The ``storage.postgres`` block of an instance file, if it has one."""
    storage = config.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("postgres"), dict):
        return storage["postgres"]
    return None


def _sqlite_dir(config: dict, home: Path) -> Path:
    storage = config.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("sqlite"), dict):
        base = storage["sqlite"].get("base_dir")
        if base:
            return Path(str(base))
    return home


def _advice(reason: str, names: dict[str, str], port: Any) -> str:
    def var(key: str) -> str:
        return names.get(key, f"{key} in dagster.yaml")

    lowered = reason.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"check {var('username')} and {var('password')} (the Secrets Manager secret)"
    if "database" in lowered and "does not exist" in lowered:
        return f"check {var('db_name')}, or create the database"
    if "role" in lowered and "does not exist" in lowered:
        return f"check {var('username')}, or create the role"
    if "could not translate host name" in lowered or "name or service not known" in lowered:
        return f"check {var('hostname')} (the RDS endpoint)"
    return (f"check {var('hostname')}/{var('port')}, that the PostgreSQL server runs, and that its security "
            f"group admits this host on port {port}")


def check_instance_storage(home: Path | None = None, timeout_s: float = 5.0) -> str:
    """One line describing the storage of the Dagster instance in ``home`` (default: DAGSTER_HOME), after
    checking that it is usable: for PostgreSQL, one connection within ``timeout_s``.

    Raises ``DeploymentError`` (one line) when ``dagster.yaml`` reads an unset environment variable, or the
    PostgreSQL server cannot be reached or refuses the connection.
    """
    import yaml

    home = _instance_home(home)
    config_file = home / "dagster.yaml"
    if not config_file.exists():
        return f"SQLite in {home} (no dagster.yaml: Dagster's defaults)"
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DeploymentError(f"cannot read the Dagster instance file {config_file}: {first}") from exc
    if not isinstance(config, dict):
        raise DeploymentError(f"the Dagster instance file {config_file} is not a mapping of settings")

    missing: list[str] = []
    resolved = _resolve(config, "", missing)
    if missing:
        raise DeploymentError(f"{config_file} reads unset environment variable(s): {', '.join(missing)}; "
                              "export them (in AWS the ECS task definition sets them) or use an instance "
                              "folder whose dagster.yaml does not need them")

    pg = _postgres_block(resolved)
    if pg is None:
        return f"SQLite in {_sqlite_dir(resolved, home)}"
    raw_pg = _postgres_block(config) or {}
    return _check_postgres(pg, _env_names(raw_pg.get("postgres_db") or {}), f"{config_file} storage.postgres",
                           timeout_s)


def _driver_problem(url: str, names: dict[str, str]) -> str | None:
    """Why SQLAlchemy (as Dagster's storage uses it) cannot load the driver of ``url``; None when it can.

    SQLAlchemy 2.1 made ``postgresql://`` mean psycopg 3, while dagster-postgres installs psycopg2: the
    instance file must then say ``scheme: postgresql+psycopg2``.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
        load_dbapi: Any = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)  # 2.x or 1.4
        load_dbapi()
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        import sqlalchemy

        scheme = url.split("://", 1)[0]
        where = names.get("scheme", "scheme: postgresql+psycopg2 under postgres_db")
        return (f"SQLAlchemy {sqlalchemy.__version__} cannot load the driver of the URL scheme '{scheme}' "
                f"({str(exc).strip().splitlines()[0]}); set {where} (the installed psycopg2), or install "
                "that driver")
    return None


def _check_postgres(pg: dict, names: dict[str, str], source: str, timeout_s: float) -> str:
    import psycopg2  # type: ignore[import-untyped]  # no stubs installed; dagster-postgres's driver
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if pg.get("postgres_url"):
        url = str(pg["postgres_url"])
    elif isinstance(pg.get("postgres_db"), dict):
        from dagster_postgres.utils import get_conn_string

        db_config: dict[str, Any] = {k: (str(v) if k == "port" else v) for k, v in pg["postgres_db"].items()}
        if not db_config.get("port", "5432").isdigit():
            raise DeploymentError(f"{source}: the port {db_config['port']!r} is not a number "
                                  f"(check {names.get('port', 'port in dagster.yaml')})")
        url = get_conn_string(**db_config)  # the very URL Dagster builds (dagster_postgres.utils)
    else:
        raise DeploymentError(f"{source} has neither postgres_db nor postgres_url")
    try:
        # parsed as SQLAlchemy (Dagster's engine) parses it: a password may hold '/' there, not in libpq's URIs
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DeploymentError(f"{source}: the PostgreSQL URL is malformed ({str(exc).strip()})") from exc
    host, port = parsed.host or "localhost", parsed.port or 5432
    target = f"{parsed.username or ''}@{host}:{port}/{parsed.database or ''}"
    problem = _driver_problem(url, names)
    if problem:
        raise DeploymentError(f"Dagster cannot use the PostgreSQL {target} ({source}): {problem}")
    options: dict[str, Any] = {k: (v if isinstance(v, str) else v[-1]) for k, v in parsed.query.items()}
    options.update(parsed.translate_connect_args(username="user", database="dbname"))
    # connect_timeout: libpq's bound on the whole connection set-up (whole seconds, at least 2)
    options["connect_timeout"] = max(2, math.ceil(timeout_s))
    try:
        conn = psycopg2.connect(**options)
    except psycopg2.Error as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise DeploymentError(f"cannot connect to the Dagster instance's PostgreSQL {target} ({source}): "
                              f"{reason}; {_advice(reason, names, port)}") from exc
    conn.close()
    return f"PostgreSQL {target}"
