"""Member, office and company accounts, shaped like the fixture ``accounts/all.json``.

Each record has the fixture keys (Id, Name, Office, OfficeId, Mls, MlsId,
Emails, Phones, Websites, Addresses, Images) plus ``UserType`` ("Member",
"Office" or "Company") and ``ModificationTimestamp``. There is one office per
ten members and one company per four offices; listings point at these ids.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from devstack.emulator import vocab
from devstack.emulator.clock import format_timestamp
from devstack.emulator.fields import People
from devstack.emulator.media import make_id

__all__ = [
    "MLS_ID",
    "MLS_NAME",
    "generate_accounts",
    "new_member",
    "touch_account",
    "people_of",
    "unique_id",
]

logger = logging.getLogger(__name__)

MLS_ID = "20000426143505724628000000"
MLS_NAME = "Northern Rockies MLS"
_EPOCH_2000_MS = 946_684_800_000


def unique_id(rng: random.Random, taken: set[str], low_ms: int, high_ms: int) -> str:
    """A fresh 26-digit id whose timestamp digits lie in ``[low_ms, high_ms)``."""
    while True:
        candidate = make_id(low_ms + int(rng.random() * (high_ms - low_ms)), rng)
        if candidate not in taken:
            taken.add(candidate)
            return candidate


def _phone(rng: random.Random) -> str:
    return f"{rng.choice(('208', '509', '701', '602'))}-555-{rng.randrange(10000):04d}"


def _contact(
    rng: random.Random, name: str, domain: str, office: str, photo: bool
) -> dict[str, Any]:
    handle = name.lower().replace(" ", ".").replace("/", "")
    street = f"{rng.randrange(100, 9999)} {rng.choice(vocab.STREET_NAMES).title()} Ave"
    city = rng.choice(vocab.CITIES)
    return {
        "Emails": [
            {
                "Type": "Work",
                "Name": "Work E-mail",
                "Address": f"{handle}@{domain}",
                "Primary": True,
            },
        ]
        + (
            [{"Type": "Mobile", "Name": "Mobile E-mail", "Address": f"{handle}@mobile.{domain}"}]
            if photo
            else []
        ),
        "Phones": [
            {"Type": "Work", "Name": "Work Phone", "Number": _phone(rng), "Primary": True},
            {"Type": "Mobile", "Name": "Mobile Phone", "Number": _phone(rng)},
        ],
        "Websites": [
            {"Type": "Work", "Name": "Website", "Uri": f"http://www.{domain}", "Primary": True}
        ],
        "Addresses": [
            {
                "Type": "Work",
                "Name": "Work Address",
                "Address": f"{street}, {city[0]}, {city[2]} {city[3]}{rng.randrange(100):02d}",
                "Primary": True,
            }
        ],
        "Images": [
            {
                "Type": "Photo" if photo else "Logo",
                "Name": "Photo" if photo else "Logo",
                "Uri": f"http://photos.flexmls.com/az/{handle}.jpg",
            }
        ],
    }


def _record(
    rid: str,
    name: str,
    user_type: str,
    office: str | None,
    office_id: str | None,
    mod_ms: int,
    contact: dict,
) -> dict[str, Any]:
    return {
        "Id": rid,
        "ResourceUri": f"/v1/accounts/{rid}",
        "Name": name,
        "UserType": user_type,
        "Office": office,
        "OfficeId": office_id,
        "Mls": MLS_NAME,
        "MlsId": MLS_ID,
        **contact,
        "ModificationTimestamp": format_timestamp(mod_ms),
    }


def generate_accounts(
    seed: int, members: int, start_ms: int
) -> tuple[dict[str, dict], dict[str, int]]:
    """``({Id: record}, {Id: modification ms})`` for members, their offices and companies."""
    rng = random.Random(seed * 15_485_863 + 11)
    taken: set[str] = set()
    records: dict[str, dict] = {}
    mods: dict[str, int] = {}
    n_offices = max(1, members // 10)
    n_companies = max(1, n_offices // 4)

    def stamp() -> int:
        return start_ms // 1000 * 1000 - int(rng.random() * 86_400_000 * 700) // 1000 * 1000 - 1000

    companies = []
    for i in range(n_companies):
        cid = unique_id(rng, taken, _EPOCH_2000_MS, start_ms - 86_400_000)
        name = f"{vocab.COMPANY_WORDS[i % len(vocab.COMPANY_WORDS)]} {vocab.OFFICE_WORDS[i % len(vocab.OFFICE_WORDS)]}"
        domain = name.lower().replace(" ", "").replace("/", "").replace(".", "") + ".com"
        mods[cid] = stamp()
        records[cid] = _record(
            cid, name, "Company", name, cid, mods[cid], _contact(rng, name, domain, name, False)
        )
        companies.append((cid, name))
    offices = []
    for i in range(n_offices):
        cid, cname = companies[i % n_companies]
        oid = unique_id(rng, taken, _EPOCH_2000_MS, start_ms - 86_400_000)
        name = f"{cname} - {vocab.CITIES[i % len(vocab.CITIES)][0]}"
        domain = f"office{i}.{cname.lower().replace(' ', '').replace('/', '').replace('.', '')}.com"
        mods[oid] = stamp()
        rec = _record(
            oid, name, "Office", name, oid, mods[oid], _contact(rng, name, domain, name, False)
        )
        rec["CompanyId"] = cid
        records[oid] = rec
        offices.append((oid, name, domain))
    for _ in range(members):
        oid, oname, domain = offices[int(rng.random() * n_offices)]
        mid = unique_id(rng, taken, _EPOCH_2000_MS, start_ms - 86_400_000)
        mods[mid] = stamp()
        records[mid] = new_member(rng, mid, oid, oname, domain, mods[mid])
    return records, mods


def new_member(
    rng: random.Random, mid: str, office_id: str, office: str, domain: str, mod_ms: int
) -> dict[str, Any]:
    """A member account record."""
    name = f"{rng.choice(vocab.FIRST_NAMES)} {rng.choice(vocab.LAST_NAMES)}"
    return _record(
        mid, name, "Member", office, office_id, mod_ms, _contact(rng, name, domain, office, True)
    )


def touch_account(rng: random.Random, record: dict[str, Any], mod_ms: int) -> None:
    """A modification: new work phone number, and a new ModificationTimestamp."""
    record["Phones"][0]["Number"] = _phone(rng)
    record["ModificationTimestamp"] = format_timestamp(mod_ms)


def people_of(records: dict[str, dict]) -> People:
    """The listing-side view of the accounts: the members listings pick agents from."""
    members = tuple(sorted(rid for rid, r in records.items() if r["UserType"] == "Member"))
    return People(members=members, accounts=records)
