"""Key pair actions: CreateKeyPair, DescribeKeyPairs, DeleteKeyPair.

Key pairs live in the service's own store, per account (`services.ec2.store`); the
private key is in CreateKeyPair's answer only."""

from typing import Any

from services.ec2.context import Request, matches
from services.ec2.protocol import Ec2Error, timestamp
from services.ec2.store import KeyPair, check_key_pair


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


def render_key_pair(pair: KeyPair) -> dict[str, Any]:
    """A key pair as EC2 describes it."""
    return {"keyPairId": pair.key_pair_id, "keyName": pair.name,
            "keyFingerprint": pair.fingerprint, "keyType": pair.key_type,
            "createTime": timestamp(pair.created_at)}


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
    return {"keySet": [render_key_pair(p) for p in chosen]}


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
