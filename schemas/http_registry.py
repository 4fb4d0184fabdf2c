"""A client for any Confluent-compatible Schema Registry over HTTP (stdlib urllib).

Selected by ``schemas.registry.open_registry`` when ``IMGOV_SCHEMA_REGISTRY_URL`` is set.
HTTP failures are translated at this boundary into the ``SchemaError`` tree
(``schemas.errors``).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from schemas.errors import (
    IncompatibleSchemaError,
    RegistryUnavailableError,
    SchemaError,
    SchemaNotFoundError,
)
from schemas.subjects import RegisteredSchema, Schema, canonical_json

__all__ = ["HttpSchemaRegistry"]


class HttpSchemaRegistry:
    """A client for a Confluent-compatible Schema Registry (REST API v1) over urllib.

    Schemas by id and ids by schema are cached for the life of the client (both are
    immutable in a registry). Credentials may be given as ``https://user:secret@host``.

    Raises (from every method):
        SchemaNotFoundError: HTTP 404.
        IncompatibleSchemaError: HTTP 409 on registration.
        RegistryUnavailableError: Connection failure, timeout, HTTP 5xx.
        SchemaError: Any other HTTP error.
    """

    _CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._auth: str | None = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            self._auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self._base = urllib.parse.urlunsplit(parts).rstrip("/")
        self._timeout_s = timeout_s
        self._schemas: dict[int, Schema] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self._base}{path}", data=data, method=method)
        request.add_header("Accept", f"{self._CONTENT_TYPE}, application/json")
        if data is not None:
            request.add_header("Content-Type", self._CONTENT_TYPE)
        if self._auth:
            request.add_header("Authorization", self._auth)
        where = f"schema registry {method} {path}"
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _http_error(where, exc) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailableError(f"{where}: {exc}") from exc
        except ValueError as exc:
            raise SchemaError(f"{where}: the answer is not JSON: {exc}") from exc

    @staticmethod
    def _subject_path(subject: str) -> str:
        return "/subjects/" + urllib.parse.quote(subject, safe="")

    def id_for(self, subject: str, schema: Schema) -> int:
        key = (subject, canonical_json(schema))
        if key not in self._ids:
            answer = self._request("POST", self._subject_path(subject), {"schema": key[1]})
            self._ids[key] = int(answer["id"])
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> Schema:
        if schema_id not in self._schemas:
            answer = self._request("GET", f"/schemas/ids/{schema_id}")
            if answer.get("schemaType", "AVRO") != "AVRO":
                raise SchemaNotFoundError(
                    f"schema id {schema_id} is a {answer['schemaType']} schema, not Avro"
                )
            self._schemas[schema_id] = json.loads(answer["schema"])
        return self._schemas[schema_id]

    def versions(self, subject: str) -> list[RegisteredSchema]:
        path = self._subject_path(subject)
        try:
            numbers = self._request("GET", f"{path}/versions")
        except SchemaNotFoundError:
            return []
        found = []
        for number in sorted(numbers):
            answer = self._request("GET", f"{path}/versions/{number}")
            schema = json.loads(answer["schema"])
            found.append(
                RegisteredSchema(subject, int(answer["version"]), int(answer["id"]), schema)
            )
        return found

    def subjects(self) -> list[str]:
        return sorted(self._request("GET", "/subjects"))

    def register(self, subject: str, schema: Schema) -> int:
        """Registers ``schema`` under ``subject`` (idempotent) and returns its id."""
        text = canonical_json(schema)
        answer = self._request("POST", f"{self._subject_path(subject)}/versions", {"schema": text})
        self._ids[(subject, text)] = int(answer["id"])
        return int(answer["id"])

    def is_compatible(self, subject: str, schema: Schema) -> bool:
        """Asks the registry whether ``schema`` may become the next version of ``subject``."""
        path = f"/compatibility{self._subject_path(subject)}/versions/latest"
        answer = self._request("POST", path, {"schema": canonical_json(schema)})
        return bool(answer["is_compatible"])


def _http_error(where: str, exc: urllib.error.HTTPError) -> SchemaError:
    try:
        detail = json.loads(exc.read() or b"{}").get("message", exc.reason)
    except (ValueError, AttributeError, OSError):
        detail = exc.reason
    message = f"{where}: HTTP {exc.code}: {detail}"
    if exc.code == 404:
        return SchemaNotFoundError(message)
    if exc.code == 409:
        return IncompatibleSchemaError(message)
    if exc.code >= 500:
        return RegistryUnavailableError(message)
    return SchemaError(message)
