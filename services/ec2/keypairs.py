"""Key pair actions: CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPair.

Key pairs live in the service's own store, per account (`services.ec2.store`); the
private key is in CreateKeyPair's answer only. ImportKeyPair keeps a public key the caller
made (`services.ec2.public_keys` checks it); getting a key into a VM is not done here."""

from typing import Any

from services.ec2.context import Request, matches
from services.ec2.protocol import Ec2Error, timestamp
from services.ec2.public_keys import read_public_key
from services.ec2.store import KeyPair, check_key_name, check_key_pair
from services.ec2.tags import tag_new, tag_set, tag_specifications, tags_of


async def create_key_pair(req: Request) -> dict[str, Any]:
    """CreateKeyPair: a new key pair; its private key is answered this once."""
    account = req.owner()
    name = req.params.required("KeyName")
    if (req.params.get("KeyFormat") or "pem") != "pem":
        raise Ec2Error("InvalidParameterValue", "KeyFormat: only pem is supported")
    key_type = req.params.get("KeyType") or "rsa"
    check_key_pair(name, key_type)
    await req.check_dry_run()
    pair, private = req.platform.store.create_key_pair(account, name, key_type)
    return {"keyName": pair.name, "keyFingerprint": pair.fingerprint, "keyMaterial": private,
            "keyPairId": pair.key_pair_id}


async def import_key_pair(req: Request) -> dict[str, Any]:
    """ImportKeyPair: keep the caller's public key as a key pair (no private key)."""
    account = req.owner()
    name = req.params.required("KeyName")
    check_key_name(name)
    key = read_public_key(req.params.required("PublicKeyMaterial"))
    specs = tag_specifications(req.params, ("key-pair",))
    if any(p.name == name for p in req.platform.store.key_pairs(account)):
        raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name[:80]}' already exists.")
    await req.check_dry_run()
    pair = req.platform.store.import_key_pair(account, name, key.key_type, key.openssh,
                                              key.fingerprint)
    tag_new(req, pair.key_pair_id, account, specs.get("key-pair", {}))
    return {"keyFingerprint": pair.fingerprint, "keyName": pair.name,
            "keyPairId": pair.key_pair_id, "tagSet": tag_set(specs.get("key-pair", {}))}


def render_key_pair(pair: KeyPair, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """A key pair as EC2 describes it (with the tags given when it was imported)."""
    return {"keyPairId": pair.key_pair_id, "keyName": pair.name,
            "keyFingerprint": pair.fingerprint, "keyType": pair.key_type,
            "tagSet": tag_set(tags or {}), "createTime": timestamp(pair.created_at)}


_FILTERS = {
    "key-name": lambda p: [p.name],
    "key-pair-id": lambda p: [p.key_pair_id],
    "fingerprint": lambda p: [p.fingerprint],
}


async def describe_key_pairs(req: Request) -> dict[str, Any]:
    """DescribeKeyPairs: the account's key pairs (by KeyName.N / KeyPairId.N / filters)."""
    pairs = req.platform.store.key_pairs(req.account)
    names, ids = req.params.members("KeyName"), req.params.members("KeyPairId")
    for name in names:
        if not any(p.name == name for p in pairs):
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{name[:80]}' does not "
                           "exist")
    for key_id in ids:
        if not any(p.key_pair_id == key_id for p in pairs):
            raise Ec2Error("InvalidKeyPair.NotFound", f"The key pair '{key_id[:80]}' does "
                           "not exist")
    filters = req.params.filters()
    chosen = [p for p in pairs if (not names or p.name in names)
              and (not ids or p.key_pair_id in ids) and matches(filters, _FILTERS, p)]
    tags = tags_of(req, {p.key_pair_id: "" for p in chosen})
    return {"keySet": [render_key_pair(p, tags[p.key_pair_id]) for p in chosen]}


async def delete_key_pair(req: Request) -> dict[str, Any]:
    """DeleteKeyPair: delete a key pair by name or id (one that is not there: still true)."""
    name, key_id = req.params.get("KeyName"), req.params.get("KeyPairId")
    if not name and not key_id:
        raise Ec2Error("MissingParameter", "The request must contain the parameter KeyName "
                       "or KeyPairId")
    if req.account is None:
        raise Ec2Error("UnauthorizedOperation", "a root admin has no key pairs: sign with a "
                       "key of an account's user")
    await req.check_dry_run()
    req.platform.store.delete_key_pair(req.account, name=name, key_pair_id=key_id)
    return {"return": True}
