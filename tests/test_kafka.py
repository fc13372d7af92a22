"""The Kafka connection (liqwatch.kafka, the config's `kafka:` block, the CLI's options): every client gets the
same settings, the password only ever comes from the environment and never shows, and a setting that cannot work
fails at start naming its field. Against a real broker: tests/integration/test_production_kafka.py."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from liqwatch import scenarios
from liqwatch.config import ConfigError, KafkaSpec, load_config, parse_config
from liqwatch.kafka import Connection, KafkaSettingError
from liqwatch.tools.certs import cert_paths, make_certs, make_untrusted_ca

SECRET = "s3cr3t-Pa55word-that-must-never-show"
PRE = scenarios.config_path("oct-2025", "prefix")


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    make_certs(d, "127.0.0.1")
    return d


def scram(tls: Path, **kw) -> Connection:
    return Connection("127.0.0.1:9093", "SASL_SSL", "SCRAM-SHA-512", "liqwatch", SECRET, "LW_PW",
                      **{"ca_file": cert_paths(tls).ca, **kw})


def with_kafka(block: dict) -> dict:
    data = yaml.safe_load(PRE.read_text())
    return {**data, "kafka": block}


# -- the config block ---------------------------------------------------------------------------------------------

def test_the_block_is_not_part_of_the_config_id():
    plain = parse_config(yaml.safe_load(PRE.read_text()))
    secured = parse_config(with_kafka({"bootstrap": "kafka-1:9093,kafka-2:9093", "security_protocol": "SASL_SSL",
                                       "sasl_mechanism": "SCRAM-SHA-256", "username": "risk"}))
    assert secured.config_id == plain.config_id  # where the events come from does not change the alerts
    assert secured.kafka.bootstrap == "kafka-1:9093,kafka-2:9093" and plain.kafka.bootstrap is None


@pytest.mark.parametrize("block,needle", [
    ({"password": SECRET}, "kafka: password: never in the file"),
    ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism and username"),
    ({"security_protocol": "TLS"}, "kafka.security_protocol"),
    ({"sasl_mechanism": "SCRAM-SHA-512"}, "sasl_mechanism needs security_protocol SASL_SSL"),
    ({"ca_file": "ca.pem"}, "need security_protocol SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "cert_file": "c.pem"}, "cert_file and key_file go together"),
    ({"bootstrap": "broker"}, "kafka.bootstrap: expected HOST:PORT"),
    ({"password_env": "not a name"}, "kafka.password_env"),
])
def test_a_bad_block_names_its_field(block, needle):
    with pytest.raises(ConfigError) as e:
        parse_config(with_kafka(block))
    assert needle in str(e.value)
    assert SECRET not in str(e.value)  # a password written in the file is refused without being echoed


def test_relative_files_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text(yaml.safe_dump(with_kafka({"security_protocol": "SSL", "ca_file": "tls/ca.pem",
                                               "cert_file": "/abs/c.pem", "key_file": "k.pem"})))
    k = load_config(path).kafka
    assert k.ca_file == tmp_path / "conf" / "tls" / "ca.pem" and k.cert_file == Path("/abs/c.pem")
    assert k.key_file == tmp_path / "conf" / "k.pem"


# -- the connection -----------------------------------------------------------------------------------------------

def test_from_spec_reads_the_password_from_the_named_variable(tls):
    spec = KafkaSpec(bootstrap="127.0.0.1:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                     username="u", password_env="LW_PW", ca_file=cert_paths(tls).ca)
    k = Connection.from_spec(spec, {"LW_PW": SECRET})
    assert k.password == SECRET and k.sasl and k.tls
    with pytest.raises(KafkaSettingError, match="environment variable LW_PW, which is not set"):
        Connection.from_spec(spec, {"LIQWATCH_KAFKA_PASSWORD": SECRET})
    assert Connection.from_spec(spec, {"LW_PW": SECRET}, bootstrap="b:1").bootstrap == "b:1"


def test_every_client_gets_the_same_settings(tls):
    k = scram(tls)
    a = k.aiokafka()
    assert (a["bootstrap_servers"], a["security_protocol"], a["sasl_mechanism"], a["sasl_plain_username"],
            a["sasl_plain_password"]) == ("127.0.0.1:9093", "SASL_SSL", "SCRAM-SHA-512", "liqwatch", SECRET)
    assert isinstance(a["ssl_context"], ssl.SSLContext) and a["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert a["ssl_context"].check_hostname
    c = k.confluent()
    assert c == {"bootstrap.servers": "127.0.0.1:9093", "security.protocol": "SASL_SSL",
                 "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "liqwatch", "sasl.password": SECRET,
                 "ssl.ca.location": str(cert_paths(tls).ca)}
    f = k.faust()
    creds = f["broker_credentials"]
    assert f["broker"] == "kafka://127.0.0.1:9093"
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == (
        "SASL_SSL", "SCRAM-SHA-512", "liqwatch", SECRET)
    assert Connection.plain("a:1,b:2").faust() == {"broker": "kafka://a:1;kafka://b:2"}
    assert Connection.plain("a:1").confluent() == {"bootstrap.servers": "a:1", "security.protocol": "PLAINTEXT"}
    assert Connection("a:1", "SSL").confluent()["ssl.ca.location"] == "probe"  # the system's CAs, as Python's ssl


def test_the_password_never_shows(tls):
    k = scram(tls)
    for text in (repr(k), str(k), k.describe(), " ".join(k.options()), repr(k.faust()["broker_credentials"])):
        assert SECRET not in text
    assert "SCRAM-SHA-512 as 'liqwatch'" in k.describe()
    # a child process gets the password by environment, under the name its options give
    assert k.child_env() == {"LW_PW": SECRET}
    assert k.options()[k.options().index("--sasl-password-env") + 1] == "LW_PW"


def test_bad_files_fail_at_start_naming_the_field(tls, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(KafkaSettingError, match=r"^kafka.ca_file: .*junk.pem holds no usable CA certificate"):
        scram(tls, ca_file=junk).check()
    with pytest.raises(KafkaSettingError, match=r"^kafka.ca_file: .*missing.pem is not a file"):
        scram(tls, ca_file=tmp_path / "missing.pem").check()
    other = make_untrusted_ca(tmp_path / "other.pem")
    with pytest.raises(KafkaSettingError, match=r"^kafka.cert_file: .* is not a usable client certificate"):
        # a certificate with a key that is not its own
        scram(tls, cert_file=other, key_file=cert_paths(tls).ca_key).check()
    with pytest.raises(KafkaSettingError, match="^kafka.username"):
        Connection("a:1", "SASL_PLAINTEXT", "PLAIN", None, SECRET).check()
    with pytest.raises(KafkaSettingError, match="^kafka.sasl_mechanism"):
        Connection("a:1", "SASL_PLAINTEXT", "GSSAPI", "u", SECRET).check()


def test_the_stack_certificates_verify(tls):
    """The broker certificate is signed by the CA and names 127.0.0.1 as an IP address (hostname checks pass)."""
    paths = cert_paths(tls)
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    chain = x509.load_pem_x509_certificates(paths.broker.read_bytes())
    broker = chain[0]
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert oct(paths.broker.stat().st_mode & 0o777) == "0o600" and oct(paths.ca_key.stat().st_mode & 0o777) == "0o600"
    assert b"PRIVATE KEY" in paths.broker.read_bytes() and b"PRIVATE KEY" not in paths.ca.read_bytes()
    again = make_certs(tls, "127.0.0.1")  # kept: a CA that clients trust stays the same
    assert again.ca.read_bytes() == paths.ca.read_bytes()


# -- the CLI ------------------------------------------------------------------------------------------------------

def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "liqwatch", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow  # 12 CLI processes
@pytest.mark.parametrize("args,env,needle", [
    (["--security-protocol", "SASL_SSL"], {}, "--security-protocol: security_protocol SASL_SSL needs sasl_mechanism"),
    (["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "u"], {},
     "kafka.password_env: SASL_SSL needs a password in the environment variable LIQWATCH_KAFKA_PASSWORD"),
    (["--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "u",
      "--sasl-password-env", "MY_PW"], {"LIQWATCH_KAFKA_PASSWORD": SECRET}, "environment variable MY_PW"),
    (["--security-protocol", "SSL", "--ssl-ca", "/nonexistent/ca.pem"], {}, "kafka.ca_file: /nonexistent/ca.pem"),
    (["--sasl-mechanism", "SCRAM-SHA-512"], {}, "--sasl-mechanism: sasl_mechanism needs security_protocol"),
    ([], {"LIQWATCH_KAFKA_SECURITY_PROTOCOL": "KERBEROS"}, "--security-protocol: Input should be"),
])
def test_a_connection_mistake_is_one_line_before_any_connection(tmp_path, args, env, needle):
    events = tmp_path / "ev.jsonl"
    events.write_text("")
    for cmd in (["produce", str(events)], ["dump", "liqwatch.alerts"]):
        p = cli(*cmd, "--bootstrap", "127.0.0.1:1", *args, env=env)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
        assert SECRET not in p.stdout + p.stderr


@pytest.mark.slow
def test_the_config_block_is_read_by_produce_and_dump(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(with_kafka({"bootstrap": "127.0.0.1:1", "security_protocol": "SASL_PLAINTEXT",
                                              "sasl_mechanism": "PLAIN", "username": "u", "password_env": "CFG_PW"})))
    p = cli("dump", "liqwatch.alerts", "--config", str(cfg))
    assert p.returncode == 2 and "environment variable CFG_PW" in p.stderr, p.stderr
    # with the password: the block is used as is, and the closed port is the one line
    p = cli("dump", "liqwatch.alerts", "--config", str(cfg), env={"CFG_PW": SECRET})
    assert p.returncode == 1 and "cannot reach Kafka at 127.0.0.1:1" in p.stderr and SECRET not in p.stderr
