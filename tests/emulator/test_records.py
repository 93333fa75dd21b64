"""Records: fixture field names and nesting, types, _select, _expand, joins, masking, determinism."""

from __future__ import annotations

import json

from devstack.emulator import Emulator, EmulatorConfig

from .helpers import FIXTURES, START, client_for

ALL_EXPANSIONS = "Photos,Videos,VirtualTours,OpenHouses,Documents,Rooms,Units,CustomFields"
REFERENCE_FIELDS = (
    "ListAgentId",
    "ListOfficeId",
    "ListCompanyId",
    "CoListAgentId",
    "CoListOfficeId",
    "CoListCompanyId",
    "BuyerAgentId",
    "BuyerOfficeId",
    "BuyerCompanyId",
    "CoBuyerAgentId",
    "CoBuyerOfficeId",
    "CoBuyerCompanyId",
)


def _fixture_results(name: str) -> list[dict]:
    return json.loads((FIXTURES / name).read_text())["D"]["Results"]


def _all(client, params=None) -> list[dict]:
    return client.get("/v1/listings", params={"_limit": 1000, **(params or {})}).json()["D"][
        "Results"
    ]


def test_fixture_field_names_and_nesting_appear_in_generated_records(shared_client):
    fixture_fields: set[str] = set()
    for name in (
        "with_photos.json",
        "with_videos.json",
        "with_vtour.json",
        "with_documents.json",
        "multiple.json",
        "with_supplement.json",
        "no_subresources.json",
    ):
        for record in _fixture_results(f"listings/{name}"):
            fixture_fields |= set(record.get("StandardFields", {}))
    records = _all(shared_client, {"_expand": ALL_EXPANSIONS})
    assert len(records) == 400
    for record in records:
        assert set(record) >= {"Id", "ResourceUri", "StandardFields", "CustomFields"}
        assert record["ResourceUri"] == f"/v1/listings/{record['Id']}"
        assert fixture_fields <= set(record["StandardFields"]), fixture_fields - set(
            record["StandardFields"]
        )
    expected_items = {
        "Photos": _fixture_results("listings/photos/index.json")[0],
        "Videos": _fixture_results("listings/videos_index.json")[0],
        "VirtualTours": _fixture_results("listings/virtual_tours_index.json")[0],
        "Documents": _fixture_results("listings/document_index.json")[0],
        "OpenHouses": _fixture_results("listings/open_houses.json")[0],
    }
    for name, fixture_item in expected_items.items():
        items = [i for r in records for i in r["StandardFields"][name]]
        assert items, name
        assert all(set(fixture_item) <= set(i) for i in items), name
        assert all(len(i["Id"]) == 26 and i["ResourceUri"].endswith(i["Id"]) for i in items)
    photo_counts = [len(r["StandardFields"]["Photos"]) for r in records]
    assert max(photo_counts) <= 40 and min(photo_counts) == 0 and max(photo_counts) > 20
    assert all(
        r["StandardFields"]["PhotosCount"] == len(r["StandardFields"]["Photos"]) for r in records
    )
    rooms = [i for r in records for i in r["StandardFields"]["Rooms"]]
    assert rooms and all(
        set(i) == {"Id", "ResourceUri", "Fields"} and "Room Name" in i["Fields"][0] for i in rooms
    )


def test_field_count_and_value_types(shared_client):
    records = _all(shared_client)
    fields = records[0]["StandardFields"]
    assert len(fields) >= 200
    assert all(set(r["StandardFields"]) == set(fields) for r in records)
    assert all(isinstance(r["StandardFields"]["ListPrice"], str) for r in records)
    assert any(r["StandardFields"]["Longitude"].startswith(" -") for r in records)
    assert any(r["StandardFields"]["Longitude"].startswith("-") for r in records)
    assert all(float(r["StandardFields"]["Latitude"]) > 0 for r in records)
    assert any(isinstance(r["StandardFields"]["BedsTotal"], int) for r in records)
    assert any(r["StandardFields"]["BathsThreeQuarter"] is None for r in records)
    stamps = [r["StandardFields"]["ModificationTimestamp"] for r in records]
    assert any(s.endswith("Z") for s in stamps) and any(
        s.endswith(("-05:00", "-06:00", "-07:00")) for s in stamps
    )
    assert len(json.dumps(records[0])) > 3000
    masked = [r for r in records if r["StandardFields"]["PrivateRemarks"] == "********"]
    assert 0 < len(masked) < len(records)  # masked=0.2 in the shared emulator
    assert all(r["StandardFields"]["ClosePrice"] == "********" for r in masked)


def test_select_keeps_id_and_resource_uri(shared_client):
    for select in (
        "ListingKey",
        "ListingKey,ModificationTimestamp",
        "City,ListPrice,ModificationTimestamp",
    ):
        records = _all(shared_client, {"_select": select})
        assert len(records) == 400
        for r in records:
            assert set(r) == {"Id", "ResourceUri", "StandardFields"}
            assert list(r["StandardFields"]) == select.split(",")
    full = {r["Id"]: r["StandardFields"] for r in _all(shared_client)}
    for r in _all(shared_client, {"_select": "ModificationTimestamp,City"}):
        assert r["StandardFields"] == {
            "ModificationTimestamp": full[r["Id"]]["ModificationTimestamp"],
            "City": full[r["Id"]]["City"],
        }
    bad = shared_client.get("/v1/listings", params={"_select": "NoSuchField"})
    assert bad.status_code == 400 and bad.json()["D"]["Success"] is False


def test_expand_nests_media_in_standard_fields_and_custom_fields_beside(shared, shared_client):
    r = shared_client.get(
        "/v1/listings",
        params={
            "_limit": 5,
            "_expand": "Photos,,CustomFields,CustomFieldsRaw,CustomFieldsExpandedRaw",
            "_select": "ListingKey",
        },
    ).json()["D"]["Results"]
    for record in r:
        assert set(record["StandardFields"]) == {"ListingKey", "Photos"}
        assert set(record) == {
            "Id",
            "ResourceUri",
            "StandardFields",
            "CustomFields",
            "CustomFieldsRaw",
            "CustomFieldsExpandedRaw",
        }
        main = record["CustomFields"][0]["Main"]
        assert isinstance(main, list) and all(isinstance(group, dict) for group in main)
    key = r[0]["Id"]
    photos = shared_client.get(f"/v1/listings/{key}/photos").json()["D"]["Results"]
    assert photos == r[0]["StandardFields"]["Photos"]
    if photos:
        one = shared_client.get(f"/v1/listings/{key}/photos/{photos[0]['Id']}").json()["D"][
            "Results"
        ]
        assert one == photos[:1]
    for sub in ("videos", "virtualtours", "openhouses", "documents", "rooms", "units"):
        response = shared_client.get(f"/v1/listings/{key}/{sub}")
        assert response.status_code == 200 and isinstance(response.json()["D"]["Results"], list)
    single = shared_client.get(f"/v1/listings/{key}", params={"_expand": "Rooms"}).json()["D"][
        "Results"
    ]
    assert len(single) == 1 and single[0]["Id"] == key and "Rooms" in single[0]["StandardFields"]


def test_not_found_answers(shared_client):
    missing = shared_client.get("/v1/listings/20991231000000000000000000")
    assert missing.status_code == 404
    assert missing.json()["D"]["Success"] is False and missing.json()["D"]["Code"] == 404
    assert shared_client.get("/v1/listings/20991231000000000000000000/photos").status_code == 404
    assert shared_client.get("/v1/accounts/20991231000000000000000000").status_code == 404
    assert shared_client.get("/v1/nothing").status_code == 404
    assert shared_client.get("/v2/listings").status_code == 404


def test_accounts_have_fixture_keys_and_listing_references_resolve(shared, shared_client):
    fixture_keys = set(_fixture_results("accounts/all.json")[0])
    accounts = shared_client.get("/v1/accounts", params={"_limit": 1000}).json()["D"]["Results"]
    ids = [a["Id"] for a in accounts]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert all(fixture_keys | {"UserType", "ModificationTimestamp"} <= set(a) for a in accounts)
    by_id = {a["Id"]: a for a in accounts}
    assert {a["UserType"] for a in accounts} == {"Member", "Office", "Company"}
    referenced = 0
    for record in _all(shared_client):
        sf = record["StandardFields"]
        for field in REFERENCE_FIELDS:
            if sf[field] is not None:
                referenced += 1
                expected_type = {"Agent": "Member", "Office": "Office", "Company": "Company"}[
                    next(t for t in ("Agent", "Office", "Company") if t in field)
                ]
                assert by_id[sf[field]]["UserType"] == expected_type, field
        agent = by_id[sf["ListAgentId"]]
        assert sf["ListAgentName"] == agent["Name"] and agent["OfficeId"] == sf["ListOfficeId"]
        assert by_id[sf["ListOfficeId"]]["CompanyId"] == sf["ListCompanyId"]
    assert referenced > 1000
    one = shared_client.get(f"/v1/accounts/{ids[0]}").json()["D"]["Results"]
    assert one == [by_id[ids[0]]]


def test_same_seed_same_data_other_seed_other_data():
    config = EmulatorConfig(listings=120, accounts=30, seed=42, start_time=START)
    bodies = []
    for cfg in (
        config,
        config,
        EmulatorConfig(listings=120, accounts=30, seed=43, start_time=START),
    ):
        with Emulator(cfg) as emu, client_for(emu) as client:
            bodies.append(
                (
                    client.get(
                        "/v1/listings", params={"_limit": 1000, "_expand": ALL_EXPANSIONS}
                    ).content,
                    client.get("/v1/accounts", params={"_limit": 1000}).content,
                )
            )
    assert bodies[0] == bodies[1]
    assert bodies[0][0] != bodies[2][0] and bodies[0][1] != bodies[2][1]
