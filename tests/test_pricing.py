"""The price book: operator files, fetchers read on recorded API answers, refusals and staleness."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.pricing import PriceBook, PriceError, Quote, load_price_file
from activities.pricing.fetchers import FETCHERS
from activities.pricing.fetchers.aws import parse_offer_file, parse_spot_history
from activities.pricing.fetchers.gcp import GcpFetcher, parse_skus
from activities.pricing.fetchers.lambda_cloud import LambdaFetcher, parse_instance_types

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "prices"
READ_AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
CSV_HEAD = "provider,region,kind,usd,as_of,valid_until\n"


def recorded(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def h100(provider: str, region: str, usd: float, market: str = "on_demand", count: int = 8) -> Quote:
    return Quote(provider=provider, region=region, kind="compute", instance_type=f"{provider}-h100", gpu="H100-80GB",
                 gpu_count=count, gpu_memory_gb=80, market=market, usd=usd, source=f"test:{provider}",
                 source_kind="live", as_of=READ_AT)  # fmt: skip


# -- operator files -----------------------------------------------------------------------------


def test_example_rate_card_loads_every_quote_with_its_source_and_date():
    book = load_price_file(ROOT / "examples" / "prices" / "book.yaml")
    assert not book.refused
    p5 = [q for q in book.compute("aws", "us-east-1") if q.instance_type == "p5.48xlarge"]
    assert {(q.market, q.usd) for q in p5} == {("on_demand", 55.04), ("spot", 24.88), ("reserved", 36.33)}
    assert all(q.source.startswith("file:example rate card 2026-12") and q.as_of.year == 2026 for q in book.quotes)
    assert book.egress("aws", "us-east-1", "internet", month_gb=20_000).usd == 0.085  # the tier the volume is in
    assert book.egress("aws", "us-east-1", "internet").usd == 0.09
    assert book.storage("gcp", "us-central1").usd == 0.02
    # the operator vouches until 2027-01-01: fresh before, stale after, and the provenance says so
    assert not book.stale(datetime(2026, 12, 20, tzinfo=UTC))
    later = datetime(2027, 1, 2, tzinfo=UTC)
    assert len(book.stale(later)) == len(book.quotes)
    assert "STALE: valid until 2027-01-01" in book.quotes[0].provenance(later)


def test_csv_rate_card_loads(tmp_path):
    book = load_price_file(ROOT / "examples" / "prices" / "quotes.csv")
    assert {q.kind for q in book.quotes} == {"compute", "egress", "storage"}
    assert book.quotes[0].source == "file:quotes.csv (row 2)"


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("no-date.yaml", "compute: []\n", "as_of: missing"),
        ("bad-price.yaml", "as_of: 2026-12-01T00:00:00Z\nvalid_until: 2027-01-01T00:00:00Z\ncompute:\n"
         "  - {provider: aws, region: r, instance_type: x, gpu_count: 1, on_demand: cheap}\n", "compute[0].usd"),
        ("no-price.yaml", "as_of: 2026-12-01T00:00:00Z\nvalid_until: 2027-01-01T00:00:00Z\ncompute:\n"
         "  - {provider: aws, region: r, instance_type: x}\n", "compute[0]: no price"),
        ("typo.yaml", "as_of: 2026-12-01T00:00:00Z\nvalid_until: 2027-01-01T00:00:00Z\ncomptue: []\n", "comptue"),
        ("bad.csv", CSV_HEAD + "aws,r,storage,abc,2026-12-01,2027-01-01\n", "row 2.usd"),
        ("cols.csv", "provider,region,usd,as_of,valid_until\n", "missing column(s) kind"),
        ("date.csv", CSV_HEAD + "aws,r,storage,1,yesterday,2027-01-01\n", "row 2.as_of"),
        ("prices.txt", "x", "unknown price file type"),
    ],
)  # fmt: skip
def test_a_bad_price_file_is_refused_naming_the_file_and_field(tmp_path, name, text, named):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PriceError) as caught:
        load_price_file(path)
    assert str(path) in str(caught.value) and named in str(caught.value)


# -- refusals -----------------------------------------------------------------------------------


def test_obviously_wrong_prices_are_refused_by_name_and_the_rest_kept():
    quotes = [
        h100("aws", "us-east-1", 55.04),
        h100("gcp", "us-central1", 88.25),
        h100("nebius", "eu-north1", 23.6),
        h100("lambda", "us-east-3", 0.0),  # skypilot#3615: an H100 at $0
        h100("aws", "us-east-1", 60.0, market="spot"),  # skypilot#4914: spot above on-demand
        h100("oracle", "us-ashburn-1", 2_000.0),  # 250 $/GPU-h: > 10x the median
        h100("tiny", "us-1", 0.08),  # a B200-at-$0.01 kind of typo (skypilot#9156): < 1/20 of the median
    ]
    book = PriceBook.build(quotes)
    refused = {r.quote: r.reason for r in book.refused}
    assert set(refused) == {"lambda/us-east-3/lambda-h100 on_demand", "aws/us-east-1/aws-h100 spot",
                            "oracle/us-ashburn-1/oracle-h100 on_demand", "tiny/us-1/tiny-h100 on_demand"}  # fmt: skip
    assert "not above zero" in refused["lambda/us-east-3/lambda-h100 on_demand"]
    assert "above on-demand $55.04/h" in refused["aws/us-east-1/aws-h100 spot"]
    assert "more than 10x the median" in refused["oracle/us-ashburn-1/oracle-h100 on_demand"]
    assert {q.provider for q in book.quotes} == {"aws", "gcp", "nebius"}


def test_a_free_egress_tier_is_a_price_not_a_mistake():
    free = Quote(provider="gcp", region="us-central1", kind="egress", destination="internet", usd=0.0,
                 source="t", source_kind="scraped", as_of=READ_AT)  # fmt: skip
    assert PriceBook.build([free]).quotes == [free]


def test_staleness_limits_per_kind_of_source():
    live = h100("aws", "us-east-1", 55.04)
    assert not live.stale(READ_AT + timedelta(minutes=14))
    assert live.stale(READ_AT + timedelta(minutes=16))
    assert "STALE: live ≤ 0:15:00" in live.provenance(READ_AT + timedelta(minutes=16))
    scraped = live.model_copy(update={"source_kind": "scraped"})
    assert not scraped.stale(READ_AT + timedelta(hours=23)) and scraped.stale(READ_AT + timedelta(hours=25))


# -- fetchers on recorded answers ---------------------------------------------------------------


def test_aws_offer_file_gives_linux_on_demand_and_no_upfront_reserved():
    quotes = parse_offer_file(recorded("aws_offer_ec2_us-east-1.json"), READ_AT)
    found = {(q.instance_type, q.market, q.term, q.usd) for q in quotes}
    assert found == {("p5.48xlarge", "on_demand", None, 55.04), ("g6.xlarge", "on_demand", None, 0.8048),
                     ("p5.48xlarge", "reserved", "1yr standard No Upfront", 36.33)}  # fmt: skip
    p5 = next(q for q in quotes if q.instance_type == "p5.48xlarge")
    assert (p5.gpu, p5.gpu_count, p5.gpu_memory_gb, p5.source_kind) == ("H100-80GB", 8, 80.0, "scraped")
    assert p5.source.startswith("aws-price-list:AmazonEC2@20261201000000 sku P5SKU0000000001")


def test_aws_get_products_reads_the_same_quotes_as_the_offer_file():
    from activities.pricing.fetchers.aws import parse_get_products

    answer = recorded("aws_get_products_p5_g6.json")
    assert all(isinstance(text, str) for text in answer["PriceList"])  # JSON documents as strings, as AWS sends them
    queried = parse_get_products(answer["PriceList"], READ_AT)
    bulk = parse_offer_file(recorded("aws_offer_ec2_us-east-1.json"), READ_AT)
    assert {(q.instance_type, q.market, q.term, q.usd, q.gpu) for q in queried} == {
        (q.instance_type, q.market, q.term, q.usd, q.gpu) for q in bulk}  # fmt: skip


def test_aws_spot_history_takes_the_newest_price_of_the_cheapest_zone_and_is_live():
    offer = parse_offer_file(recorded("aws_offer_ec2_us-east-1.json"), READ_AT)
    gpu_of = {q.instance_type: (q.gpu, q.gpu_count, q.gpu_memory_gb) for q in offer}
    spot = parse_spot_history(recorded("aws_spot_price_history.json"), "us-east-1", gpu_of, READ_AT)
    assert {(q.instance_type, q.usd) for q in spot} == {("p5.48xlarge", 23.41), ("g6.xlarge", 0.3512)}
    p5 = next(q for q in spot if q.instance_type == "p5.48xlarge")
    assert p5.source == "aws:ec2.DescribeSpotPriceHistory us-east-1b" and p5.gpu == "H100-80GB"
    assert p5.as_of == datetime(2026, 12, 3, 9, 41, 3, tzinfo=UTC)  # the price's own timestamp
    assert p5.stale(READ_AT)  # 19 min before it was read: older than a live quote may be
    book = PriceBook.build(offer + spot)
    assert not book.refused  # spot below on-demand, same GPU within 10x


def test_gcp_catalog_skus_give_per_gpu_prices_egress_tiers_and_storage_in_gb():
    quotes = parse_skus(recorded("gcp_catalog_compute_skus.json"), READ_AT, {"us-central1"})
    gpu = {(q.market, q.term): q.usd for q in quotes if q.kind == "compute"}
    assert gpu == {("on_demand", None): pytest.approx(9.796103), ("spot", None): pytest.approx(2.253),
                   ("reserved", "1Yr"): pytest.approx(6.857)}  # fmt: skip
    egress = sorted((q.tier_start_gb, q.usd) for q in quotes if q.kind == "egress")
    gib = (1 << 30) / 1e9
    assert egress[1] == (pytest.approx(1 * gib), pytest.approx(0.12 / gib))
    assert len(egress) == 4 and egress[0][1] == 0.0
    assert [q.usd for q in quotes if q.kind == "storage"] == [pytest.approx(0.02 / gib)]
    assert all(q.region == "us-central1" for q in quotes)  # us-east4 was not asked for


def test_lambda_instance_types_give_one_quote_per_region_with_capacity():
    quotes = parse_instance_types(recorded("lambda_instance_types.json"), READ_AT)
    assert {(q.instance_type, q.region, q.usd) for q in quotes} == {
        ("gpu_8x_h100_sxm5", "us-east-3", 23.92), ("gpu_8x_h100_sxm5", "us-south-2", 23.92),
        ("gpu_1x_h100_pcie", "us-west-1", 2.49)}  # fmt: skip
    assert all(q.gpu == "H100-80GB" and q.gpu_memory_gb == 80 and q.source_kind == "live" for q in quotes)


class _Recorded(BaseHTTPRequestHandler):
    """Answers each path with a recorded API answer; pages by pageToken like the Catalog API."""

    pages: dict[str, list[dict]] = {}
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        path, _, query = self.path.partition("?")
        pages = self.pages.get(path)
        if pages is None:
            self.send_response(404)
            self.end_headers()
            return
        index = int(query.split("pageToken=")[1].split("&")[0]) if "pageToken=" in query else 0
        body = json.dumps({**pages[index], "nextPageToken": str(index + 1) if index + 1 < len(pages) else ""}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def recorded_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorded
    server.shutdown()
    server.server_close()


def test_fetchers_read_the_api_over_http_following_pages(recorded_api, monkeypatch):
    base, handler = recorded_api
    skus = recorded("gcp_catalog_compute_skus.json")["skus"]
    handler.pages = {
        "/v1/instance-types": [recorded("lambda_instance_types.json")],
        "/v1/services/6F81-5844-456A/skus": [{"skus": skus[:2]}, {"skus": skus[2:4]}],
        "/v1/services/95FF-2EF5-5EA1/skus": [{"skus": skus[4:]}],
    }
    monkeypatch.setenv("LAMBDA_API_KEY", "k")
    assert set(FETCHERS) == {"aws", "gcp", "lambda"}
    lam = LambdaFetcher(base_url=f"{base}/v1").fetch(READ_AT)
    gcp = GcpFetcher(["us-central1"], base_url=f"{base}/v1").fetch(READ_AT)
    assert len(lam) == 3
    assert {q.kind for q in gcp} == {"compute", "egress", "storage"}
    assert any("pageToken=1" in path for path in handler.seen)  # the second page was asked for
    book = PriceBook.build(lam + gcp + load_price_file(ROOT / "examples" / "prices" / "book.yaml").quotes)
    assert not book.refused


def test_skyshift_place_reads_a_live_price_api_beside_the_operators_file(recorded_api, monkeypatch, capsys):
    from starters.cli import main

    base, handler = recorded_api
    handler.pages = {"/v1/instance-types": [recorded("lambda_instance_types.json")]}
    monkeypatch.setenv("SKYSHIFT_LAMBDA_API_URL", f"{base}/v1")
    job = str(ROOT / "examples" / "prices" / "job.yaml")
    code = main(["place", job, "--prices", str(ROOT / "examples" / "prices" / "book.yaml"), "--fetch", "lambda",
                 "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    live = [r for r in out["ranked"] if r["offer"]["price_source"].startswith("lambda:instance-types")]
    assert {r["offer"]["region"] for r in live} == {"us-east-3", "us-south-2", "us-west-1"}
    assert not any(r["offer"]["stale"] for r in live)  # read just now: a live quote within its 15 minutes
    assert main(["place", job, "--fetch", "nimbus", "--json"]) == 2
    assert "unknown price source 'nimbus'" in json.loads(capsys.readouterr().out)["error"]
    monkeypatch.setenv("SKYSHIFT_LAMBDA_API_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    assert main(["place", job, "--fetch", "lambda", "--json"]) == 1
    assert "--fetch lambda: cannot read prices" in json.loads(capsys.readouterr().out)["error"]


def test_egress_is_priced_by_tier_for_the_delta_only():
    from activities.pricing.egress import project_egress

    book = load_price_file(ROOT / "examples" / "prices" / "book.yaml")  # aws us-east-1 internet: 0.09 / 0.085 / 0.07
    # the target already holds 95 % of a 40 TB dataset: 2 TB cross, starting at 9 TB this month
    projection = project_egress(book, "aws", "us-east-1", "internet", bytes_to_send=2_000 * 10**9,
                                dataset_bytes=40_000 * 10**9, month_to_date_gb=9_000)  # fmt: skip
    assert projection.usd == pytest.approx((10_240 - 9_000) * 0.09 + (11_000 - 10_240) * 0.085)
    assert len(projection.tiers) == 2 and "2,000,000,000,000 of 40,000,000,000,000 bytes" in projection.source
    with pytest.raises(PriceError, match="no egress quote for aws/us-east-1 → mars"):
        project_egress(book, "aws", "us-east-1", "mars", 1, 1)
