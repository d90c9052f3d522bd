"""Throw-away TLS certificates and SuperNode keys for a secure deployment on one machine, made
with the `cryptography` package (a dependency of flwr):

    ca.crt, ca.key              a certificate authority (RSA 2048, a day)
    server.pem, server.key      the SuperLink's certificate, signed by it, for localhost,
                                127.0.0.1 and ::1
    supernode-<i>, .pub         a SuperNode's key pair (ECDSA P-384, OpenSSH format: what
                                `flower-supernode --auth-supernode-private-key` and
                                `flwr supernode register` take)

For prototypes and tests only: a real federation's certificates come from its own CA and
each SuperNode's key is made on its host, its public half registered by the operator.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# pytest: never collect anything from this module
__test__ = False


@dataclass
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: list[Path]  # private keys; the public key of each is <key>.pub


def _write_key(path: Path, key, fmt) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)


def _subject_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(subject: str, public_key, issuer: str, signing_key, *, ca: bool, hosts=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        names = [_subject_name(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_credentials(directory: str | Path, supernodes: int,
                     hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> Credentials:
    """A CA, the SuperLink's certificate for `hosts` (names or IP addresses) and `supernodes`
    SuperNode key pairs in `directory`."""
    if supernodes < 0:
        raise ValueError(f"supernodes must be >= 0, got {supernodes}")
    if not hosts:
        raise ValueError("the SuperLink's certificate needs at least one host name or address")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _certificate("sltestbed test CA", ca_key.public_key(), "sltestbed test CA", ca_key, ca=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = _certificate(hosts[0], server_key.public_key(), "sltestbed test CA", ca_key, ca=False,
                          hosts=tuple(hosts))
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key, serialization.PrivateFormat.TraditionalOpenSSL)
    (out / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "server.key", server_key, serialization.PrivateFormat.TraditionalOpenSSL)
    keys = []
    for i in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        path = out / f"supernode-{i}"
        _write_key(path, key, serialization.PrivateFormat.OpenSSH)
        path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                           serialization.PublicFormat.OpenSSH))
        keys.append(path)
    return Credentials(out / "ca.crt", out / "server.pem", out / "server.key", keys)


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m harness.credentials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="where to write them (created)")
    parser.add_argument("--supernodes", type=int, default=2, help="SuperNode key pairs to make (default 2)")
    parser.add_argument("--host", action="append", default=None,
                        help="a name or address the SuperLink is reached at (repeat; default localhost, "
                             "127.0.0.1, ::1)")
    args = parser.parse_args(argv)
    if args.supernodes < 0:
        parser.error(f"--supernodes must be >= 0, got {args.supernodes}")
    creds = make_credentials(args.directory, args.supernodes,
                             tuple(args.host) if args.host else ("localhost", "127.0.0.1", "::1"))
    print(f"CA {creds.ca_cert}; SuperLink {creds.server_cert}, {creds.server_key}")
    for key in creds.node_keys:
        print(f"SuperNode {key} (register {key.with_suffix('.pub')})")


if __name__ == "__main__":
    main()
