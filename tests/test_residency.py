"""Residency from the store's API: S3 GetBucketLocation and the GCS bucket's location, checked by `skyshift sync`."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from activities.residency import check_residency
from activities.stores import StoreSpec, open_store


@pytest.fixture
def eu_bucket(s3_endpoint: str) -> str:
    from activities.aws import aws_client

    name = f"eu-{uuid.uuid4().hex[:10]}"
    aws_client("s3", s3_endpoint, None).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-north-1"}
    )
    return name


def test_s3_region_is_read_from_get_bucket_location(eu_bucket, s3_bucket):
    assert open_store(StoreSpec(url=f"s3://{eu_bucket}/data")).region() == "eu-north-1"
    assert open_store(StoreSpec(url=f"s3://{s3_bucket}")).region() == "us-east-1"  # no LocationConstraint


def test_gcs_region_is_the_buckets_location(gcs_bucket):
    # gcp-storage-emulator keeps no location of its own: it answers GCS's default multi-region, US
    assert open_store(StoreSpec(url=f"gs://{gcs_bucket}")).region() == "us"


def test_a_local_directory_has_no_region(tmp_path):
    assert open_store(StoreSpec(url=f"file://{tmp_path}")).region() is None
    check = check_residency(StoreSpec(url=f"file://{tmp_path}"), ["eu-north-1"])
    assert not check.ok and "no region (not a cloud bucket)" in check.detail


def test_residency_compares_the_apis_answer_with_the_plan(eu_bucket):
    spec = StoreSpec(url=f"s3://{eu_bucket}")
    assert check_residency(spec, ["eu-north-1", "eu-west-1"], "eu-north-1").ok
    wrong = check_residency(spec, ["us-east-1"], "us-east-1")
    assert not wrong.ok and wrong.region == "eu-north-1"
    assert "the plan says us-east-1, its API says eu-north-1" in wrong.detail
    assert "it is in eu-north-1, not in us-east-1" in wrong.detail


def test_skyshift_sync_refuses_a_target_outside_the_allowed_regions_before_writing(eu_bucket, tmp_path, capsys):
    from starters.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(b"x" * 100)
    assert os.environ["AWS_ENDPOINT_URL_S3"]
    code = main(["sync", f"file://{source}", f"s3://{eu_bucket}/data", "--allowed-regions", "us-east-1,us-west-2",
                 "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["error"] == (f"residency: s3://{eu_bucket}/data: it is in eu-north-1, not in us-east-1, us-west-2; "
                            "nothing was copied")  # fmt: skip
    assert list(open_store(StoreSpec(url=f"s3://{eu_bucket}")).list()) == []
    code = main(["sync", f"file://{source}", f"s3://{eu_bucket}/data", "--target-region", "us-east-1", "--json"])
    assert (
        code == 2 and "the plan says us-east-1, its API says eu-north-1" in json.loads(capsys.readouterr().out)["error"]
    )


def test_skyshift_sync_prices_egress_from_the_book_for_the_stores_real_regions(eu_bucket, s3_bucket, gcs_bucket,
                                                                               tmp_path, capsys):  # fmt: skip
    """A dry run S3 (eu-north-1, from its API) → GCS: the book's aws/eu-north-1 internet price, named on stderr."""
    from activities.stores import open_store as store_of
    from starters.cli import main

    store_of(StoreSpec(url=f"s3://{eu_bucket}/data")).put_bytes("a.bin", b"x" * 1_000_000)
    book = tmp_path / "book.yaml"
    book.write_text("as_of: 2026-12-01T00:00:00Z\nvalid_until: 2099-01-01T00:00:00Z\negress:\n"
                    "  - {provider: aws, region: eu-north-1, destination: internet, tiers: [[0, 0.5]]}\n")  # fmt: skip
    code = main(["sync", f"s3://{eu_bucket}/data", f"gs://{gcs_bucket}/data", "--dry-run", "--prices", str(book),
                 "--json"])  # fmt: skip
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert code == 0
    assert out["egress_cost_usd"] == pytest.approx(out["bytes_transferred"] / 1e9 * 0.5)
    assert "egress $0.5/GB from aws/eu-north-1/egress to internet from 0 GB" in captured.err
    # no quote for where the source really is (us-east-1): refused by name before anything moves
    code = main(["sync", f"s3://{s3_bucket}", f"gs://{gcs_bucket}/x", "--dry-run", "--prices", str(book), "--json"])
    assert code == 2 and "no egress quote for aws/us-east-1" in json.loads(capsys.readouterr().out)["error"]
