"""``imgov schemas``: check, register, list and publish the Avro contracts.

``check`` runs in the test suite and in CI: it fails when an .avsc is not registered as
its subject's latest version, or when any version cannot read data written by an earlier
one (BACKWARD_TRANSITIVE). ``register`` is how a contract change is made: edit the
.avsc, run ``imgov schemas register``, commit both.
"""

from __future__ import annotations

from pathlib import Path

import typer

from schemas.errors import IncompatibleSchemaError, SchemaError
from schemas.file_registry import (
    REGISTRY_DIR,
    FileSchemaRegistry,
    check_repository,
    register_changed,
)
from schemas.http_registry import HttpSchemaRegistry
from schemas.registry import REGISTRY_URL_ENV
from schemas.subjects import AVSC_DIR, load_avsc

__all__ = ["schemas_app"]

schemas_app = typer.Typer(
    name="schemas",
    help="Avro contracts: compatibility check, registration, listing, publishing.",
    no_args_is_help=True,
)

_AVSC = typer.Option(AVSC_DIR, "--avsc-dir", help="Folder of the current .avsc files.")
_REGISTRY = typer.Option(REGISTRY_DIR, "--registry-dir", help="Folder of the file registry.")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(code)


@schemas_app.command("check")
def _check(avsc_dir: Path = _AVSC, registry_dir: Path = _REGISTRY) -> None:
    """Fail unless every .avsc is registered and BACKWARD compatible with all its versions."""
    try:
        problems = check_repository(avsc_dir, registry_dir)
        subjects = load_avsc(avsc_dir)
        registry = FileSchemaRegistry(registry_dir)
    except SchemaError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    if problems:
        for problem in problems:
            typer.echo(f"error: {problem}", err=True)
        raise _fail(f"{len(problems)} problem(s) in {avsc_dir} / {registry_dir}")
    versions = sum(len(registry.versions(s)) for s in subjects)
    typer.echo(
        f"ok: {len(subjects)} schemas, {versions} registered versions, every version reads "
        "the data of all earlier ones"
    )


@schemas_app.command("register")
def _register(avsc_dir: Path = _AVSC, registry_dir: Path = _REGISTRY) -> None:
    """Register each changed .avsc as the next version of its subject (then commit)."""
    try:
        added = register_changed(avsc_dir, registry_dir)
    except IncompatibleSchemaError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise _fail(f"error: {exc}; nothing registered for it") from exc
    except SchemaError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    for entry in added:
        typer.echo(f"registered {entry.subject} version {entry.version} (id {entry.schema_id})")
    if not added:
        typer.echo("nothing to register: every .avsc is its subject's latest version")


@schemas_app.command("list")
def _list(registry_dir: Path = _REGISTRY) -> None:
    """List every subject with its versions and schema ids."""
    try:
        registry = FileSchemaRegistry(registry_dir)
    except SchemaError as exc:
        raise _fail(f"error: {exc}", 2) from exc
    for subject in registry.subjects():
        for entry in registry.versions(subject):
            typer.echo(f"{subject:40} v{entry.version:<3} id {entry.schema_id}")


@schemas_app.command("publish")
def _publish(
    url: str = typer.Option(..., "--url", envvar=REGISTRY_URL_ENV, help="Registry base URL."),
    registry_dir: Path = _REGISTRY,
) -> None:
    """Register every version of the file registry, oldest first, in an HTTP registry."""
    try:
        source = FileSchemaRegistry(registry_dir)
        target = HttpSchemaRegistry(url)
        for subject in source.subjects():
            for entry in source.versions(subject):
                remote = target.register(subject, entry.schema)
                typer.echo(f"{subject} v{entry.version}: id {entry.schema_id} -> {remote}")
    except SchemaError as exc:
        raise _fail(f"error: {exc}", 2) from exc
