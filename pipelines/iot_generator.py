"""Readings for the shipped IoT example: devices at sites, temperatures that drift, now and then one overheating.

Each device belongs to a site (bigger sites hold more devices) and runs a firmware version (most the newest).
Its temperature wanders around its site's ambient and returns to it; now and then a device overheats, climbing
within a few readings to 84..96 °C, staying there for a while, then cooling back (a few devices are prone to it).
Humidity wanders too, batteries drain and are replaced. Some devices report more often than others; a share of
readings arrives late, as from a device that buffered them while offline. The bad company (repeated and
malformed lines, hostile messages) is :class:`~.synthetic.SyntheticGenerator`'s.

>>> generator = IotGenerator(READINGS, seed=3)  # doctest: +SKIP
>>> lines, stats = generator.lines(1_000)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.views import EventSource
from lambda_pipeline.pipelines.synthetic import SyntheticGenerator

__all__ = ["IOT_SCHEMA", "OVERHEAT_C", "IotGenerator"]

IOT_SCHEMA = (
    "struct<reading_id:string,ts:timestamp,device:struct<id:string,site:string,firmware:string>,"
    "metrics:struct<temperature_c:double,humidity_pct:double,battery_v:double>,status:string>"
)
"""The readings this generator writes, as ``StructType.simpleString()`` gives a source's schema."""
OVERHEAT_C = 80.0
"""Above this a reading's status is ``overheating`` (the IoT example's ``device_overheating`` view's filter)."""
LOW_BATTERY_V = 3.4
_FIRMWARE = (("2.1.0", 0.6), ("2.0.3", 0.3), ("1.9.7", 0.1))
_PRONE_FACTOR = 20.0
"""How much more often an overheating-prone device starts an episode."""


@dataclass
class _Device:
    """One sensor and its drifting state."""

    id: str
    site: str
    firmware: str
    ambient_c: float
    temperature_c: float
    base_humidity: float
    humidity_pct: float
    battery_v: float
    prone: bool
    overheat_left: int = 0
    """Readings left in the current overheating episode (0: none)."""
    overheat_peak_c: float = 0.0

    def step(self, rng: random.Random, overheat_probability: float) -> None:
        """The device's next reading: drift toward where it tends, or toward its peak while overheating."""
        if self.overheat_left == 0 and rng.random() < overheat_probability * (_PRONE_FACTOR if self.prone else 1):
            self.overheat_left, self.overheat_peak_c = rng.randint(8, 30), rng.uniform(84.0, 96.0)
        if self.overheat_left:
            self.overheat_left -= 1
            self.temperature_c += 0.35 * (self.overheat_peak_c - self.temperature_c) + rng.gauss(0.0, 0.6)
        else:
            self.temperature_c += 0.15 * (self.ambient_c - self.temperature_c) + rng.gauss(0.0, 0.35)
        self.humidity_pct += 0.1 * (self.base_humidity - self.humidity_pct) + rng.gauss(0.0, 0.7)
        self.humidity_pct = min(95.0, max(5.0, self.humidity_pct))
        self.battery_v -= rng.uniform(0.0, 0.0008)
        if self.battery_v < 3.25:  # replaced
            self.battery_v = rng.uniform(4.05, 4.2)

    @property
    def status(self) -> str:
        """As the reading says, from the temperature it carries (rounded to 0.1 °C)."""
        if round(self.temperature_c, 1) > OVERHEAT_C:
            return "overheating"
        return "low_battery" if self.battery_v < LOW_BATTERY_V else "ok"


class IotGenerator(SyntheticGenerator):
    """Readings for a source with the IoT example's schema (:data:`IOT_SCHEMA`); deterministic for a seed.

    ``overheat_probability`` is the chance that a reading starts an overheating episode on an ordinary device
    (twenty times that on the few prone ones): the default gives about one reading in a hundred above 80 °C.
    """

    def __init__(
        self,
        source: EventSource,
        seed: int = 7,
        *,
        devices: int = 48,
        sites: int = 6,
        overheat_probability: float = 0.0005,
        late_fraction: float = 0.05,
        duplicate_fraction: float = 0.03,
        malformed_fraction: float = 0.02,
        time_format: str | None = None,
    ) -> None:
        if not self.fits(source):
            raise LambdaError(
                f"source '{source.name}': the IoT generator writes {IOT_SCHEMA} with id_column reading_id and "
                f"time_column ts; this source has {source.schema.simpleString()}"
            )
        if devices < 1 or sites < 1:
            raise ValueError(f"devices and sites must be at least 1, got {devices} and {sites}")
        super().__init__(
            source,
            seed,
            late_fraction=late_fraction,
            duplicate_fraction=duplicate_fraction,
            malformed_fraction=malformed_fraction,
            time_format=time_format,
        )
        self.overheat_probability = overheat_probability
        rng = self.rng
        site_names = [f"plant-{i}" for i in range(1, sites + 1)]
        ambient = {site: rng.uniform(17.0, 27.0) for site in site_names}
        humidity = {site: rng.uniform(30.0, 60.0) for site in site_names}
        site_weights = [1.0 / rank**0.7 for rank in range(1, sites + 1)]  # bigger plants hold more devices
        prone = set(rng.sample(range(devices), max(1, devices // 16)))
        self.devices: list[_Device] = []
        for i in range(devices):
            site = rng.choices(site_names, weights=site_weights)[0]
            firmware = rng.choices([v for v, _ in _FIRMWARE], weights=[w for _, w in _FIRMWARE])[0]
            own = ambient[site] + rng.gauss(0.0, 1.5)
            wet = humidity[site] + rng.gauss(0.0, 4.0)
            battery = rng.uniform(3.5, 4.2)
            self.devices.append(_Device(f"dev-{i + 1:04d}", site, firmware, own, own, wet, wet, battery, i in prone))
        order = list(range(devices))
        rng.shuffle(order)  # the chatty devices anywhere in the list, not always the first ones
        rank = {index: r for r, index in enumerate(order, start=1)}
        self._chatty = list(itertools.accumulate(1.0 / rank[i] ** 0.5 for i in range(devices)))

    @staticmethod
    def fits(source: EventSource) -> bool:
        """Whether ``source`` reads what this generator writes."""
        return (
            source.schema.simpleString() == IOT_SCHEMA
            and source.id_column == "reading_id"
            and source.time_column == "ts"
        )

    def _record(self, now: datetime) -> tuple[str, dict[str, Any], bool]:
        device = self.rng.choices(self.devices, cum_weights=self._chatty)[0]
        device.step(self.rng, self.overheat_probability)
        reading_id = self._next_id()
        event_time, late = self._event_time(now)
        record = {
            "reading_id": reading_id,
            "ts": event_time,
            "device": {"id": device.id, "site": device.site, "firmware": device.firmware},
            "metrics": {
                "temperature_c": round(device.temperature_c, 1),
                "humidity_pct": round(device.humidity_pct, 1),
                "battery_v": round(device.battery_v, 2),
            },
            "status": device.status,
        }
        return str(reading_id), record, late
