"""How imgov's Kafka clients authenticate and encrypt: one value, four client dialects.

``KafkaSecurity`` is what ``KafkaSettings.security()`` (``IMGOV_KAFKA_SECURITY_PROTOCOL``,
``IMGOV_KAFKA_SSL_*``, ``IMGOV_KAFKA_SASL_*``) resolves to, secrets already read from
their files. Every Kafka client imgov opens gets its arguments from here, so that TLS
and SASL are configured once and the same way for all of them:

* ``client_options()``: kafka-python (``KafkaConsumer``, ``KafkaAdminClient``) and aiokafka
  (``AIOKafkaProducer``), which take the same keyword names;
* ``faust_credentials()``: ``faust.App(broker_credentials=...)``, which Faust turns into the
  same aiokafka arguments for its consumer, producers and topic admin client;
* ``librdkafka_config()``: confluent-kafka and kcat (tests and operators' tools).

Both Python dialects get one ``ssl.SSLContext`` built by ``ssl_context()``: TLS 1.2 or
newer, the broker's certificate verified against ``ssl_cafile`` (the system CAs when
unset), host name checked unless ``ssl_check_hostname`` is false, and an optional client
certificate (mutual TLS).

This module sits in the lowest layer so that the runtime, the gateway and the producers
of ``imgov simulate`` share it; Faust is imported only when its credentials are asked for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from schemas.errors import ImgovError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = [
    "SASL_MECHANISMS",
    "SECURITY_PROTOCOLS",
    "KafkaLoginError",
    "KafkaSecurity",
    "SaslMechanism",
    "SecurityProtocol",
    "check_login",
    "check_login_blocking",
    "read_secret_file",
]

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
SECURITY_PROTOCOLS: tuple[SecurityProtocol, ...] = (
    "PLAINTEXT",
    "SSL",
    "SASL_SSL",
    "SASL_PLAINTEXT",
)
SASL_MECHANISMS: tuple[SaslMechanism, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class KafkaLoginError(ImgovError):
    """A broker refused the TLS handshake or the SASL login; the message says which."""


def read_secret_file(path: Path) -> SecretStr:
    """Returns the secret held in ``path``: its text without the trailing newline.

    Called when settings are loaded (Kafka SASL and key passwords, ClickHouse password),
    so a missing or unreadable file stops the process at start with its name.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is empty.
    """
    text = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not text:
        raise ValueError(f"{path} is empty")
    return SecretStr(text)


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The resolved security settings of one Kafka connection (secrets as ``SecretStr``).

    Attributes:
        protocol: Kafka's ``security.protocol``.
        cafile: PEM file of the CA(s) the broker's certificate must chain to (TLS only);
            None trusts the system's CAs.
        certfile: PEM client certificate (mutual TLS), optional.
        keyfile: PEM private key of ``certfile`` (None: the key is in ``certfile``).
        key_password: passphrase of ``keyfile``.
        check_hostname: verify that the broker's certificate names the host connected to.
        mechanism: the SASL mechanism (SASL protocols only).
        username: the SASL user.
        password: the SASL password.
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    key_password: SecretStr | None = None
    check_hostname: bool = True
    mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None

    @property
    def uses_tls(self) -> bool:
        """True for ``SSL`` and ``SASL_SSL``."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """True for ``SASL_SSL`` and ``SASL_PLAINTEXT``."""
        return self.protocol in ("SASL_SSL", "SASL_PLAINTEXT")

    def describe(self) -> str:
        """A one-line summary without secrets, for logs and ``imgov status``."""
        parts: list[str] = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.mechanism} as {self.username}")
        if self.uses_tls:
            parts.append(f"CA {self.cafile or 'system'}")
            if self.certfile is not None:
                parts.append(f"client certificate {self.certfile}")
        return ", ".join(parts)

    def ssl_context(self) -> ssl.SSLContext:
        """Returns a new client TLS context for these settings.

        Raises:
            ssl.SSLError: the CA file, certificate or key is not valid PEM, or the key
                does not match the certificate (or its passphrase is wrong).
            OSError: one of the files cannot be read.
        """
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if self.cafile is None else str(self.cafile)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if self.certfile is not None:
            context.load_cert_chain(
                str(self.certfile),
                None if self.keyfile is None else str(self.keyfile),
                None if self.key_password is None else self.key_password.get_secret_value(),
            )
        return context

    def client_options(self) -> dict[str, Any]:
        """Returns the keyword arguments of kafka-python's and aiokafka's clients.

        Both libraries use the same names (``security_protocol``, ``ssl_context``,
        ``sasl_mechanism``, ``sasl_plain_username``, ``sasl_plain_password``; the
        ``plain`` in the last two is historical and covers SCRAM too).
        """
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=_reveal(self.password),
            )
        return options

    def faust_credentials(self) -> CredentialsT | None:
        """Returns ``faust.App(broker_credentials=...)``, None for PLAINTEXT.

        Faust (faust-streaming 0.15) hands these to every aiokafka client it opens
        (``credentials_to_aiokafka_auth``): consumers, producers and its topic creator.
        """
        import faust

        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return faust.SSLCredentials(self.ssl_context())
        return faust.SASLCredentials(
            username=self.username,
            password=_reveal(self.password),
            ssl_context=self.ssl_context() if self.uses_tls else None,
            mechanism=self.mechanism,
        )

    def librdkafka_config(self) -> dict[str, str]:
        """Returns the librdkafka properties (confluent-kafka, kcat ``-F`` files)."""
        config = {"security.protocol": self.protocol.lower()}
        if self.uses_tls:
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if self.check_hostname else "none"
            )
            if self.cafile is not None:
                config["ssl.ca.location"] = str(self.cafile)
            if self.certfile is not None:
                config["ssl.certificate.location"] = str(self.certfile)
                config["ssl.key.location"] = str(self.keyfile or self.certfile)
            if self.key_password is not None:
                config["ssl.key.password"] = self.key_password.get_secret_value()
        if self.uses_sasl:
            config["sasl.mechanism"] = self.mechanism
            config["sasl.username"] = self.username or ""
            config["sasl.password"] = _reveal(self.password) or ""
        return config


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


async def check_login(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """Connects once, with TLS and SASL, to the first bootstrap server that answers.

    Called by every imgov command before it opens its Kafka clients: kafka-python and
    aiokafka retry a refused login until their bootstrap timeout and then report only
    that they could not bootstrap, so a wrong password would look like a hang or an
    outage. A broker that cannot be reached is left to the caller's client (it retries,
    or reports the outage its own way). Does nothing for PLAINTEXT.

    Raises:
        KafkaLoginError: the broker's certificate is not trusted, the TLS handshake
            failed, or the broker refused the SASL mechanism, user or password.
    """
    if security.protocol == "PLAINTEXT":
        return
    from aiokafka.conn import create_conn  # type: ignore[import-untyped]
    from aiokafka.errors import (  # type: ignore[import-untyped]
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        IllegalSaslStateError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    options = security.client_options()
    refused = (
        AuthenticationFailedError,
        AuthenticationMethodNotSupported,
        IllegalSaslStateError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            connection = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000), **options),
                timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            raise KafkaLoginError(
                f"TLS to Kafka at {server} failed: its certificate is not trusted"
                f" ({exc.verify_message}); IMGOV_KAFKA_SSL_CAFILE must name the CA that"
                f" signed it (now: {security.cafile or 'the system CAs'})"
            ) from exc
        except ssl.SSLError as exc:
            raise KafkaLoginError(
                f"TLS handshake with Kafka at {server} failed ({exc}); is it a"
                f" {security.protocol} listener?"
            ) from exc
        except refused as exc:
            raise KafkaLoginError(
                f"Kafka at {server} refused the login (authentication failed): user"
                f" {security.username!r}, {security.protocol} {security.mechanism}: {exc}"
            ) from exc
        except (OSError, TimeoutError, ValueError, KafkaError):
            continue  # not reachable (or not a Kafka listener): the client reports it
        connection.close()
        return


def check_login_blocking(bootstrap: str, security: KafkaSecurity, timeout_s: float = 10.0) -> None:
    """``check_login`` for synchronous callers, whether or not an event loop runs.

    Raises:
        KafkaLoginError: as ``check_login``.
    """
    if security.protocol == "PLAINTEXT":
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(check_login(bootstrap, security, timeout_s))
        return
    # Called from inside a running loop (a Faust timer's thread or a test): run the
    # check on a loop of its own in another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, check_login(bootstrap, security, timeout_s)).result()
