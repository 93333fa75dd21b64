"""Listing subresources and expansions: photos, videos, virtual tours, documents,
open houses, rooms, units, and the custom-field blocks.

Shapes follow the fixtures (``listings/with_photos.json``, ``photos/index.json``,
``videos_index.json``, ``virtual_tours_index.json``, ``document_index.json``,
``open_houses.json``). Rooms and units use the labelled ``Fields`` list of the
rooms documentation. Each list is derived from ``(seed, ListingKey, its
version, its anchor instant)`` alone, so lists change independently: Photos,
Videos, Documents and OpenHouses each with their own version and
``*ChangeTimestamp``; VirtualTours, Rooms and Units with the listing's version
(they have no change timestamp, so they change only when ModificationTimestamp does).

Custom fields (shape UNVERIFIED, our choice)::

    "CustomFields":            [{"Main": [{"<Group>": [{"<Label>": value}, ...]}, ...]}]
    "CustomFieldsRaw":         [{"Main": [{"<Group>": [{"<RAW_ID>": raw value}, ...]}, ...]}]
    "CustomFieldsExpandedRaw": [{"Main": [{"<Group>": [{"<Label>": {"Value": v, "Raw": raw}}]}]}]
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import Any

from devstack.emulator import vocab

__all__ = [
    "EXPANSIONS",
    "CUSTOM_EXPANSIONS",
    "SUBRESOURCES",
    "make_id",
    "item_count",
    "build_expansion",
    "build_custom",
]

logger = logging.getLogger(__name__)

#: _expand name -> subresource path; nested inside StandardFields.
EXPANSIONS = {
    "Photos": "photos",
    "Videos": "videos",
    "VirtualTours": "virtualtours",
    "OpenHouses": "openhouses",
    "Documents": "documents",
    "Rooms": "rooms",
    "Units": "units",
}
#: _expand names placed next to StandardFields.
CUSTOM_EXPANSIONS = ("CustomFields", "CustomFieldsRaw", "CustomFieldsExpandedRaw")
SUBRESOURCES = {path: name for name, path in EXPANSIONS.items()}

_VIDEO_HTML = (
    "<object width='640' height='385'><param name='movie' value='http://www.youtube.com/v/{v}"
    "?fs=1&amp;hl=en_US'></param><param name='allowFullScreen' value='true'></param>"
    "<embed src='http://www.youtube.com/v/{v}?fs=1&amp;hl=en_US' type='application/x-shockwave-flash'"
    " allowfullscreen='true' width='640' height='385'></embed></object>"
)
# (group, label, raw id, values)
_CUSTOM = (
    ("Property Information", "Water Heater", "LM_Char10_1", ("Gas", "Electric", "Tankless")),
    ("Property Information", "Road Maintenance", "LM_Char10_2", ("Public", "Private", "HOA")),
    ("Property Information", "Approx Finished SqFt", "LM_Int4_1", None),
    ("Property Information", "Irrigation", "LM_Char10_3", ("Yes", "No", "Shared")),
    (
        "Utilities",
        "Electric Company",
        "LM_Char25_1",
        ("Avista", "Kootenai Electric", "Northern Lights"),
    ),
    ("Utilities", "Internet Provider", "LM_Char25_2", ("Ziply", "Spectrum", "Starlink", "None")),
    ("Listing Details", "Commission Type", "LO_Char5_1", ("%", "$")),
    ("Listing Details", "Variable Rate Commission", "LO_Char5_2", ("Y", "N")),
    ("Listing Details", "Dual Agency", "LO_Char5_3", ("Allowed", "Not Allowed")),
    ("Tax Information", "Parcel Number", "LM_Char25_3", None),
    ("Tax Information", "Tax Exemptions", "LM_Char25_4", ("None", "Homeowner", "Senior")),
)


def make_id(ms: int, rng: random.Random) -> str:
    """A 26-digit Spark-style id: ``YYYYMMDDhhmmss`` + 6 random digits + ``000000``."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{moment:%Y%m%d%H%M%S}{rng.randrange(1_000_000):06d}000000"


def _rng(seed: int, key: str, version: int, salt: int) -> random.Random:
    return random.Random(((seed * 1_000_033 + int(key[:20])) * 131 + version) * 1009 + salt)


def item_count(name: str, seed: int, key: str, version: int) -> int:
    """How many items the list ``name`` (``"Photos"`` …) of a listing has at ``version``."""
    index = tuple(EXPANSIONS).index(name)
    r = _rng(seed, key, version, 100 + index).random
    return {
        "Photos": lambda: int(r() * 41) if r() < 0.95 else 0,
        "Videos": lambda: int(r() * 3) if r() < 0.2 else 0,
        "VirtualTours": lambda: int(1 + r() * 2) if r() < 0.3 else 0,
        "Documents": lambda: int(r() * 5),
        "OpenHouses": lambda: int(r() * 4) if r() < 0.4 else 0,
        "Rooms": lambda: int(2 + r() * 8),
        "Units": lambda: int(2 + r() * 3) if r() < 0.1 else 0,
    }[name]()


def build_expansion(
    name: str, seed: int, key: str, version: int, anchor_ms: int
) -> list[dict[str, Any]]:
    """The items of one expansion (``"Photos"``, ``"Rooms"``, ...) of a listing at ``version``."""
    index = tuple(EXPANSIONS).index(name)
    count = item_count(name, seed, key, version)
    rng = _rng(seed, key, version, index + 1)
    path = EXPANSIONS[name]
    items = []
    for i in range(count):
        item_id = make_id(anchor_ms + i * 61_000 + rng.randrange(60_000), rng)
        uri = f"/v1/listings/{key}/{path}/{item_id}"
        items.append(_ITEM_BUILDERS[name](rng, item_id, uri, i))
    return items


def _photo(rng: random.Random, pid: str, uri: str, i: int) -> dict[str, Any]:
    base = "http://photos.flexmls.com/cda/"
    resize = "http://cdn.resize.flexmls.com/cda/"
    return {
        "Id": pid,
        "ResourceUri": uri,
        "Name": vocab.PHOTO_NAMES[int(rng.random() * len(vocab.PHOTO_NAMES))],
        "Caption": "" if rng.random() < 0.6 else "Photo taken in spring",
        "Primary": i == 0,
        "UriThumb": f"{base}{pid}-t.jpg",
        "Uri300": f"{base}{pid}.jpg",
        "Uri640": f"{resize}640x480/true/{pid}-o.jpg",
        "Uri800": f"{resize}800x600/true/{pid}-o.jpg",
        "Uri1024": f"{resize}1024x768/true/{pid}-o.jpg",
        "Uri1280": f"{resize}1280x1024/true/{pid}-o.jpg",
        "Uri1600": f"{resize}1600x1200/true/{pid}-o.jpg",
        "Uri2048": f"{resize}2048x1600/true/{pid}-o.jpg",
        "UriLarge": f"{base}{pid}-o.jpg",
    }


def _video(rng: random.Random, vid: str, uri: str, i: int) -> dict[str, Any]:
    return {
        "Id": vid,
        "ResourceUri": uri,
        "Name": "Property tour" if i == 0 else f"Neighborhood video {i}",
        "Caption": "",
        "ObjectHtml": _VIDEO_HTML.format(v=vid[8:19]),
    }


def _vtour(rng: random.Random, tid: str, uri: str, i: int) -> dict[str, Any]:
    branded = i == 0
    return {
        "Id": tid,
        "ResourceUri": uri,
        "Name": "3D walkthrough" if branded else "Unbranded tour",
        "Uri": f"https://my.matterport.com/show/?m={tid[6:17]}",
        "Type": "branded" if branded else "unbranded",
    }


def _document(rng: random.Random, did: str, uri: str, i: int) -> dict[str, Any]:
    return {
        "Id": did,
        "ResourceUri": uri,
        "Name": vocab.DOCUMENT_NAMES[i % len(vocab.DOCUMENT_NAMES)],
        "Uri": f"http://images.fbsdata.com/documents/cda/{did}.pdf",
    }


def _openhouse(rng: random.Random, oid: str, uri: str, i: int) -> dict[str, Any]:
    start = 9 + int(rng.random() * 6)
    return {
        "Id": oid,
        "ResourceUri": uri,
        "Date": f"{oid[4:6]}/{oid[6:8]}/{oid[0:4]}",
        "StartTime": f"{(start - 1) % 12 + 1}:00 {'am' if start < 12 else 'pm'}",
        "EndTime": f"{(start + 1) % 12 + 1}:00 {'am' if start + 2 < 12 else 'pm'}",
    }


def _room(rng: random.Random, rid: str, uri: str, i: int) -> dict[str, Any]:
    r = rng.random
    return {
        "Id": rid,
        "ResourceUri": uri,
        "Fields": [
            {"Room Name": vocab.ROOM_NAMES[int(r() * len(vocab.ROOM_NAMES))]},
            {"Room Level": str(1 + int(r() * 2))},
            {"Room Dimensions": f"{int(9 + r() * 10)}x{int(9 + r() * 12)}"},
            {"Room Remarks": None if r() < 0.7 else "Walk-in closet"},
        ],
    }


def _unit(rng: random.Random, uid: str, uri: str, i: int) -> dict[str, Any]:
    r = rng.random
    return {
        "Id": uid,
        "ResourceUri": uri,
        "Fields": [
            {"Unit Number": str(i + 1)},
            {"Beds": 1 + int(r() * 3)},
            {"Baths": f"{1 + int(r() * 2)}.0"},
            {"Rent": f"{int(700 + r() * 1300)}.00"},
            {"Sq Ft": str(int(500 + r() * 900))},
            {"Furnished": r() < 0.2},
        ],
    }


_ITEM_BUILDERS = {
    "Photos": _photo,
    "Videos": _video,
    "VirtualTours": _vtour,
    "Documents": _document,
    "OpenHouses": _openhouse,
    "Rooms": _room,
    "Units": _unit,
}


def build_custom(name: str, seed: int, key: str, version: int) -> list[dict[str, Any]]:
    """One of the custom-field blocks (see the module docstring for the shapes)."""
    rng = random.Random(seed * 104_729 + int(key[:20]) * 7 + version)
    groups: dict[str, list[dict[str, Any]]] = {}
    for group, label, raw_id, values in _CUSTOM:
        if values is None:
            value: Any = (
                int(500 + rng.random() * 4000) if raw_id.startswith("LM_Int") else key[4:16]
            )
        else:
            value = values[int(rng.random() * len(values))]
        raw = value if not isinstance(value, str) else value.upper()
        if name == "CustomFields":
            entry = {label: value}
        elif name == "CustomFieldsRaw":
            entry = {raw_id: raw}
        else:
            entry = {label: {"Value": value, "Raw": raw}}
        groups.setdefault(group, []).append(entry)
    return [{"Main": [{group: entries} for group, entries in groups.items()]}]
