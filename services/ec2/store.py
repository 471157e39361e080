"""The EC2 service's own store (SQLite): key pairs, tags, and what EC2 knows of an instance
that the platform does not (its reservation, key name, launch index, a terminate under way,
the device names volumes were attached as), and the answers of the changes it served, by
their signed request's fingerprint, so a replay gets the first answer and runs nothing.

Tags are kept per resource (its EC2 id) with the account owning it. A resource may have a
default `Name` (the platform name of a resource made outside EC2); a row with no value hides
it once deleted. Tag changes of one request go in one transaction, the limit checked in it.

Key pairs are generated here with `cryptography`; the private key is answered once and never
kept, only the public key and its fingerprint (EC2's forms: for an RSA key made by EC2, the
SHA-1 of the private key's PKCS#8 DER; for ed25519, the base64 SHA-256 of the public key).
An imported key pair (`services.ec2.public_keys`) is kept the same way, with its own
fingerprint.

VPCs made by CreateVpc are kept here per account (the platform has none), and which VPC each
network made by CreateSubnet belongs to (`services.ec2.vpcs`).
"""

import base64
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from services.ec2.protocol import Ec2Error

KEY_TYPES = ("rsa", "ed25519")
_KEY_NAME = re.compile(r"^[\x20-\x7e]{1,255}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_pairs (account TEXT NOT NULL, name TEXT NOT NULL,
    key_pair_id TEXT NOT NULL UNIQUE, key_type TEXT NOT NULL, fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (account, name));
CREATE TABLE IF NOT EXISTS instances (vm_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL,
    key_name TEXT, launch_index INTEGER NOT NULL DEFAULT 0, client_token TEXT,
    terminating INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS attachments (volume_id TEXT PRIMARY KEY, vm_id TEXT NOT NULL,
    device TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (resource_id TEXT NOT NULL, account TEXT NOT NULL,
    key TEXT NOT NULL, value TEXT, PRIMARY KEY (resource_id, key));
CREATE INDEX IF NOT EXISTS tags_by_account ON tags (account, resource_id);
CREATE TABLE IF NOT EXISTS vpcs (vpc_id TEXT PRIMARY KEY, account TEXT NOT NULL,
    cidr TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subnet_vpcs (network_id TEXT PRIMARY KEY, vpc_id TEXT NOT NULL,
    account TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (fingerprint TEXT PRIMARY KEY, at REAL NOT NULL,
    status INTEGER, request_id TEXT NOT NULL, body BLOB);
CREATE INDEX IF NOT EXISTS answers_by_age ON answers (at);
"""
# A signature is accepted at most 15 minutes either side of its X-Amz-Date (the ACL's window):
# an answer kept an hour outlives every replay of its request.
ANSWER_SECONDS = 3600.0
MAX_TAGS = 50
StoredTags = dict[str, str | None]  # key -> value (None: a default tag deleted)


def effective_tags(defaults: Mapping[str, str], stored: Mapping[str, str | None]) -> dict[
        str, str]:
    """A resource's tags: its defaults overlaid by what was stored (None removes one)."""
    out = dict(defaults)
    for key, value in stored.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class KeyPair:
    """A key pair as kept (no private key)."""

    account: str
    name: str
    key_pair_id: str
    key_type: str
    fingerprint: str
    public_key: str
    created_at: str


@dataclass(frozen=True)
class VpcNote:
    """A VPC made by CreateVpc."""

    vpc_id: str
    account: str
    cidr: str
    created_at: str


@dataclass(frozen=True)
class InstanceNote:
    """What EC2 remembers of an instance."""

    vm_id: UUID
    reservation_id: str
    key_name: str | None
    launch_index: int
    client_token: str | None
    terminating: bool


@dataclass(frozen=True)
class KeptAnswer:
    """The answer a change got (`status` None: the change is still being served)."""

    status: int | None
    request_id: str
    body: bytes


def check_key_name(name: str) -> None:
    """Raise InvalidParameterValue unless the key pair's name is EC2's."""
    if not _KEY_NAME.match(name):
        raise Ec2Error("InvalidParameterValue", "KeyName must be 1 to 255 printable "
                       "ASCII characters")


def check_key_pair(name: str, key_type: str) -> None:
    """Raise InvalidParameterValue unless the name and key type are EC2's."""
    check_key_name(name)
    if key_type not in KEY_TYPES:
        raise Ec2Error("InvalidParameterValue", f"Value ({key_type[:20]}) for parameter "
                       "KeyType is invalid. Expected rsa or ed25519.")


def generate(key_type: str) -> tuple[str, str, str]:
    """A new key: (private key PEM, OpenSSH public key, EC2 fingerprint)."""
    if key_type == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        blob = base64.b64decode(public.split()[1])
        fingerprint = base64.b64encode(hashlib.sha256(blob).digest()).decode()
        return private, public, fingerprint
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = rsa_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode()
    pkcs8 = rsa_key.private_bytes(serialization.Encoding.DER,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    digest = hashlib.sha1(pkcs8, usedforsecurity=False).hexdigest()
    fingerprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    public = rsa_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return private, public, fingerprint


class Ec2Store:
    """Key pairs per account, tags and notes on instances, in one SQLite file (WAL)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ key pairs

    def create_key_pair(self, account: str, name: str,
                        key_type: str = "rsa") -> tuple[KeyPair, str]:
        """A new key pair of the account and its private key (shown this once)."""
        check_key_pair(name, key_type)
        private, public, fingerprint = generate(key_type)
        pair = KeyPair(account=account, name=name, key_pair_id="key-" + uuid4().hex[:17],
                       key_type=key_type, fingerprint=fingerprint, public_key=public,
                       created_at=datetime.now(UTC).isoformat())
        self._insert_key_pair(pair)
        return pair, private

    def _insert_key_pair(self, pair: KeyPair) -> None:
        """Keep a key pair; InvalidKeyPair.Duplicate when its name is taken."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO key_pairs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (pair.account, pair.name, pair.key_pair_id, pair.key_type,
                                  pair.fingerprint, pair.public_key, pair.created_at))
            except sqlite3.IntegrityError:
                raise Ec2Error("InvalidKeyPair.Duplicate",
                               f"The keypair '{pair.name}' already exists.") from None

    def import_key_pair(self, account: str, name: str, key_type: str, public: str,
                        fingerprint: str) -> KeyPair:
        """Keep an imported public key as a key pair of the account."""
        check_key_name(name)
        pair = KeyPair(account=account, name=name, key_pair_id="key-" + uuid4().hex[:17],
                       key_type=key_type, fingerprint=fingerprint, public_key=public,
                       created_at=datetime.now(UTC).isoformat())
        self._insert_key_pair(pair)
        return pair

    def key_pairs(self, account: str | None) -> list[KeyPair]:
        """The account's key pairs (None: every account's), by name."""
        with self._lock:
            if account is None:
                rows = self._db.execute("SELECT * FROM key_pairs ORDER BY name").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM key_pairs WHERE account = ? "
                                        "ORDER BY name", (account,)).fetchall()
        return [KeyPair(*r) for r in rows]

    def delete_key_pair(self, account: str | None, *, name: str | None = None,
                        key_pair_id: str | None = None) -> bool:
        """Delete one key pair by name or id; whether there was one."""
        pairs = [p for p in self.key_pairs(account)
                 if (name is not None and p.name == name)
                 or (key_pair_id is not None and p.key_pair_id == key_pair_id)]
        with self._lock:
            for pair in pairs:
                self._db.execute("DELETE FROM key_pairs WHERE key_pair_id = ?",
                                 (pair.key_pair_id,))
        return bool(pairs)

    # ------------------------------------------------------------------ VPCs

    def create_vpc(self, vpc_id: str, account: str, cidr: str) -> VpcNote:
        """Keep a VPC (the same id again keeps the first)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO vpcs VALUES (?, ?, ?, ?)",
                             (vpc_id, account, cidr, datetime.now(UTC).isoformat()))
        return next(v for v in self.vpcs(None) if v.vpc_id == vpc_id)

    def vpcs(self, account: str | None) -> list[VpcNote]:
        """The account's VPCs (None: every account's), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM vpcs WHERE ? IS NULL OR account = ? "
                                    "ORDER BY created_at, vpc_id", (account, account))
            return [VpcNote(*r) for r in rows.fetchall()]

    def delete_vpc(self, vpc_id: str) -> None:
        """Forget a VPC."""
        with self._lock:
            self._db.execute("DELETE FROM vpcs WHERE vpc_id = ?", (vpc_id,))

    def place_subnet(self, network_id: UUID, vpc_id: str, account: str) -> None:
        """Remember that a network made by CreateSubnet belongs to this VPC."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO subnet_vpcs VALUES (?, ?, ?)",
                             (str(network_id), vpc_id, account))

    def subnet_vpcs(self) -> dict[UUID, tuple[str, str]]:
        """Every network placed in a VPC: network id -> (VPC id, account)."""
        with self._lock:
            rows = self._db.execute("SELECT network_id, vpc_id, account FROM subnet_vpcs")
            return {UUID(r[0]): (r[1], r[2]) for r in rows.fetchall()}

    # ------------------------------------------------------------------ instances

    def note_instance(self, vm_id: UUID, *, reservation_id: str, key_name: str | None,
                      launch_index: int, client_token: str | None) -> None:
        """Remember how an instance was launched (the same again changes nothing)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO instances (vm_id, reservation_id, "
                             "key_name, launch_index, client_token) VALUES (?, ?, ?, ?, ?)",
                             (str(vm_id), reservation_id, key_name, launch_index,
                              client_token))

    def mark_terminating(self, vm_id: UUID) -> None:
        """Remember that the instance is being terminated."""
        with self._lock:
            self._db.execute("INSERT INTO instances (vm_id, reservation_id, terminating) "
                             "VALUES (?, ?, 1) ON CONFLICT (vm_id) DO UPDATE SET "
                             "terminating = 1", (str(vm_id), ""))

    def instances(self, vm_ids: list[UUID]) -> dict[UUID, InstanceNote]:
        """The notes of these instances (those that have one)."""
        if not vm_ids:
            return {}
        marks = ", ".join("?" for _ in vm_ids)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM instances WHERE vm_id IN ({marks})",
                                    tuple(str(v) for v in vm_ids)).fetchall()
        return {UUID(r[0]): InstanceNote(UUID(r[0]), r[1], r[2], r[3], r[4], bool(r[5]))
                for r in rows}

    def note_attachment(self, volume_id: UUID, vm_id: UUID, device: str) -> None:
        """Remember the device name a volume was attached as."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO attachments VALUES (?, ?, ?)",
                             (str(volume_id), str(vm_id), device))

    def attachment_device(self, volume_id: UUID, vm_id: UUID) -> str | None:
        """The device name asked for when the volume was attached to this VM."""
        with self._lock:
            row = self._db.execute("SELECT device FROM attachments WHERE volume_id = ? AND "
                                   "vm_id = ?", (str(volume_id), str(vm_id))).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ answers

    def claim_answer(self, fingerprint: str, request_id: str,
                     now: float | None = None) -> KeptAnswer | None:
        """The answer kept for a signed request (status None while it is being served); or
        None, when it was not seen: then it is claimed for this request, to `keep_answer`."""
        at = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("DELETE FROM answers WHERE at < ?", (at - ANSWER_SECONDS,))
            row = db.execute("SELECT status, request_id, body FROM answers WHERE "
                             "fingerprint = ?", (fingerprint,)).fetchone()
            if row is not None:
                return KeptAnswer(row[0], row[1], bytes(row[2] or b""))
            db.execute("INSERT INTO answers (fingerprint, at, request_id) VALUES (?, ?, ?)",
                       (fingerprint, at, request_id))
        return None

    def keep_answer(self, fingerprint: str, status: int, body: bytes) -> None:
        """Keep the answer of a claimed request, for its replays."""
        with self._lock:
            self._db.execute("UPDATE answers SET status = ?, body = ? WHERE fingerprint = ?",
                             (status, body, fingerprint))

    # ------------------------------------------------------------------ tags

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _stored(self, db: sqlite3.Connection, resource_ids: list[str]) -> dict[str, StoredTags]:
        out: dict[str, StoredTags] = {r: {} for r in resource_ids}
        for start in range(0, len(resource_ids), 500):
            chunk = resource_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for rid, key, value in db.execute(
                    f"SELECT resource_id, key, value FROM tags WHERE resource_id IN ({marks}) "
                    "ORDER BY resource_id, key", tuple(chunk)):
                out[rid][key] = value
        return out

    def tags(self, resource_ids: list[str]) -> dict[str, StoredTags]:
        """The stored tags of these resources (EC2 ids), each {} when it has none."""
        with self._lock:
            return self._stored(self._db, list(dict.fromkeys(resource_ids)))

    def set_tags(self, resources: Mapping[str, tuple[str, Mapping[str, str]]],
                 tags: Mapping[str, str]) -> None:
        """Add or overwrite `tags` on every resource (id -> (account, default tags)), all or
        none: TagLimitExceeded if one would have more than MAX_TAGS."""
        ids = list(resources)
        with self._transaction() as db:
            stored = self._stored(db, ids)
            for rid in ids:
                defaults = resources[rid][1]
                after = effective_tags(defaults, {**stored[rid], **tags})
                if len(after) > MAX_TAGS:
                    raise Ec2Error("TagLimitExceeded", f"The maximum number of tags "
                                   f"({MAX_TAGS}) for resource '{rid}' has been reached.")
            db.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                           [(rid, resources[rid][0], key, value)
                            for rid in ids for key, value in tags.items()])

    def delete_tags(self, resources: Mapping[str, tuple[str, Mapping[str, str]]],
                    tags: Mapping[str, str | None] | None) -> None:
        """Delete tags of every resource (id -> (account, default tags)): the keys of `tags`
        (with a value: only a tag with that value), or all (None); in one transaction."""
        ids = list(resources)
        with self._transaction() as db:
            stored = self._stored(db, ids)
            for rid in ids:
                account, defaults = resources[rid]
                have = effective_tags(defaults, stored[rid])
                doomed = [k for k in have if tags is None or
                          (k in tags and (tags[k] is None or tags[k] == have[k]))]
                for key in doomed:
                    if key in defaults:  # hide the default from now on
                        db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?, NULL)",
                                   (rid, account, key))
                    else:
                        db.execute("DELETE FROM tags WHERE resource_id = ? AND key = ?",
                                   (rid, key))
