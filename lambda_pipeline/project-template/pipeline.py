"""Payments: one source and two views, declared once.

lambda-pipeline computes each view in a batch layer and a speed layer from this one declaration, and serves
their merge. config.yaml points at PIPELINE (``pipeline: pipeline.py:PIPELINE``); README.md has the commands.
After changing a view, recompute it from the master dataset: ``lambda-pipeline refresh --config config.yaml
--view NAME``.
"""

from pyspark.sql import types as T

import lambda_pipeline as lp

# One JSON object per line, for instance (ts: epoch milliseconds, UTC):
# {"payment_id": "p-0001", "ts": 1709542920123, "merchant": "m-coffee", "amount_cents": 450,
#  "status": "ok", "card": {"brand": "visa", "country": "FR"}}
PAYMENTS = lp.EventSource(
    name="payments",
    schema=T.StructType(
        [
            T.StructField("payment_id", T.StringType()),
            T.StructField("ts", T.TimestampType()),
            T.StructField("merchant", T.StringType()),
            T.StructField("amount_cents", T.LongType()),
            T.StructField("status", T.StringType()),
            T.StructField(
                "card",
                T.StructType([T.StructField("brand", T.StringType()), T.StructField("country", T.StringType())]),
            ),
        ]
    ),
    id_column="payment_id",  # a payment_id seen again is quarantined as a duplicate
    time_column="ts",  # event time: what the windows group by
    required=("payment_id", "ts", "merchant", "amount_cents", "status", "card"),
    time_format="epoch_millis",  # or "epoch_seconds", or "iso8601" ("2024-03-04T09:02:00.123Z")
)

# Failed payments per merchant, card country and hour of event time. The country is a derived column (a SQL
# expression over the source's columns, here a nested field), usable as a key; 'where' keeps the failed ones.
FAILED_PAYMENTS = lp.View(
    name="failed_payments",
    source=PAYMENTS,
    columns={"country": "lower(card.country)"},
    where="status = 'failed'",
    keys=("merchant", "country"),
    window=lp.TumblingWindow("ts", "1 hour"),
    measures={"failures": lp.count(), "failed_cents": lp.sum_of("amount_cents")},
    description="Failed payments per merchant, card country and hour.",
)

# All-time totals per merchant: no window, one row per merchant.
MERCHANT_TOTALS = lp.View(
    name="merchant_totals",
    source=PAYMENTS,
    keys=("merchant",),
    window=None,
    measures={
        "payments": lp.count(),
        "total_cents": lp.sum_of("amount_cents"),
        "largest_cents": lp.max_of("amount_cents"),
        "last_payment": lp.max_of("ts"),
    },
    description="All-time payments per merchant: count, total, largest, latest.",
)

PIPELINE = lp.Pipeline(name="payments", source=PAYMENTS, views=(FAILED_PAYMENTS, MERCHANT_TOTALS))
