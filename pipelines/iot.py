"""The second shipped example: IoT sensor monitoring, declared with the public API as a user would.

Readings arrive with nested fields and epoch-millisecond times::

    {"reading_id": "r-000001", "ts": 1796630400123,
     "device": {"id": "dev-0042", "site": "plant-3", "firmware": "2.1.0"},
     "metrics": {"temperature_c": 21.7, "humidity_pct": 40.2, "battery_v": 3.61}, "status": "ok"}

Three views: per site and 5 minutes, the temperature's count, mean, maximum and 95th percentile; per device and
hour, the readings over 80 °C (a filter); and per device, all-time totals (no window).
"""

from __future__ import annotations

from pyspark.sql import types as T

import lambda_pipeline as lp

__all__ = ["DEVICE_OVERHEATING", "DEVICE_TOTALS", "IOT", "OVERHEAT_CELSIUS", "READINGS", "SITE_TEMPERATURE"]

OVERHEAT_CELSIUS = 80.0

READINGS = lp.EventSource(
    name="readings",
    schema=T.StructType(
        [
            T.StructField("reading_id", T.StringType()),
            T.StructField("ts", T.TimestampType()),
            T.StructField(
                "device",
                T.StructType(
                    [
                        T.StructField("id", T.StringType()),
                        T.StructField("site", T.StringType()),
                        T.StructField("firmware", T.StringType()),
                    ]
                ),
            ),
            T.StructField(
                "metrics",
                T.StructType(
                    [
                        T.StructField("temperature_c", T.DoubleType()),
                        T.StructField("humidity_pct", T.DoubleType()),
                        T.StructField("battery_v", T.DoubleType()),
                    ]
                ),
            ),
            T.StructField("status", T.StringType()),
        ]
    ),
    id_column="reading_id",
    time_column="ts",
    required=("reading_id", "ts", "device"),
    time_format="epoch_millis",
)

SITE_TEMPERATURE = lp.View(
    "site_temperature",
    READINGS,
    keys=("site",),
    columns={"site": "device.site", "temperature": "metrics.temperature_c"},
    window=lp.TumblingWindow("ts", "5 minutes"),
    measures={
        "readings": lp.count(),
        "avg_temperature": lp.avg_of("temperature"),
        "max_temperature": lp.max_of("temperature"),
        "p95_temperature": lp.approx_quantile("temperature", 0.95),
    },
    description="Per site and 5-minute window: readings, mean, maximum and 95th percentile of the temperature.",
)

DEVICE_OVERHEATING = lp.View(
    "device_overheating",
    READINGS,
    keys=("device_id",),
    columns={"device_id": "device.id", "temperature": "metrics.temperature_c"},
    where=f"temperature > {OVERHEAT_CELSIUS}",
    window=lp.TumblingWindow("ts", "1 hour"),
    measures={"readings": lp.count(), "max_temperature": lp.max_of("temperature")},
    description=f"Per device and hour: readings over {OVERHEAT_CELSIUS:g} °C and the hottest of them.",
)

DEVICE_TOTALS = lp.View(
    "device_totals",
    READINGS,
    keys=("device_id",),
    columns={"device_id": "device.id"},
    window=None,
    measures={"readings": lp.count(), "first_seen": lp.min_of("ts"), "last_seen": lp.max_of("ts")},
    description="Per device, all time: readings, first and last reading time.",
)

IOT = lp.Pipeline("iot", READINGS, [SITE_TEMPERATURE, DEVICE_OVERHEATING, DEVICE_TOTALS])
