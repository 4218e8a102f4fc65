"""A local PostgreSQL cluster under a state directory, for development and tests without Docker."""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tidemark_devstack._util import locked, log_tail, run_checked
from tidemark_devstack.paths import free_port, port_is_bindable

PG_BIN_ENV = "TIDEMARK_PG_BIN"
ROLE = "tidemark"
DATABASE = "tidemark"
# The cluster's bootstrap superuser; reached only over the local socket (trust).
_BOOTSTRAP_USER = "postgres"
# initdb and postgres refuse to run as root: as root we run them as this system user.
_OS_USER = "postgres"
_PORT_FILE = "port"
_CREDENTIAL_FILE = "role-secret"  # the tidemark role's password, mode 0600
# Unix socket paths are limited to 107 bytes (sun_path); leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 90

_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "200",
    "wal_level": "replica",
    "max_wal_senders": "10",
}


def find_pg_bin() -> Path:
    """The PostgreSQL server bin directory: $TIDEMARK_PG_BIN, else the highest installed version."""
    override = os.environ.get(PG_BIN_ENV)
    if override:
        return Path(override)

    def version_key(path: str) -> tuple[int, ...]:
        version = Path(path).parent.name
        return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)
    if candidates:
        return Path(candidates[-1])
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    raise RuntimeError(
        f"no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and PATH); "
        f"install them (e.g. apt-get install postgresql) or set {PG_BIN_ENV}"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _os_user_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(_OS_USER)
    return entry.pw_uid, entry.pw_gid


def _server_argv(argv: Sequence[str]) -> list[str]:
    """Prefix a server-side command so that it runs as the postgres user when we are root."""
    if _as_root():
        return ["runuser", "-u", _OS_USER, "--", *argv]
    return list(argv)


def _make_dir(path: Path, mode: int, *, server_owned: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if server_owned and _as_root():
        uid, gid = _os_user_ids()
        os.chown(path, uid, gid)
    os.chmod(path, mode)


def _replace_url(
    url: str,
    *,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> str:
    """The same server URL with another database and/or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    hostport = f"{host}:{parts.port}" if parts.port else host
    new_user = user if user is not None else unquote(parts.username or "")
    new_password = password if password is not None else unquote(parts.password or "")
    auth = quote(new_user, safe="")
    if new_password:
        auth += ":" + quote(new_password, safe="")
    netloc = f"{auth}@{hostport}" if auth else hostport
    path = "/" + quote(database, safe="") if database is not None else parts.path
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def _ensure_login_role(
    conn: psycopg.Connection[tuple[object, ...]],
    name: str,
    password: str,
    *,
    superuser: bool,
    replication: bool = False,
) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    attributes = [" SUPERUSER"] if superuser else []
    if replication:
        # pg_basebackup (full backups) connects over the replication protocol; initdb's
        # pg_hba.conf already admits replication connections from 127.0.0.1 by password.
        attributes.append(" REPLICATION")
    extra = sql.SQL("".join(attributes))
    conn.execute(
        sql.SQL("{} ROLE {} WITH LOGIN{} PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(name), extra, sql.Literal(password)
        )
    )


def _ensure_database(conn: psycopg.Connection[tuple[object, ...]], name: str, owner: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if not exists:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )


def create_database_at(
    admin_url: str, name: str, owner_password: str | None = None, *, replication: bool = False
) -> str:
    """Create database ``name`` on the server of ``admin_url`` (idempotent) and return its URL.

    With ``owner_password``, a login role called ``name`` with that password owns the new
    database and the returned URL uses it; otherwise the admin URL's user owns it. With
    ``replication`` that role may also take base backups (a ``full`` backup's source).
    ``admin_url`` must be allowed to create databases (and roles, with ``owner_password``).
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if owner_password is not None:
            _ensure_login_role(conn, name, owner_password, superuser=False, replication=replication)
            owner = name
        else:
            row = conn.execute("SELECT current_user").fetchone()
            if row is None:
                raise RuntimeError("SELECT current_user returned no row")
            owner = str(row[0])
        _ensure_database(conn, name, owner)
    if owner_password is not None:
        return _replace_url(admin_url, database=name, user=name, password=owner_password)
    return _replace_url(admin_url, database=name)


def drop_database_at(admin_url: str, name: str, *, drop_role: bool = False) -> None:
    """Drop database ``name`` (terminating its sessions) and optionally the role of that name."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if drop_role:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


class LocalPostgres:
    """One PostgreSQL cluster kept in ``base_dir``; ``start()`` is idempotent.

    Layout of ``base_dir``: ``data/`` (the cluster, owned by the postgres user, 0700),
    ``run/`` (its Unix socket), ``log/postgres.log``, ``port`` (chosen on first start and
    reused) and ``role-secret`` (the tidemark role's password, 0600).
    """

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self._requested_port = port
        self.bin_dir = find_pg_bin()

    # -- layout ----------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "log" / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        preferred = self.base_dir / "run"
        if len(str(preferred)) <= _MAX_SOCKET_DIR:
            return preferred
        # A deep state directory would overflow sun_path: keep the socket in a short
        # per-cluster directory under the system temp dir instead.
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"tidemark-pg-{digest}"

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _prepare_dirs(self) -> None:
        # Every directory from the state root down must be traversable by the postgres user.
        for directory in reversed([self.base_dir, *self.base_dir.parents]):
            if not directory.exists():
                _make_dir(directory, 0o755, server_owned=False)
        _make_dir(self.base_dir, 0o755, server_owned=False)
        _make_dir(self.log_file.parent, 0o755, server_owned=True)
        _make_dir(self.socket_dir, 0o700, server_owned=True)
        if _as_root():
            probe = subprocess.run(
                ["runuser", "-u", _OS_USER, "--", "test", "-w", str(self.log_file.parent)],
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if probe.returncode != 0:
                raise RuntimeError(
                    f"the {_OS_USER} user cannot reach {self.base_dir}: a parent directory "
                    f"is not traversable (chmod o+x it, or set TIDEMARK_STATE_DIR elsewhere)"
                )

    # -- secrets and port -------------------------------------------------------------------

    def _password(self) -> str:
        path = self.base_dir / _CREDENTIAL_FILE
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        # Create with 0600 from the start rather than chmod after writing.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        return password

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            return self._requested_port
        path = self.base_dir / _PORT_FILE
        if path.exists():
            remembered = int(path.read_text().strip())
            if port_is_bindable(remembered):
                return remembered
        port = free_port()
        path.write_text(f"{port}\n")
        return port

    # -- cluster lifecycle ------------------------------------------------------------------

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        staging = self.base_dir / "data.initdb"
        if staging.exists():
            # Left by an interrupted initdb: start over.
            shutil.rmtree(staging)
        _make_dir(staging, 0o700, server_owned=True)
        run_checked(
            _server_argv(
                [
                    self._bin("initdb"),
                    "-D",
                    str(staging),
                    "-U",
                    _BOOTSTRAP_USER,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            what="initdb",
            cwd=self.base_dir,
            timeout=180,
        )
        # Renamed only once complete, so a half-made cluster is never mistaken for one.
        staging.rename(self.data_dir)

    def _postmaster_info(self) -> tuple[int, Path] | None:
        """(port, socket dir) of the running server, or None when it is not running."""
        if not self._initialized():
            return None
        status = subprocess.run(
            _server_argv([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)]),
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if status.returncode != 0:
            return None
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[3]), Path(lines[4])
        except (OSError, IndexError, ValueError):
            return None

    def _pg_ctl_start(self, port: int) -> None:
        options = ["-p", str(port), "-k", str(self.socket_dir)]
        for key, value in _SERVER_SETTINGS.items():
            options += ["-c", f"{key}={value}"]
        try:
            run_checked(
                _server_argv(
                    [
                        self._bin("pg_ctl"),
                        "start",
                        "-D",
                        str(self.data_dir),
                        "-w",
                        "-t",
                        "60",
                        "-l",
                        str(self.log_file),
                        # pg_ctl hands -o to a shell, so every word is quoted.
                        "-o",
                        " ".join(shlex.quote(option) for option in options),
                    ]
                ),
                what="pg_ctl start",
                cwd=self.base_dir,
                timeout=120,
                # Its own session, so a Ctrl-C meant for the caller does not stop the server.
                start_new_session=True,
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"{exc}\n--- {self.log_file} ---\n{log_tail(self.log_file)}"
            ) from exc

    def _admin_connect(self, port: int, socket_dir: Path) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(socket_dir),
            port=port,
            user=_BOOTSTRAP_USER,
            dbname="postgres",
            autocommit=True,
        )

    def _url(self, port: int, database: str = DATABASE) -> str:
        password = quote(self._password(), safe="")
        return f"postgresql://{ROLE}:{password}@127.0.0.1:{port}/{database}"

    def start(self) -> str:
        """Start (or reuse) the cluster and return the tidemark superuser's URL over TCP."""
        with locked(self.base_dir / ".lock"):
            return self._start()

    def _start(self) -> str:
        self._prepare_dirs()
        password = self._password()
        if not self._initialized():
            self._initdb()
        info = self._postmaster_info()
        if info is None:
            self._pg_ctl_start(self._choose_port())
            info = self._postmaster_info()
            if info is None:
                raise RuntimeError(
                    f"PostgreSQL did not stay up\n--- {self.log_file} ---\n"
                    f"{log_tail(self.log_file)}"
                )
        port, socket_dir = info
        with self._admin_connect(port, socket_dir) as conn:
            _ensure_login_role(conn, ROLE, password, superuser=True)
            _ensure_database(conn, DATABASE, ROLE)
        return self._url(port)

    def stop(self) -> None:
        """Stop the cluster (fast shutdown); nothing happens when it is not running."""
        with locked(self.base_dir / ".lock"):
            if self._postmaster_info() is None:
                return
            self._stop()

    def _stop(self) -> None:
        run_checked(
            _server_argv(
                [self._bin("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w"]
            ),
            what="pg_ctl stop",
            cwd=self.base_dir,
            timeout=120,
        )

    def is_running(self) -> bool:
        return self._postmaster_info() is not None

    def running_url(self) -> str | None:
        """The tidemark URL when the cluster is running, else None (never starts it)."""
        info = self._postmaster_info()
        return self._url(info[0]) if info else None

    def create_database(self, name: str, owner_password: str | None = None) -> str:
        """Create a database on this cluster (starting it if needed) and return its URL.

        With ``owner_password`` a login role of the same name owns it and the URL uses
        that role; otherwise it belongs to the tidemark role.
        """
        return create_database_at(self.start(), name, owner_password)
