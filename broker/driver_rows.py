"""The apply path's statements as driver SQL on SQLite: its INSERTs, its UPDATEs by
primary key and its few SELECTs.

Applying one order message runs about ten small statements; through the SQL expression
layer each cost 0.1-0.2 ms of Python (parameter processing, the execution context,
result set-up), several times what SQLite took to run it. Here each statement shape
(table, kind, columns given) is written once per process as ``?``-placeholder SQL and
run on the connection's DBAPI cursor (``execute``/``executemany``), with the values as
the expression layer would send them:

* each value passes through its column type's bind processor for the dialect (JSON to
  text, datetimes to SQLite's text format, booleans to integers);
* a column left out gets its Python-side default (INSERT) or ``onupdate`` (UPDATE),
  as Core would give it (server defaults are left to the database);
* a SELECT built with the expression layer is compiled once, its parameters passed
  through their bind processors and its columns through their result processors
  (JSON text to objects...);
* a driver error is raised as SQLAlchemy's (:meth:`sqlalchemy.exc.DBAPIError.instance`:
  ``IntegrityError``, ``OperationalError``...), so callers tell a refused value from a
  transient failure exactly as before.

A savepoint (:func:`savepoint`) is taken and released the same way. The statements
run in the caller's transaction and savepoint (the same DBAPI
connection). On other dialects the Core statement is run as before (PostgreSQL
batches the rows of an ``executemany`` itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

# Statement shapes kept: far more than the tables and sets of columns in use.
SHAPES = 256


@dataclass(frozen=True)
class _Shape:
    sql: str
    names: tuple[str, ...]  # the parameters in placeholder order
    processors: tuple[Callable[[Any], Any] | None, ...]
    defaults: tuple[tuple[str, Callable[[], Any]], ...]  # columns left out


def _default(generator: Any) -> Callable[[], Any]:
    """A column's Python-side scalar or callable default (or ``onupdate``)."""
    arg = generator.arg
    if generator.is_callable:
        return lambda: arg(None)  # Core wraps a callable to take the execution context
    return lambda: arg


def _processor(target: Table, name: str, dialect: Dialect) -> Callable[[Any], Any] | None:
    column_type = target.c[name].type
    return column_type.dialect_impl(dialect).bind_processor(dialect)


def _defaults(target: Table, given: tuple[str, ...], kind: str
              ) -> tuple[tuple[str, Callable[[], Any]], ...]:
    """The Python-side ``default`` (INSERT) or ``onupdate`` (UPDATE) of each column
    not ``given``, as Core would fill it in."""
    found = ((c.key, getattr(c, kind)) for c in target.columns if c.key not in given)
    return tuple((key, _default(generator)) for key, generator in found
                 if generator is not None and (generator.is_scalar or generator.is_callable))


@lru_cache(maxsize=SHAPES)
def _inserting(target: Table, given: tuple[str, ...], dialect: Dialect) -> _Shape:
    defaults = _defaults(target, given, "default")
    names = given + tuple(name for name, _ in defaults)
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {dialect.identifier_preparer.format_table(target)} "
           f"({', '.join(quote(target.c[n].name) for n in names)}) "
           f"VALUES ({', '.join('?' for _ in names)})")
    return _Shape(sql, names, tuple(_processor(target, n, dialect) for n in names), defaults)


@lru_cache(maxsize=SHAPES)
def _updating(target: Table, given: tuple[str, ...], dialect: Dialect) -> _Shape:
    defaults = _defaults(target, given, "onupdate")
    names = given + tuple(name for name, _ in defaults)
    quote = dialect.identifier_preparer.quote
    sql = (f"UPDATE {dialect.identifier_preparer.format_table(target)} SET "
           f"{', '.join(f'{quote(target.c[n].name)} = ?' for n in names)} "
           f"WHERE {quote(target.c.id.name)} = ?")
    return _Shape(sql, names, tuple(_processor(target, n, dialect) for n in names), defaults)


def _values(shape: _Shape, row: Mapping[str, Any]) -> list[Any]:
    values = {**row, **{name: make() for name, make in shape.defaults}}
    return [value if processor is None else processor(value)
            for value, processor in zip((values[n] for n in shape.names),
                                        shape.processors, strict=True)]


def _run(connection: Connection, sql: str, params: Sequence[Sequence[Any]]) -> None:
    dialect = connection.dialect
    cursor = connection.connection.cursor()
    try:
        if len(params) == 1:
            cursor.execute(sql, params[0])
        else:
            cursor.executemany(sql, params)
    except dialect.dbapi.Error as exc:  # type: ignore[union-attr]
        raise DBAPIError.instance(sql, list(params), exc, dialect.dbapi.Error,  # type: ignore[union-attr]
                                  dialect=dialect) from exc
    finally:
        cursor.close()


def _grouped(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, ...], list[Mapping[str, Any]]]:
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    return groups


def insert_rows(connection: Connection, target: Table,
                rows: Sequence[Mapping[str, Any]]) -> None:
    """``INSERT INTO target`` each of ``rows`` (column key -> value), in order within
    each set of columns given; one ``executemany`` per set."""
    if not rows:
        return
    dialect = connection.dialect
    if dialect.name != "sqlite":
        connection.execute(_core_insert(target), list(rows))
        return
    for given, same in _grouped(rows).items():
        shape = _inserting(target, given, dialect)
        _run(connection, shape.sql, [_values(shape, row) for row in same])


def update_by_key(connection: Connection, target: Table,
                  rows: Sequence[tuple[int, Mapping[str, Any]]]) -> None:
    """``UPDATE target SET ... WHERE id = ?`` for each ``(primary key, values)``; a
    column with an ``onupdate`` not among the values gets it, as with Core."""
    if not rows:
        return
    dialect = connection.dialect
    groups: dict[tuple[str, ...], list[tuple[int, Mapping[str, Any]]]] = {}
    for pk, values in rows:
        groups.setdefault(tuple(values), []).append((pk, values))
    for given, same in groups.items():
        if dialect.name != "sqlite":
            connection.execute(_core_update(target, given),
                               [{"pk_": pk, **{f"new_{n}": v for n, v in values.items()}}
                                for pk, values in same])
            continue
        shape = _updating(target, given, dialect)
        _run(connection, shape.sql, [[*_values(shape, values), pk] for pk, values in same])


@lru_cache(maxsize=SHAPES)
def _core_insert(target: Table) -> Any:
    return insert(target)


@lru_cache(maxsize=SHAPES)
def _core_update(target: Table, names: tuple[str, ...]) -> Any:
    return (update(target).where(target.c.id == bindparam("pk_"))
            .values({name: bindparam(f"new_{name}") for name in names}))


@dataclass(frozen=True)
class _Query:
    sql: str
    names: tuple[str, ...]  # the parameters in placeholder order
    fixed: dict[str, Any]  # the values bound in the statement itself
    processors: dict[str, Callable[[Any], Any]]  # bind processors, by parameter
    results: tuple[Callable[[Any], Any] | None, ...]


@lru_cache(maxsize=SHAPES)
def _querying(statement: Select[Any], dialect: Dialect) -> _Query:
    compiled = statement.compile(dialect=dialect)
    binds = compiled.binds
    processors: dict[str, Callable[[Any], Any]] = {}
    for name, bind in binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None)
                    for c in statement.selected_columns)
    return _Query(compiled.string, tuple(compiled.positiontup or ()),
                  {name: bind.effective_value for name, bind in binds.items()
                   if not bind.required}, processors, results)


def select_rows(connection: Connection, statement: Select[Any],
                params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` (bound with ``params``), values as the expression
    layer would return them, in the order of its selected columns."""
    dialect = connection.dialect
    if dialect.name != "sqlite":
        return [tuple(row) for row in connection.execute(statement, params or {})]
    query = _querying(statement, dialect)
    values = {**query.fixed, **(params or {})}
    bound = []
    for name in query.names:
        processor = query.processors.get(name)
        bound.append(values[name] if processor is None else processor(values[name]))
    cursor = connection.connection.cursor()
    try:
        cursor.execute(query.sql, bound)
        found = cursor.fetchall()
    except dialect.dbapi.Error as exc:  # type: ignore[union-attr]
        raise DBAPIError.instance(query.sql, bound, exc, dialect.dbapi.Error,  # type: ignore[union-attr]
                                  dialect=dialect) from exc
    finally:
        cursor.close()
    results = query.results
    return [tuple(value if processor is None else processor(value)
                  for value, processor in zip(row, results, strict=True)) for row in found]


_SAVEPOINT = "apply_savepoint"


@contextmanager
def savepoint(connection: Connection) -> Iterator[None]:
    """A savepoint around the block: released when it ends, rolled back to (and
    released) when it raises, the exception going on. On SQLite a fixed name on the
    DBAPI cursor (the block must not nest another of these); elsewhere
    :meth:`Connection.begin_nested`."""
    if connection.dialect.name != "sqlite":
        with connection.begin_nested():
            yield
        return
    _run(connection, f"SAVEPOINT {_SAVEPOINT}", [()])
    try:
        yield
    except BaseException:
        _run(connection, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", [()])
        _run(connection, f"RELEASE SAVEPOINT {_SAVEPOINT}", [()])
        raise
    _run(connection, f"RELEASE SAVEPOINT {_SAVEPOINT}", [()])
