#!/usr/bin/env python3
"""Writes a deterministic, Shopify-like orders CSV for the benchmark.

Usage: make_orders_csv.py OUT.csv [ROWS]

The same seed always gives the same bytes, so runs on different machines compare the same data.
Text lengths are tuned so that `pma-cache import` turns the default 102,052 rows into about 80 MB
of JSON. Notes hold commas, quotes and newlines so the CSV parser is exercised as in real exports.
"""

import csv
import random
import sys
from datetime import datetime, timedelta

ROWS_DEFAULT = 102_052
SEED = 20_240_611

COLUMNS = [
    "id", "name", "email", "created_at", "updated_at", "processed_at",
    "financial_status", "fulfillment_status", "currency",
    "subtotal_price", "total_tax", "total_discounts", "total_price",
    "first_name", "last_name",
    "billing_address1", "shipping_address1",
    "city", "zip", "province", "country", "phone",
    "note", "tags", "lineitem_name", "lineitem_quantity", "lineitem_sku", "vendor",
    "payment_method", "cancelled_at",
]

FIRST = ["Emma", "Liam", "Olivia", "Noah", "Ava", "Lucas", "Mia", "Léa", "Jonas", "Sofía",
         "Amelia", "Mateo", "Chloé", "Elias", "Hannah", "Oscar", "Zoë", "Hugo", "Ines", "Yuki"]
LAST = ["Smith", "Müller", "García", "Martin", "Rossi", "Johnson", "Dubois", "Nowak", "O'Brien",
        "Andersson", "Kowalski", "Brown", "Tanaka", "Novák", "Fischer", "Silva", "Lefèvre", "Jensen"]
STREETS = ["Main Street", "Oak Avenue", "Rue de la Paix", "Hauptstraße", "Elm Road", "Calle Mayor",
           "Maple Drive", "King's Road", "Via Roma", "Station Lane", "Harbour View", "Birch Court"]
CITIES = [("Montréal", "QC", "Canada", "H2X"), ("Toronto", "ON", "Canada", "M5V"),
          ("Austin", "TX", "United States", "787"), ("Portland", "OR", "United States", "972"),
          ("Berlin", "BE", "Germany", "101"), ("Lyon", "ARA", "France", "690"),
          ("Madrid", "MD", "Spain", "280"), ("Milano", "MI", "Italy", "201"),
          ("Brooklyn", "NY", "United States", "112"), ("Vancouver", "BC", "Canada", "V6B")]
FINANCIAL = ["paid"] * 14 + ["pending", "refunded", "partially_refunded", "authorized", "voided"]
FULFILLMENT = ["fulfilled"] * 8 + ["", "", "", "partial", "restocked"]
CURRENCIES = ["USD", "USD", "USD", "CAD", "EUR", "EUR", "GBP"]
PRODUCTS = [("Organic Cotton T-Shirt", "Northwind Apparel", "TSH"),
            ("Merino Wool Beanie", "Alpine Threads", "BEA"),
            ("Stainless Steel Water Bottle 750ml", "HydroPeak", "BOT"),
            ("Recycled Canvas Tote Bag", "Greenline Goods", "TOT"),
            ("Ceramic Pour-Over Coffee Set", "Morning Ritual Co.", "CER"),
            ("Wireless Charging Pad", "Voltkin", "CHG"),
            ("Hand-Poured Soy Candle \"Cedar & Sage\"", "Wick & Flame", "CND"),
            ("Bamboo Cutting Board, Large", "Kitchen Atelier", "BMB")]
SIZES = ["XS", "S", "M", "L", "XL"]
COLOURS = ["Black", "Navy", "Forest Green", "Sand", "Heather Grey", "Rust"]
PAYMENTS = ["Shopify Payments", "Shopify Payments", "PayPal Express Checkout", "Gift Card",
            "Manual", "Apple Pay", "Klarna"]
TAGS = ["wholesale", "vip", "repeat-customer", "newsletter", "black-friday", "gift", "priority",
        "subscription", "influencer", "b2b", "local-pickup", "backorder"]
NOTE_PARTS = ["Please leave the parcel at the back door", "Gift, no invoice in the box please",
              "Customer asked: \"can you ship before Friday?\"", "Call on arrival",
              "Deliver to reception, 2nd floor", "Fragile, handle with care",
              "Replacement for order returned last month", "Wrap separately, thanks!"]

START = datetime(2021, 1, 1, 8, 0, 0)


def iso(t):
    return t.strftime("%Y-%m-%d %H:%M:%S")


def money(rng, low, high):
    return f"{rng.uniform(low, high):.2f}"


def note(rng):
    roll = rng.random()
    if roll < 0.75:
        return ""
    parts = rng.sample(NOTE_PARTS, rng.randint(1, 3))
    sep = "\n" if roll > 0.9 else ", "
    return sep.join(parts)


def row(rng, i):
    created = START + timedelta(minutes=17 * i + rng.randint(0, 16), seconds=rng.randint(0, 59))
    updated = created + timedelta(hours=rng.randint(0, 72), minutes=rng.randint(0, 59))
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city, province, country, zip_prefix = rng.choice(CITIES)
    product, vendor, sku_prefix = rng.choice(PRODUCTS)
    size, colour = rng.choice(SIZES), rng.choice(COLOURS)
    qty = rng.choice([1, 1, 1, 1, 2, 2, 3, 5])
    subtotal = rng.uniform(9, 480) * qty
    tax, discount, shipping = subtotal * 0.13, rng.choice([0, 0, 0, subtotal * 0.1]), rng.choice([0, 4.99, 9.99, 14.5])
    financial = rng.choice(FINANCIAL)
    cancelled = iso(updated + timedelta(hours=2)) if financial == "voided" or rng.random() < 0.02 else ""
    return [
        str(4_500_000_000_000 + i * 7919),
        f"#{1001 + i}",
        f"{first.lower()}.{last.lower().replace(chr(39), '')}{rng.randint(1, 9999)}@example.com",
        iso(created), iso(updated), iso(created + timedelta(seconds=rng.randint(1, 90))),
        financial, rng.choice(FULFILLMENT), rng.choice(CURRENCIES),
        f"{subtotal:.2f}", f"{tax:.2f}", f"{discount:.2f}",
        f"{subtotal + tax - discount + shipping:.2f}",
        first, last,
        f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
        f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
        city, f"{zip_prefix} {rng.randint(0, 999):03d}", province, country,
        f"+1 {rng.randint(200, 999)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        note(rng),
        ", ".join(sorted(rng.sample(TAGS, rng.randint(0, 4)))),
        f"{product} - {colour} / {size}", str(qty),
        f"{sku_prefix}-{colour[:3].upper()}-{size}-{rng.randint(100, 999)}",
        vendor, rng.choice(PAYMENTS), cancelled,
    ]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[2])
    out, rows = sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else ROWS_DEFAULT
    rng = random.Random(SEED)
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(COLUMNS)
        for i in range(rows):
            w.writerow(row(rng, i))


if __name__ == "__main__":
    main()
