"""One listing's StandardFields, built deterministically from the seed and its state.

A listing's stable facts (address, structure, agents) come from an RNG seeded
by ``(seed, ListingKey)``; facts that change on a modification (price, status,
remarks) from ``(seed, ListingKey, version)``; media counts from
each media list's own version (see ``ListingState.list_version``). The same inputs always give the same
record, so the emulator never has to store records, only their state.

Value types follow the fixtures: decimals are strings (sometimes with the
stray leading space the fixtures show, ``" -116.3237"``), integers are numbers,
unset fields are ``null``, timestamps are ``Z`` or ``-05:00`` style.
"""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from typing import Any

from devstack.emulator import vocab
from devstack.emulator.clock import format_timestamp
from devstack.emulator.media import item_count

__all__ = [
    "TIMED_LISTS",
    "ListingState",
    "People",
    "build_standard_fields",
    "MASK",
    "MASKED_FIELDS",
]

logger = logging.getLogger(__name__)

MASK = "********"
#: Restricted fields that carry ``"********"`` on masked listings (even the decimal ClosePrice).
MASKED_FIELDS = (
    "PrivateRemarks",
    "OwnerName",
    "ShowingContactPhone",
    "ClosePrice",
    "LockBoxSerialNumber",
)

_BOOLEAN_FIELDS = (
    "AssociationYN",
    "AttachedGarageYN",
    "BasementYN",
    "CarportYN",
    "CoolingYN",
    "CropsIncludedYN",
    "ElectricOnPropertyYN",
    "FireplaceYN",
    "GarageYN",
    "HabitableResidenceYN",
    "HeatingYN",
    "HomeWarrantyYN",
    "HorseYN",
    "InternetAddressDisplayYN",
    "InternetAutomatedValuationDisplayYN",
    "InternetConsumerCommentYN",
    "InternetEntireListingDisplayYN",
    "LandLeaseYN",
    "LeaseConsideredYN",
    "NewConstructionYN",
    "OpenParkingYN",
    "PoolPrivateYN",
    "PropertyAttachedYN",
    "SeniorCommunityYN",
    "SignOnPropertyYN",
    "SpaYN",
    "ViewYN",
    "WaterfrontYN",
    "IDXParticipationYN",
    "VOWEntireListingDisplayYN",
)
# (name, low, high, null share)
_INT_FIELDS = (
    ("GarageSpaces", 0, 4, 0.1),
    ("CarportSpaces", 0, 2, 0.6),
    ("ParkingTotal", 0, 8, 0.2),
    ("Stories", 1, 3, 0.05),
    ("FireplacesTotal", 0, 3, 0.3),
    ("NumberOfBuildings", 1, 2, 0.7),
    ("RoomsTotal", 3, 14, 0.1),
    ("MainLevelBedrooms", 0, 3, 0.2),
    ("BedroomsPossible", 1, 7, 0.5),
    ("TaxYear", 2019, 2024, 0.05),
    ("CumulativeDaysOnMarket", 0, 400, 0.0),
    ("AssociationFeeIncludesCount", 0, 5, 0.6),
    ("EntryLevel", 1, 3, 0.5),
    ("AssociationCount", 0, 2, 0.7),
)
# (name, low, high, decimals, null share)
_DECIMAL_FIELDS = (
    ("TaxAnnualAmount", 300.0, 18000.0, 2, 0.05),
    ("AssociationFee", 0.0, 650.0, 2, 0.5),
    ("AssociationFee2", 0.0, 300.0, 2, 0.85),
    ("TaxAssessedValue", 40000.0, 1500000.0, 1, 0.2),
    ("BuyerAgencyCompensation", 2.0, 3.5, 1, 0.1),
    ("SubAgencyCompensation", 0.0, 3.0, 1, 0.3),
    ("AboveGradeFinishedArea", 600.0, 4000.0, 1, 0.2),
    ("BelowGradeFinishedArea", 0.0, 2000.0, 1, 0.4),
    ("GarageArea", 200.0, 1200.0, 1, 0.4),
    ("FrontageLength", 20.0, 300.0, 1, 0.7),
    ("LotSizeSquareFeet", 2000.0, 200000.0, 1, 0.1),
    ("Elevation", 300.0, 2500.0, 1, 0.5),
    ("GrossIncome", 10000.0, 200000.0, 2, 0.85),
    ("NetOperatingIncome", 5000.0, 150000.0, 2, 0.85),
)
#: Fields whose values are decimals (sent as strings, as the fixtures show).
DECIMAL_FIELDS = frozenset(
    {name for name, *_ in _DECIMAL_FIELDS}
    | {
        "ListPrice",
        "OriginalListPrice",
        "PreviousListPrice",
        "ClosePrice",
        "Latitude",
        "Longitude",
        "BathsTotal",
        "BuildingAreaTotal",
        "LivingArea",
        "LotSizeArea",
        "LotSizeAcres",
    }
)


def field_type(name: str, value: Any) -> str:
    """The ``/v1/standardfields`` Type of a field, from its name and a non-null value."""
    if name in DECIMAL_FIELDS:
        return "Decimal"
    if name.endswith("Timestamp"):
        return "Datetime"
    if name.endswith("Date"):
        return "Date"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    return "Character"


_TEXT_FIELDS = (
    "Directions",
    "Inclusions",
    "Exclusions",
    "Disclosures",
    "ShowingInstructions",
    "AccessCode",
    "AdditionalParcelsDescription",
    "SyndicationRemarks",
)
_DIRECTIONS = (
    "North on Hwy 95, left on {s}.",
    "From I-90 take exit 12, right on {s}.",
    "Follow {s} to the end, sign on property.",
)


#: Lists with their own ``<Name>ChangeTimestamp`` -> the ListingState attribute prefix.
TIMED_LISTS = {
    "Photos": "photos",
    "Videos": "videos",
    "Documents": "documents",
    "OpenHouses": "openhouses",
}


@dataclass
class ListingState:
    """What the emulator stores per listing; the record is derived from it.

    Each list of ``TIMED_LISTS`` has its own version and change instant; the
    others (VirtualTours, Rooms, Units) follow ``version``. ``media_version``
    counts media changes of any list (it keys the record cache).
    """

    key: str
    mod_ms: int
    offset_minutes: int  # 0 renders timestamps with Z, else with this offset
    version: int = 0
    media_version: int = 0
    photos_v: int = 0
    videos_v: int = 0
    documents_v: int = 0
    openhouses_v: int = 0
    photos_ms: int = 0
    videos_ms: int = 0
    documents_ms: int = 0
    openhouses_ms: int = 0
    listed_ms: int = 0
    live: bool = True

    def list_version(self, name: str) -> tuple[int, int]:
        """``(version, anchor instant)`` the list ``name`` (``"Photos"`` …) is built from."""
        prefix = TIMED_LISTS.get(name)
        if prefix is None:
            return self.version, self.listed_ms
        return getattr(self, prefix + "_v"), getattr(self, prefix + "_ms")

    def change_ms(self, name: str, seed: int) -> int | None:
        """The instant ``<name>ChangeTimestamp`` shows: None when the list is empty."""
        version, ms = self.list_version(name)
        return ms if item_count(name, seed, self.key, version) else None

    def count(self, name: str, seed: int) -> int:
        """How many items the list ``name`` has now."""
        return item_count(name, seed, self.key, self.list_version(name)[0])


@dataclass(frozen=True)
class People:
    """The accounts listings point at: a fixed pool of member ids, and the live records.

    Agent and office details are read from the current account records when a
    record is built, as the real API pulls them in at request time.
    """

    members: tuple[str, ...]
    accounts: dict[str, dict[str, Any]]

    def agent(self, index: float) -> tuple[str, str, str, str, str]:
        """``(Id, Name, Email, Phone, OfficeId)`` of the member at ``index`` (0 <= index < 1)."""
        rec = self.accounts[self.members[int(index * len(self.members))]]
        return (
            rec["Id"],
            rec["Name"],
            rec["Emails"][0]["Address"],
            rec["Phones"][0]["Number"],
            rec["OfficeId"],
        )

    def office(self, office_id: str) -> tuple[str, str, str]:
        """``(Name, Phone, CompanyId)`` of an office."""
        rec = self.accounts[office_id]
        return rec["Name"], rec["Phones"][0]["Number"], rec["CompanyId"]


@functools.lru_cache(maxsize=8192)
def _day(day_number: int) -> str:
    """``YYYY-MM-DD`` of a day counted from the epoch."""
    return format_timestamp(day_number * 86_400_000)[:10]


def _dec(value: float, places: int, r) -> str:
    text = f"{value:.{places}f}"
    return " " + text if r() < 0.15 else text


def build_standard_fields(
    seed: int, state: ListingState, people: People, masked: float
) -> dict[str, Any]:
    """The StandardFields dict of one listing (without expansions)."""
    key = state.key
    base = random.Random(seed * 1_000_003 + int(key[:20]))
    r = base.random
    now = random.Random(seed * 7_919 + int(key[:20]) * 31 + state.version)
    rv = now.random
    ts = state.offset_minutes

    city, county, st, zip3, lat, lon, area = vocab.CITIES[int(r() * len(vocab.CITIES))]
    ptype, ptype_name, subtypes = vocab.PROPERTY_TYPES[int(r() ** 1.8 * len(vocab.PROPERTY_TYPES))]
    street = vocab.STREET_NAMES[int(r() * len(vocab.STREET_NAMES))]
    suffix = vocab.STREET_SUFFIXES[int(r() * len(vocab.STREET_SUFFIXES))]
    prefix = vocab.DIRECTIONS[int(r() * 8)] if r() < 0.25 else None
    dsuffix = vocab.DIRECTIONS[int(r() * 8)] if r() < 0.1 else None
    number = str(int(100 + r() * 19900))
    unit = f"Unit {int(1 + r() * 40)}" if r() < 0.12 else None
    postal = f"{zip3}{int(r() * 100):02d}"
    beds = int(1 + r() * 5) if ptype != "C" else None
    full = int(1 + r() * 3) if beds else None
    half = int(r() * 2) if beds and r() < 0.6 else None
    tq = int(r() * 2) if beds and r() < 0.3 else None
    baths = (full or 0) + 0.5 * (half or 0) + 0.75 * (tq or 0)
    area_sqft = round(500 + r() * 4500) if beds else None
    lot_acres = round(0.05 + r() ** 3 * 40, 2)
    year = int(1900 + r() ** 0.5 * 124) if beds else None
    agent = people.agent(r())
    co_agent = people.agent(r()) if r() < 0.2 else None
    office_name, office_phone, company = people.office(agent[4])
    listed_ms = state.listed_ms
    listing_contract = _day(listed_ms // 86_400_000 - int(1 + r() * 5))
    on_market = _day(listed_ms // 86_400_000)
    is_masked = r() < masked
    price0 = round((40_000 + r() ** 2 * 1_600_000) / 100) * 100

    status, mls_status, _w = _pick_status(rv)
    price = round(price0 * (0.9 + rv() * 0.15) / 100) * 100
    closed = status == "Closed"
    buyer = people.agent(rv()) if status in ("Closed", "Pending") else None
    co_buyer = people.agent(rv()) if buyer and rv() < 0.15 else None
    close_price = round(price * (0.95 + rv() * 0.08)) if closed else None
    photos, videos, vtours, docs, ohs = (
        state.count(n, seed)
        for n in ("Photos", "Videos", "VirtualTours", "Documents", "OpenHouses")
    )
    remarks = _remarks(now, ptype_name, city)
    mod_text = format_timestamp(state.mod_ms, ts)
    listed_text = format_timestamp(listed_ms, ts)

    sf: dict[str, Any] = {
        "ListingKey": key,
        "ListingId": f"{int(key[2:4]):02d}-{int(key[8:14]) % 99991}",
        "ListingKeyNumeric": int(key[:14]),
        "MlsId": "20000426143505724628000000",
        "OriginatingSystemName": "flexmls",
        "StandardStatus": status,
        "MlsStatus": mls_status,
        "MlsStatusInformation": None,
        "PropertyType": ptype,
        "PropertyTypeLabel": ptype_name,
        "PropertySubType": subtypes[int(r() * len(subtypes))],
        "ListPrice": f"{price}.0",
        "OriginalListPrice": f"{price0}.0",
        "PreviousListPrice": f"{price0}.0" if price != price0 else None,
        "ClosePrice": f"{close_price}.0" if close_price else None,
        "StreetNumber": number,
        "StreetNumberNumeric": int(number),
        "StreetDirPrefix": prefix,
        "StreetName": street,
        "StreetSuffix": suffix,
        "StreetDirSuffix": dsuffix,
        "StreetAdditionalInfo": None,
        "UnitNumber": unit,
        "UnparsedAddress": " ".join(filter(None, (number, prefix, street, suffix, dsuffix, unit)))
        + f", {city}, {st} {postal}",
        "City": city,
        "StateOrProvince": st,
        "PostalCode": postal,
        "PostalCodePlus4": None,
        "CountyOrParish": county,
        "Country": "US",
        "MLSAreaMajor": county,
        "MLSAreaMinor": area,
        "SubdivisionName": f"{vocab.OFFICE_WORDS[int(r() * len(vocab.OFFICE_WORDS))]} Estates"
        if r() < 0.6
        else None,
        "Latitude": _dec(lat + (r() - 0.5) * 0.2, 4, r),
        "Longitude": (" " if r() < 0.5 else "") + f"{lon + (r() - 0.5) * 0.2:.4f}",
        "BedsTotal": beds,
        "BathsTotal": f"{baths:.1f}" if beds else None,
        "BathroomsTotalInteger": int(baths + 0.5) if beds else None,
        "BathsFull": full,
        "BathsHalf": half,
        "BathsThreeQuarter": tq,
        "BuildingAreaTotal": f"{area_sqft}.0" if area_sqft else None,
        "LivingArea": f"{area_sqft}.0" if area_sqft else None,
        "LotSizeArea": f"{lot_acres}",
        "LotSizeAcres": _dec(lot_acres, 2, r),
        "LotSizeDimensions": f"{int(50 + r() * 150)}x{int(80 + r() * 220)}" if r() < 0.4 else None,
        "YearBuilt": year,
        "YearBuiltEffective": year + int(r() * 20) if year and r() < 0.2 else None,
        "PublicRemarks": remarks,
        "PrivateRemarks": " ".join(vocab.PRIVATE_SENTENCES[int(rv() * 6)] for _ in range(2)),
        "Supplement": None,
        "ListAgentId": agent[0],
        "ListAgentName": agent[1],
        "ListAgentFirstName": agent[1].split(" ")[0],
        "ListAgentLastName": agent[1].split(" ")[-1],
        "ListAgentEmail": agent[2],
        "ListAgentPreferredPhone": agent[3],
        "ListAgentStateLicense": f"SP{int(key[6:12]) % 90000 + 10000}",
        "ListOfficeId": agent[4],
        "ListOfficeName": office_name,
        "ListOfficePhone": office_phone,
        "ListCompanyId": company,
        "CoListAgentId": co_agent[0] if co_agent else None,
        "CoListAgentName": co_agent[1] if co_agent else None,
        "CoListOfficeId": co_agent[4] if co_agent else None,
        "CoListCompanyId": people.office(co_agent[4])[2] if co_agent else None,
        "BuyerAgentId": buyer[0] if buyer else None,
        "BuyerAgentName": buyer[1] if buyer else None,
        "BuyerOfficeId": buyer[4] if buyer else None,
        "BuyerCompanyId": people.office(buyer[4])[2] if buyer else None,
        "CoBuyerAgentId": co_buyer[0] if co_buyer else None,
        "CoBuyerOfficeId": co_buyer[4] if co_buyer else None,
        "CoBuyerCompanyId": people.office(co_buyer[4])[2] if co_buyer else None,
        "OwnerName": f"{vocab.LAST_NAMES[int(r() * len(vocab.LAST_NAMES))]} Family Trust",
        "ShowingContactPhone": agent[3],
        "LockBoxSerialNumber": str(int(r() * 9_000_000) + 1_000_000),
        "ListingContractDate": listing_contract,
        "OnMarketDate": on_market,
        "OriginalEntryTimestamp": listed_text,
        "CloseDate": _day(state.mod_ms // 86_400_000) if closed else None,
        "PurchaseContractDate": _day(state.mod_ms // 86_400_000 - 20) if buyer else None,
        "ExpirationDate": _day(listed_ms // 86_400_000 + 180),
        "ModificationTimestamp": mod_text,
        "StatusChangeTimestamp": mod_text if state.version else listed_text,
        "PriceChangeTimestamp": mod_text if price != price0 else None,
        "PhotosCount": photos,
        "PhotosChangeTimestamp": format_timestamp(state.photos_ms, ts) if photos else None,
        "VideosCount": videos,
        "VideosChangeTimestamp": format_timestamp(state.videos_ms, ts) if videos else None,
        "DocumentsCount": docs,
        "DocumentsChangeTimestamp": format_timestamp(state.documents_ms, ts) if docs else None,
        "DocumentsAvailable": ["Disclosure"] if docs else [],
        "OpenHousesCount": ohs,
        "OpenHousesChangeTimestamp": format_timestamp(state.openhouses_ms, ts) if ohs else None,
        "VirtualToursCount": vtours,
        "VirtualTourURLBranded": f"http://www.youtube.com/watch?v={key[8:19]}" if vtours else None,
        "VirtualTourURLUnbranded": f"https://my.matterport.com/show/?m={key[6:17]}"
        if vtours
        else None,
    }
    palettes = _palettes(seed)
    for palette in palettes:
        sf.update(palette[int(r() * _PALETTE_SIZE)])
    sf["DaysOnMarket"] = max(0, (state.mod_ms - listed_ms) // 86_400_000)
    if is_masked:
        for name in MASKED_FIELDS:
            sf[name] = MASK
    return sf


_PALETTE_SIZE = 256
_PALETTE_CACHE: dict[int, tuple[tuple[dict[str, Any], ...], ...]] = {}


def _palettes(seed: int) -> tuple[tuple[dict[str, Any], ...], ...]:
    """Pre-drawn blocks of the descriptive fields (features, amenities, numbers).

    Each listing picks one block from each of three palettes, which keeps
    building a record cheap while still giving 256**3 combinations per seed.
    """
    cached = _PALETTE_CACHE.get(seed)
    if cached is not None:
        return cached
    rng = random.Random(seed * 49_979_687 + 1)
    r = rng.random
    palettes = []
    for group in range(3):
        blocks = []
        for _ in range(_PALETTE_SIZE):
            block: dict[str, Any] = {}
            if group == 0:
                for name in _BOOLEAN_FIELDS:
                    block[name] = r() < 0.5
                for name, low, high, nulls in _INT_FIELDS:
                    block[name] = None if r() < nulls else int(low + r() * (high - low + 1))
            elif group == 1:
                for name, low, high, places, nulls in _DECIMAL_FIELDS:
                    block[name] = None if r() < nulls else _dec(low + r() * (high - low), places, r)
                for name, pool in vocab.CHOICE_FIELDS.items():
                    block[name] = pool[int(r() * len(pool))] if r() < 0.85 else None
            else:
                for name, pool in vocab.FEATURE_LISTS.items():
                    n = int(r() * 4)
                    block[name] = (
                        sorted({pool[int(r() * len(pool))] for _ in range(n)}) if n else None
                    )
                for name in _TEXT_FIELDS:
                    text = _DIRECTIONS[int(r() * 3)].format(
                        s=vocab.STREET_NAMES[int(r() * 32)].title()
                    )
                    block[name] = text if r() < 0.5 else None
            blocks.append(block)
        palettes.append(tuple(blocks))
    _PALETTE_CACHE[seed] = result = tuple(palettes)
    return result


def _pick_status(rv) -> tuple[str, str, int]:
    total = sum(s[2] for s in vocab.STATUSES)
    x = rv() * total
    for entry in vocab.STATUSES:
        x -= entry[2]
        if x < 0:
            return entry
    return vocab.STATUSES[0]


def _remarks(rng: random.Random, ptype_name: str, city: str) -> str:
    r = rng.random
    sentences = vocab.REMARK_SENTENCES
    opener = vocab.REMARK_OPENERS[int(r() * len(vocab.REMARK_OPENERS))]
    body = " ".join(sentences[int(r() * len(sentences))] for _ in range(2 + int(r() * 3)))
    return f"{opener} {ptype_name.lower()} home in {city}. {body}"
