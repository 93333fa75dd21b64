"""The conversion of API records to Avro records and back: typed fields, losslessness."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest

from schemas import (
    ACCOUNT_SCHEMA,
    LISTING_SCHEMA,
    PURGE_SCHEMA,
    InvalidRecord,
    json_dumps,
    json_loads,
    listing_from_record,
    listing_text,
    listing_to_record,
)

FIXTURES = Path(__file__).parent / "fixtures"
LISTING_FILES = sorted(
    p.name for p in (FIXTURES / "listings").glob("*.json") if p.name != "open_houses.json"
)
ACCOUNT_FILES = sorted(p.name for p in (FIXTURES / "accounts").glob("*.json"))


@pytest.fixture
def lossless(avro_round_trip):
    """Convert, check through fastavro, rebuild; return the record read back."""

    def check(listing, source):
        original = copy.deepcopy(listing)
        record = listing_to_record(listing, source)
        assert listing == original, "conversion must not change its input"
        assert listing_from_record(record) == original
        read_back = avro_round_trip("listing", record)
        assert listing_from_record(read_back) == original
        return read_back

    return check


@pytest.mark.parametrize("name", LISTING_FILES)
def test_every_fixture_listing_survives_the_round_trip(name, source, lossless, api_results):
    listings = api_results("listings", name)
    assert listings
    for listing in listings:
        record = lossless(listing, source)
        assert record["ListingKey"] == listing["StandardFields"]["ListingKey"]
        assert record["source"] == source.as_record()


def test_typed_fields_of_a_fixture_listing(source, api_results, avro_round_trip):
    (listing,) = api_results("listings", "with_photos.json")
    record = avro_round_trip("listing", listing_to_record(listing, source))
    assert record["Longitude"] == -116.3237  # sent as " -116.3237"
    assert record["Latitude"] == 48.7001
    assert record["ListPrice"] == 50000.0
    assert record["BuildingAreaTotal"] == 924.0
    assert record["BathsTotal"] == 1.0
    assert record["BedsTotal"] == 3 and record["YearBuilt"] == 1977
    assert record["BathsFull"] is None and record["BathsHalf"] is None
    assert record["City"] == "Bonners Ferry" and record["PostalCode"] == "83805"
    assert record["ListOfficeName"] == "Century 21 On The Lake"
    assert record["ModificationTimestamp"] == datetime(2010, 11, 22, 20, 47, 21, tzinfo=UTC)
    assert record["masked_fields"] == [] and record["unparsed_fields"] == []
    # the JSON keeps the API's text, stray space included; the photos live in the typed array
    standard = json.loads(record["standard_fields_json"])
    assert standard["Longitude"] == " -116.3237" and standard["ListPrice"] == "50000.0"
    assert "Photos" not in standard
    photos = record["Photos"]
    assert [p["Name"] for p in photos] == ["House", "kitchen", "kitchen 2", "living", "bath"]
    assert [p["Primary"] for p in photos] == [True, False, False, False, False]
    assert photos[0]["Uri640"].endswith("20060725225010201442000000-o.jpg")
    assert all(p["extra_json"] is None for p in photos)
    assert record["Videos"] is None and record["extra_json"] is None


def test_fixture_expansions_are_typed(source, api_results):
    (videos,) = api_results("listings", "with_videos.json")
    (tour,) = api_results("listings", "with_vtour.json")
    (documents,) = api_results("listings", "with_documents.json")
    assert [v["ObjectHtml"][:7] for v in listing_to_record(videos, source)["Videos"]] == [
        "<object"
    ] * 2
    (vt,) = listing_to_record(tour, source)["VirtualTours"]
    assert vt["Type"] == "branded" and vt["Uri"].startswith("http://www.youtube.com/")
    docs = listing_to_record(documents, source)["Documents"]
    assert [d["Name"] for d in docs] == ["Disclosure", "Plat Map"]


def test_other_top_level_blocks_are_kept(source, lossless, api_results):
    (listing,) = api_results("listings", "with_permissions.json")
    record = listing_to_record(listing, source)
    assert json.loads(record["extra_json"]) == {"Permissions": listing["Permissions"]}
    extra = {"Supplement": "text", "Brand New": [1, {"x": None}], "Id": 12345}
    listing = {k: v for k, v in listing.items() if k != "Id"} | extra
    record = lossless(listing, source)
    assert record["Id"] is None  # not text: kept verbatim in extra_json
    assert json.loads(record["extra_json"])["Id"] == 12345


def test_masked_values_stay_text_and_are_listed(make_listing, source, lossless):
    listing = make_listing(ClosePrice="********", PrivateRemarks="********", City="********")
    record = lossless(listing, source)
    assert record["ClosePrice"] is None and record["City"] is None
    assert sorted(record["masked_fields"]) == ["City", "ClosePrice", "PrivateRemarks"]
    assert record["unparsed_fields"] == []
    standard = json.loads(record["standard_fields_json"])
    assert standard["ClosePrice"] == "********" and standard["City"] == "********"


def test_unparsable_values_become_null_and_are_listed(make_listing, source, lossless):
    listing = make_listing(
        ListPrice="call agent",
        BedsTotal="3.5",
        YearBuilt=True,
        Latitude="NaN",
        PhotosChangeTimestamp="yesterday",
        ListingContractDate="13/45/2020",
        City={"nested": 1},
    )
    record = lossless(listing, source)
    for name in ("ListPrice", "BedsTotal", "YearBuilt", "Latitude", "PhotosChangeTimestamp"):
        assert record[name] is None, name
    assert sorted(record["unparsed_fields"]) == sorted(
        [
            "ListPrice",
            "BedsTotal",
            "YearBuilt",
            "Latitude",
            "PhotosChangeTimestamp",
            "ListingContractDate",
            "City",
        ]
    )
    assert record["masked_fields"] == []
    assert json.loads(record["standard_fields_json"])["ListPrice"] == "call agent"


def test_nulls_are_null_not_unparsed(make_listing, source, lossless):
    listing = make_listing(ListPrice=None, City=None, ModificationTimestamp="2024-05-01T11:58:00Z")
    record = lossless(listing, source)
    assert record["ListPrice"] is None and record["City"] is None
    assert record["unparsed_fields"] == []
    assert json.loads(record["standard_fields_json"])["ListPrice"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2010-11-22T20:47:21Z", datetime(2010, 11, 22, 20, 47, 21, tzinfo=UTC)),
        ("2014-06-27T10:01:06-05:00", datetime(2014, 6, 27, 15, 1, 6, tzinfo=UTC)),
        ("2014-06-27T10:01:06+0200", datetime(2014, 6, 27, 8, 1, 6, tzinfo=UTC)),
        ("2014-06-27T10:01:06.123456Z", datetime(2014, 6, 27, 10, 1, 6, 123456, tzinfo=UTC)),
        ("2014-06-27T10:01:06.5-05:00", datetime(2014, 6, 27, 15, 1, 6, 500000, tzinfo=UTC)),
        ("2014-06-27T10:01:06", datetime(2014, 6, 27, 10, 1, 6, tzinfo=UTC)),
    ],
)
def test_timestamps_are_parsed_to_utc(make_listing, source, text, expected, lossless):
    listing = make_listing(ModificationTimestamp=text, PhotosChangeTimestamp=text)
    record = lossless(listing, source)
    assert record["ModificationTimestamp"] == expected
    assert record["PhotosChangeTimestamp"] == expected
    assert record["ModificationTimestamp"].utcoffset().total_seconds() == 0
    assert json.loads(record["standard_fields_json"])["ModificationTimestamp"] == text


def test_numbers_and_dates_from_their_various_forms(make_listing, source, lossless):
    listing = make_listing(
        ListPrice=425000,
        OriginalListPrice=" 450000.50 ",
        BathsFull="2",
        BathsHalf=1.0,
        StreetNumber=7298,
        ListingContractDate="2024-04-02",
        CloseDate="04/30/2024",
        OnMarketDate="2024-04-03T08:00:00Z",
    )
    record = lossless(listing, source)
    assert record["ListPrice"] == 425000.0 and record["OriginalListPrice"] == 450000.5
    assert record["BathsFull"] == 2 and record["BathsHalf"] == 1
    assert record["StreetNumber"] == "7298"
    assert record["ListingContractDate"] == date(2024, 4, 2)
    assert record["CloseDate"] == date(2024, 4, 30)
    assert record["OnMarketDate"] == date(2024, 4, 3)
    assert record["ListAgentId"] == "20000426173054342350000000"


def test_custom_fields_travel_verbatim(make_listing, source, lossless):
    custom = [{"Main": [{"Zoning": "R1"}, {"Acreage": " 2.50"}, {"Flag": None}]}]
    listing = make_listing(
        top={
            "CustomFields": custom,
            "CustomFieldsRaw": {"Main": {"Zoning": "R1", "Big": 123456789012345678901234567890}},
            "CustomFieldsExpandedRaw": None,
        }
    )
    record = lossless(listing, source)
    assert json.loads(record["custom_fields_json"]) == custom
    assert record["custom_fields_expanded_raw_json"] == "null"  # present, null: not absent
    assert record["extra_json"] is None
    plain = listing_to_record(make_listing(), source)
    assert plain["custom_fields_json"] is None and "CustomFields" not in listing_from_record(plain)


def test_open_houses_rooms_units(make_listing, source, lossless, api_results):
    open_houses = api_results("listings", "open_houses.json")
    rooms = [
        {
            "Id": "r1",
            "ResourceUri": "/v1/listings/x/rooms/r1",
            "Fields": [{"Room Name": "Bedroom"}, {"Room Level": "1"}, {"Room Size": None}],
        },
        {"Id": "r2", "Fields": [{"Room Name": "Den", "Room Level": "2"}]},  # two keys in one entry
        {"Id": "r3", "Fields": [{"Room Size": 120}], "Dimensions": "10x12"},  # a number value
    ]
    units = [{"Id": "u1", "Fields": [{"Unit Number": "A"}, {"Rent": "1200.00"}]}, {"Id": "u2"}]
    listing = make_listing(OpenHouses=open_houses, Rooms=rooms, Units=units)
    record = lossless(listing, source)
    assert [o["StartTime"] for o in record["OpenHouses"]] == ["9:00 am", "09:00-07:00"]
    assert record["OpenHouses"][0]["Date"] == "10/01/2010"
    r1, r2, r3 = record["Rooms"]
    assert r1["Fields"] == [
        {"name": "Room Name", "value": "Bedroom"},
        {"name": "Room Level", "value": "1"},
        {"name": "Room Size", "value": None},
    ]
    assert r2["Fields"] is None and json.loads(r2["extra_json"]) == {"Fields": rooms[1]["Fields"]}
    assert r3["Fields"] is None and json.loads(r3["extra_json"])["Dimensions"] == "10x12"
    assert record["Units"][0]["Fields"][1] == {"name": "Rent", "value": "1200.00"}
    assert record["Units"][1]["Fields"] is None and record["Units"][1]["extra_json"] is None


def test_odd_expansion_shapes_stay_verbatim(make_listing, source, lossless):
    photos = [
        {"Id": "p1", "Primary": "true", "Caption": None, "Uri1600": "http://x/1600.jpg", "Name": 5},
        {"Id": "p2", "Primary": False},
    ]
    listing = make_listing(Photos=photos, Videos=None, Documents="n/a", VirtualTours=[1, 2])
    record = lossless(listing, source)
    p1, p2 = record["Photos"]
    assert p1["Id"] == "p1" and p1["Primary"] is None and p1["Name"] is None
    assert json.loads(p1["extra_json"]) == {
        "Primary": "true",
        "Caption": None,
        "Uri1600": "http://x/1600.jpg",
        "Name": 5,
    }
    assert p2["Primary"] is False and p2["extra_json"] is None
    for name in ("Videos", "Documents", "VirtualTours"):
        assert record[name] is None
    standard = json.loads(record["standard_fields_json"])
    assert standard["Videos"] is None and standard["Documents"] == "n/a"
    assert standard["VirtualTours"] == [1, 2] and "Photos" not in standard
    assert lossless(make_listing(Photos=[]), source)["Photos"] == []


def test_text_edge_cases_survive(make_listing, source, lossless):
    listing = make_listing(
        PublicRemarks="Café — “quoted” \u2028 line\nnext \\ back \x00 nul 🏡",
        HugeNumber=2**70,
        Negative=-0.0,
        Tiny=1e-300,
        Nested={"a": [None, True, {"b": "********"}]},
        Empty="",
    )
    record = lossless(listing, source)
    assert record["PublicRemarks"].endswith("🏡")
    assert record["masked_fields"] == []  # a nested mask is not a StandardFields mask


def test_key_falls_back_to_the_top_level_id(make_listing, source, lossless):
    listing = make_listing(drop_ListingKey=None)
    record = lossless(listing, source)
    assert record["ListingKey"] == listing["Id"]


@pytest.mark.parametrize(
    ("listing", "message"),
    [
        ({"Id": "k1", "StandardFields": {"ListingKey": "k1"}}, "ModificationTimestamp"),
        (
            {"Id": "k1", "StandardFields": {"ModificationTimestamp": "garbage"}},
            "ModificationTimestamp",
        ),
        (
            {"Id": "k1", "StandardFields": {"ModificationTimestamp": "********"}},
            "ModificationTimestamp",
        ),
        ({"StandardFields": {"ModificationTimestamp": "2024-01-01T00:00:00Z"}}, "no ListingKey"),
        ({"Id": "k1"}, "no StandardFields"),
        ({"Id": "k1", "StandardFields": ["not", "an", "object"]}, "no StandardFields"),
        (["not a listing"], "JSON object"),
    ],
)
def test_invalid_listings_raise_invalid_record(source, listing, message):
    with pytest.raises(InvalidRecord, match=message) as caught:
        listing_to_record(listing, source)
    assert isinstance(caught.value, ValueError)
    assert caught.value.resource == "listings"


def _big_listing(number: int) -> dict:
    """A listing shaped like the emulator's: ~220 StandardFields of every kind, photos."""
    key = f"2024050112000000000000{number:04d}"
    standard = {
        "ListingKey": key,
        "ModificationTimestamp": "2024-05-01T11:58:00.25-05:00",
        "ListPrice": " 425000.0",
        "Latitude": "47.6101",
        "Longitude": " -117.4012",
        "BedsTotal": 4,
        "BathsTotal": "2.5",
        "ClosePrice": "********",
        "PublicRemarks": "Light-filled home near the park. " * 20,
        "PhotosChangeTimestamp": "2024-04-30T08:00:00Z",
        "ListingContractDate": "2024-04-02",
    }
    for i in range(60):
        standard[f"Text{i}"] = f"value {i}" if i % 5 else None
        standard[f"Decimal{i}"] = f"{i * 101.5:.2f}"
        standard[f"Flag{i}YN"] = bool(i % 2)
    for i in range(40):
        standard[f"Count{i}"] = i
    standard["Photos"] = [
        {
            "Id": f"p{i}",
            "ResourceUri": f"/v1/listings/{key}/photos/p{i}",
            "Name": f"Photo {i}",
            "Caption": "",
            "Primary": i == 0,
            "UriThumb": f"http://x/{i}-t.jpg",
            "Uri300": f"http://x/{i}.jpg",
            "Uri640": f"http://x/640/{i}.jpg",
            "Uri800": f"http://x/800/{i}.jpg",
            "Uri1024": f"http://x/1024/{i}.jpg",
            "Uri1280": f"http://x/1280/{i}.jpg",
            "UriLarge": f"http://x/{i}-o.jpg",
        }
        for i in range(10)
    ]
    return {"ResourceUri": f"/v1/listings/{key}", "Id": key, "StandardFields": standard}


def test_a_large_listing_converts_well_under_a_millisecond(source, lossless):
    listings = [orjson.loads(orjson.dumps(_big_listing(i))) for i in range(300)]
    assert len(listings[0]["StandardFields"]) > 200
    lossless(listings[0], source)
    started = time.perf_counter()
    for listing in listings:
        listing_to_record(listing, source)
    per_listing = (time.perf_counter() - started) / len(listings)
    assert per_listing < 0.001, f"{per_listing * 1e6:.0f} µs per listing"


def _records(node, found):
    """Every named record type in a schema, depth first."""
    if isinstance(node, list):
        for branch in node:
            _records(branch, found)
    elif isinstance(node, dict):
        if node.get("type") == "record":
            found.append(node)
            for field in node["fields"]:
                _records(field["type"], found)
        elif node.get("type") == "array":
            _records(node["items"], found)
    return found


@pytest.mark.parametrize("text", [LISTING_SCHEMA, ACCOUNT_SCHEMA, PURGE_SCHEMA])
def test_schemas_are_documented_field_by_field(text):
    for record in _records(json.loads(text), []):
        assert record["namespace"] == "com.sparkrelay.v1"
        assert record.get("doc"), record["name"]
        for field in record["fields"]:
            assert field.get("doc"), f"{record['name']}.{field['name']} has no doc"
            if isinstance(field["type"], list):  # optional fields can be added and dropped
                assert field["type"][0] == "null" and field["default"] is None, field["name"]


def test_listing_schema_types_what_downstream_queries_use():
    fields = {f["name"]: f["type"] for f in json.loads(LISTING_SCHEMA)["fields"]}

    def branch(name):
        kind = fields[name]
        return kind[1] if isinstance(kind, list) else kind

    timestamp = {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["ListingKey"] == "string" and fields["ModificationTimestamp"] == timestamp
    for name in (
        "ListingId StandardStatus MlsStatus PropertyType UnparsedAddress StreetNumber StreetName "
        "City StateOrProvince PostalCode CountyOrParish PublicRemarks ListAgentName ListOfficeName "
        "ListAgentId ListOfficeId ListCompanyId CoListAgentId CoListOfficeId CoListCompanyId "
        "BuyerAgentId BuyerOfficeId BuyerCompanyId CoBuyerAgentId CoBuyerOfficeId CoBuyerCompanyId"
    ).split():
        assert branch(name) == "string", name
    for name in (
        "ListPrice OriginalListPrice ClosePrice Latitude Longitude BathsTotal "
        "BuildingAreaTotal LivingArea LotSizeArea"
    ).split():
        assert branch(name) == "double", name
    for name in "BedsTotal BathsFull BathsHalf YearBuilt PhotosCount".split():
        assert branch(name) == "int", name
    for name in (
        "PhotosChangeTimestamp VideosChangeTimestamp DocumentsChangeTimestamp "
        "OpenHousesChangeTimestamp VirtualToursChangeTimestamp"
    ).split():
        assert branch(name) == timestamp, name
    for name in ("ListingContractDate", "CloseDate"):
        assert branch(name) == {"type": "int", "logicalType": "date"}, name
    for name in "Photos Videos VirtualTours OpenHouses Documents Rooms Units".split():
        assert branch(name)["type"] == "array", name
    source = {f["name"] for f in fields["source"]["fields"]}
    assert source == {
        "resource",
        "procedure",
        "run_id",
        "window_from",
        "window_to",
        "fetched_at",
        "feed",
    }


@pytest.mark.parametrize("name", LISTING_FILES)
def test_the_listing_text_is_the_sorted_json_of_the_listing(name, api_results, source):
    for listing in api_results("listings", name):
        expected = json_dumps(listing, sort_keys=True)
        assert listing_text(listing, listing_to_record(listing, source)) == expected
        shuffled = dict(reversed(listing.items()))  # the API's key order does not count
        shuffled["StandardFields"] = dict(reversed(listing["StandardFields"].items()))
        assert listing_text(shuffled, listing_to_record(shuffled, source)) == expected


def test_the_listing_text_keeps_every_digit(make_listing, source):
    text = json_dumps(make_listing(top={"Zeta": 1}, BigId=1))
    text = text.replace(
        '"BigId":1',
        '"BigId":123456789012345678901234567890,"Dec":0.1000000000000000055511151231257827',
    )
    listing = json_loads(text)
    expected = json_dumps(listing, sort_keys=True)
    assert (
        "123456789012345678901234567890" in expected
        and "0.1000000000000000055511151231257827" in expected
    )
    assert listing_text(listing, listing_to_record(listing, source)) == expected
