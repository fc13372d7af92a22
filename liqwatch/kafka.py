"""How every Kafka client of liqwatch connects: one `Connection`, built once at start, read by each client.

    kafka = Connection.plain("127.0.0.1:9092")                   # the default: one broker, PLAINTEXT
    kafka = Connection.from_spec(cfg.kafka, os.environ)         # the config's `kafka:` block, password from the env
    AIOKafkaConsumer(**kafka.aiokafka(), group_id=None)           # aiokafka (topics, shards, coordinator, webhooks)
    confluent_kafka.Producer({**kafka.confluent(), "linger.ms": 5})   # librdkafka (the feed's reader, the outputs)
    faust.App("liqwatch", **kafka.faust())                         # the worker's Faust app

The password only ever lives in an environment variable (the block names which: `password_env`); `Connection`
keeps it out of its repr and `describe()`, so no log line or output file can carry it. `check()` fails at start,
with one line naming the field, for a file that is missing or is not what it says (a CA that is not a
certificate, a key that does not match its certificate).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from liqwatch.config import KafkaSpec

PASSWORD_ENV = "LIQWATCH_KAFKA_PASSWORD"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")


class KafkaSettingError(ValueError):
    """A connection setting that cannot work; the message is one line naming the field."""


@dataclass(frozen=True)
class Connection:
    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str = PASSWORD_ENV    # where the password came from: named in errors, never the value
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def plain(cls, bootstrap: str) -> Connection:
        return cls(bootstrap)

    @classmethod
    def from_spec(cls, spec: KafkaSpec, env: Mapping[str, str], bootstrap: str | None = None) -> Connection:
        """The block's settings with the password read from `env[spec.password_env]`; `bootstrap` overrides."""
        servers = bootstrap or spec.bootstrap
        if not servers:
            raise KafkaSettingError("kafka.bootstrap: not given (config, --bootstrap or LIQWATCH_KAFKA_BOOTSTRAP)")
        password = env.get(spec.password_env) if spec.sasl_mechanism is not None else None
        kafka = cls(servers, spec.security_protocol, spec.sasl_mechanism, spec.username, password, spec.password_env,
                    spec.ca_file, spec.cert_file, spec.key_file)
        kafka.check()
        return kafka

    def with_bootstrap(self, bootstrap: str) -> Connection:
        return replace(self, bootstrap=bootstrap)

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def describe(self) -> str:
        """For logs and errors: where and how, never the password."""
        how = [self.security_protocol]
        if self.sasl:
            how.append(f"{self.sasl_mechanism} as {self.username!r}")
        if self.tls and self.ca_file is not None:
            how.append(f"CA {self.ca_file}")
        if self.cert_file is not None:
            how.append(f"client certificate {self.cert_file}")
        return f"{self.bootstrap} ({', '.join(how)})"

    def check(self) -> None:
        """Every setting usable, or KafkaSettingError naming the field (one line)."""
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise KafkaSettingError(f"kafka.security_protocol: {self.security_protocol!r} is not one of "
                                   f"{', '.join(SECURITY_PROTOCOLS)}")
        if self.sasl:
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaSettingError(f"kafka.sasl_mechanism: {self.security_protocol} needs one of "
                                       f"{', '.join(SASL_MECHANISMS)} (got {self.sasl_mechanism!r})")
            if not self.username:
                raise KafkaSettingError(f"kafka.username: {self.security_protocol} needs a user name")
            if not self.password:
                raise KafkaSettingError(f"kafka.password_env: {self.security_protocol} needs a password in the "
                                       f"environment variable {self.password_env}, which is not set")
        elif self.sasl_mechanism is not None:
            raise KafkaSettingError(f"kafka.sasl_mechanism: {self.sasl_mechanism} needs security_protocol SASL_SSL "
                                   f"or SASL_PLAINTEXT (got {self.security_protocol})")
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        for name, path in files.items():
            if path is None:
                continue
            if not self.tls:
                raise KafkaSettingError(f"kafka.{name}: TLS files need security_protocol SSL or SASL_SSL "
                                       f"(got {self.security_protocol})")
            if not Path(path).is_file():
                raise KafkaSettingError(f"kafka.{name}: {path} is not a file")
        if (self.cert_file is None) != (self.key_file is None):
            raise KafkaSettingError("kafka.cert_file: a client certificate needs its key (key_file), and the "
                                   "other way round")
        if self.tls:
            self.ssl_context()  # a CA that is not a certificate, a key that does not match: now, not at first use

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the Python clients (aiokafka, Faust): the CA file's roots, else the system's;
        hostname checked against the broker's certificate as librdkafka does."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError, ValueError) as e:
                raise KafkaSettingError(f"kafka.ca_file: {self.ca_file} holds no usable CA certificate "
                                       f"({_reason(e)})") from None
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (ssl.SSLError, OSError, ValueError) as e:
                raise KafkaSettingError(f"kafka.cert_file: {self.cert_file} with key {self.key_file} is not a usable "
                                       f"client certificate ({_reason(e)})") from None
        return ctx

    # -- the clients' own settings ---------------------------------------------------------------------------

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of AIOKafkaConsumer/Producer/AdminClient."""
        out: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                       sasl_plain_password=self.password)
        if self.tls:
            out["ssl_context"] = self.ssl_context()
        return out

    def confluent(self) -> dict[str, Any]:
        """librdkafka properties (confluent_kafka Consumer/Producer)."""
        out: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.sasl:
            out.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.username,
                        "sasl.password": self.password})
        if self.tls:
            # no CA file: the system's CAs, as Python's ssl takes them (librdkafka's wheels carry their own OpenSSL,
            # whose default paths may hold none; "probe" searches the usual places)
            out["ssl.ca.location"] = str(self.ca_file) if self.ca_file is not None else "probe"
            if self.cert_file is not None:
                out.update({"ssl.certificate.location": str(self.cert_file), "ssl.key.location": str(self.key_file)})
        return out

    def faust(self) -> dict[str, Any]:
        """faust.App keyword arguments: the broker URL and its credentials."""
        import faust

        out: dict[str, Any] = {"broker": ";".join(f"kafka://{s.strip()}" for s in self.bootstrap.split(","))}
        if self.sasl:
            out["broker_credentials"] = faust.SASLCredentials(
                username=self.username, password=self.password, mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context() if self.tls else None)
        elif self.tls:
            out["broker_credentials"] = faust.SSLCredentials(self.ssl_context())
        return out

    def child_env(self) -> dict[str, str]:
        """The environment a child process started with `options()` needs: the password under `password_env`."""
        return {self.password_env: self.password} if self.sasl and self.password else {}

    def options(self) -> list[str]:
        """The CLI options that rebuild this connection in a child process (the password goes by environment:
        the child inherits `password_env`)."""
        out = ["--bootstrap", self.bootstrap, "--security-protocol", self.security_protocol]
        if self.sasl:
            out += ["--sasl-mechanism", str(self.sasl_mechanism), "--sasl-username", str(self.username),
                    "--sasl-password-env", self.password_env]
        for option, path in (("--ssl-ca", self.ca_file), ("--ssl-cert", self.cert_file), ("--ssl-key", self.key_file)):
            if path is not None:
                out += [option, str(path)]
        return out


def _reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


class KafkaRefused(RuntimeError):
    """The cluster cannot be used with these settings; the message is one line saying which setting to fix."""


async def probe(kafka: Connection, timeout_s: float = 10.0) -> int:
    """Connect as every client will, ask for the cluster, leave; the number of brokers it has. One line on
    failure (KafkaRefused): no broker answers, the TLS handshake fails (untrusted CA, a listener without TLS),
    SASL refuses the user or password, or the broker closes the connection (a listener wanting other security)."""
    import asyncio
    import logging

    from aiokafka import errors
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.conn import create_conn

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its own retries would log every refusal; the user gets our one line
    args = kafka.aiokafka()
    args.pop("bootstrap_servers")
    try:
        reached = None
        for server in kafka.bootstrap.split(","):  # the first that accepts a connection says what is wrong
            host, _, port = server.strip().rpartition(":")
            if kafka.tls:
                try:
                    await asyncio.to_thread(_handshake, kafka, host, int(port), timeout_s)
                except ssl.SSLError as e:
                    raise KafkaRefused(_tls_refusal(kafka, server, e)) from None
                except OSError:
                    continue
            try:
                conn = await asyncio.wait_for(create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                                                          client_id="liqwatch-probe", **args), timeout_s)
            except (ConnectionRefusedError, asyncio.TimeoutError, TimeoutError, OSError) as e:
                if isinstance(e, ssl.SSLError):
                    raise KafkaRefused(_tls_refusal(kafka, server, e)) from None
                continue
            except errors.SaslAuthenticationFailed:
                raise KafkaRefused(f"Kafka at {server} refused {kafka.sasl_mechanism} authentication of user "
                                   f"{kafka.username!r}: wrong password (environment variable "
                                   f"{kafka.password_env}) or no such user") from None
            except errors.UnsupportedSaslMechanismError:
                raise KafkaRefused(f"Kafka at {server} does not offer SASL mechanism {kafka.sasl_mechanism} "
                                   "(kafka.sasl_mechanism)") from None
            except errors.KafkaConnectionError:
                raise KafkaRefused(_closed(kafka, server)) from None
            conn.close()
            reached = server
            break
        if reached is None:
            raise KafkaRefused(f"cannot reach Kafka at {kafka.bootstrap}: no broker answered (is the stack up? "
                               "`liqwatch stack status`)")
        admin = AIOKafkaAdminClient(**kafka.aiokafka(), client_id="liqwatch-probe",
                                    request_timeout_ms=int(timeout_s * 1000))
        try:
            async with asyncio.timeout(timeout_s):
                await admin.start()
                return len((await admin.describe_cluster())["brokers"])
        except (TimeoutError, errors.KafkaError) as e:
            if isinstance(e, errors.KafkaConnectionError):  # a connection was made, then no request answered
                raise KafkaRefused(_closed(kafka, reached)) from None
            raise KafkaRefused(f"Kafka at {kafka.describe()} does not answer: {e!r}") from None
        finally:
            await admin.close()
    finally:
        quiet.setLevel(level)


def _handshake(kafka: Connection, host: str, port: int, timeout_s: float) -> None:
    """A TLS handshake on a blocking socket: a certificate refused is said to the broker with an alert (asyncio's
    transport closes without it), so the broker's log records the refused connection as librdkafka's would."""
    import socket

    with socket.create_connection((host, port), timeout=timeout_s) as raw:
        with kafka.ssl_context().wrap_socket(raw, server_hostname=host):
            pass


def _tls_refusal(kafka: Connection, server: str, e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        trust = f"the CA in kafka.ca_file ({kafka.ca_file})" if kafka.ca_file else "the system's CAs (no kafka.ca_file)"
        return (f"TLS: the certificate of Kafka at {server} is not trusted by {trust}: "
                f"{getattr(e, 'verify_message', None) or _reason(e)}")
    return (f"TLS handshake with Kafka at {server} failed ({_reason(e)}): is that listener TLS? "
            f"(kafka.security_protocol is {kafka.security_protocol})")


def _closed(kafka: Connection, server: str) -> str:
    want = "SSL or SASL_SSL" if not kafka.tls else ("SASL_SSL (with a user)" if not kafka.sasl else "another setting")
    return (f"Kafka at {server} closed the connection during the handshake: its listener wants {want}, not "
            f"{kafka.security_protocol} (kafka.security_protocol)")
